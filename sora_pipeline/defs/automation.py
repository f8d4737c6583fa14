"""The daily job and its schedule, and a sensor that requests days whose catalog rows are new or changed."""


import json
from datetime import timedelta

import dagster as dg

from sora_pipeline.catalog import catalog_fingerprints, catalog_signature
from sora_pipeline.defs.partitions import daily_partitions
from sora_pipeline.defs.warehouse_resource import WarehouseResource

daily_generation_job = dg.define_asset_job(
    "daily_generation_job",
    selection=dg.AssetSelection.assets("generation_daily_stats").upstream().required_multi_asset_neighbors()
    - dg.AssetSelection.assets("catalog"),
    partitions_def=daily_partitions,
    # the steps wait on I/O (fal, the ledger, Parquet): one process per run, no process start-up per step
    executor_def=dg.in_process_executor,
    description="Catalog slice → generations → video_metadata → daily stats for one day.",
)

summary_job = dg.define_asset_job(
    "generation_summary_job", selection=dg.AssetSelection.assets("generation_summary"),
    executor_def=dg.in_process_executor, description="The rollup over every materialized day.")

billing_job = dg.define_asset_job(
    "fal_billing_job", selection=dg.AssetSelection.assets("fal_billing", "generation_daily_stats"),
    partitions_def=daily_partitions, executor_def=dg.in_process_executor,
    description="Reconcile a day with what fal billed (billing data can lag), then refresh its daily stats.")


@dg.schedule(job=billing_job, cron_schedule="45 0 * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Each day, re-reads fal's billing for the two previous days, so late billing records "
                         "reach fal_billing without a person.")
def billing_schedule(context: dg.ScheduleEvaluationContext):
    today = context.scheduled_execution_time.date()
    for back in (1, 2):
        day = (today - timedelta(days=back)).isoformat()
        if daily_partitions.has_partition_key(day):
            yield dg.RunRequest(run_key=f"fal_billing:{day}:{today.isoformat()}", partition_key=day)


# STOPPED by default: turning it on spends money when FAL_KEY is set. Start it in the UI (Automation) or with
# `dagster schedule start daily_generation_schedule`.
daily_generation_schedule = dg.build_schedule_from_partitioned_job(
    daily_generation_job, hour_of_day=0, minute_of_hour=15, default_status=dg.DefaultScheduleStatus.STOPPED)


@dg.sensor(job=daily_generation_job, minimum_interval_seconds=300,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Requests a run for every catalog day whose rows are new or changed since the sensor "
                       "last looked (cursor: a fingerprint per day). Re-running a day is safe: the ledger reuses "
                       "finished videos and only submits what changed.")
def catalog_change_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    cursor = json.loads(context.cursor) if context.cursor else {}
    # cursor: {"files": catalog_signature, "days": {day: fingerprint}}; before the signature: {day: fingerprint}
    seen: dict[str, str] = cursor["days"] if "days" in cursor else cursor
    options = warehouse.storage_options or None
    files = catalog_signature(warehouse.catalog_uri, storage_options=options)
    if files is not None and files == cursor.get("files"):  # no file written since: no row can have changed
        return dg.SkipReason(f"catalog files unchanged since the last look ({len(seen)} days)")
    current = catalog_fingerprints(warehouse.catalog_uri, storage_options=options)
    valid_days = set(daily_partitions.get_partition_keys())
    requests = []
    for day, fingerprint in sorted(current.items()):
        if seen.get(day) == fingerprint or day not in valid_days:
            continue
        requests.append(dg.RunRequest(run_key=f"{day}:{fingerprint}", partition_key=day,
                                      tags={"sora/trigger": "catalog_change"}))
    context.update_cursor(json.dumps({"files": files, "days": current}, sort_keys=True))
    if not requests:
        return dg.SkipReason(f"no new or changed catalog days among {len(current)}")
    return requests
