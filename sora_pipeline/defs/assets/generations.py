"""The day's generations: every valid item goes through the request ledger and fal's queue (or the simulator).

Writes `generations` (one row per item: what happened) and `failed_generations` (items without a video).
The generation room (runner, fal client, webhooks, PyAV) is imported by the step, not by loading the code location."""


import json
import logging
from collections import Counter
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from sora_pipeline.defs.assets.lineage import arrow_rows, selected_results, spec_metadata, table_metadata
from sora_pipeline.defs.assets.upstream import read_upstream
from sora_pipeline.coordination import LedgerUnavailable
from sora_pipeline.ledger import ResubmitPolicy, recover_day
from sora_pipeline.defs.database_resource import LedgerDatabaseResource
from sora_pipeline.defs.partitions import daily_partitions
from sora_pipeline.defs.platform_resource import FalPlatformResource
from sora_pipeline.defs.resources import SIMULATOR_KEY, FalVideoResource
from sora_pipeline.warehouse.schemas import FAILED_GENERATIONS, GENERATIONS
from sora_pipeline.defs.warehouse_resource import WarehouseResource

if TYPE_CHECKING:
    from sora_pipeline.generation.records import Outcome

GROUP = "generation"
FAL_POOL = "fal_sora"


class GenerationRunConfig(dg.Config):
    """Per-run choices (set them in the launchpad or a backfill's config)."""

    regenerate: bool = Field(default=False, description="force new generations for the selected day(s)")
    resubmit_unknown: bool = Field(default=False, description="resubmit requests whose submit had no answer")
    max_attempts: int = Field(default=3, ge=1, description="attempts per item, the first included")
    dry_run: bool = Field(default=False, description="validate and price the day; submit nothing")
    run_budget_usd: float | None = Field(default=None, ge=0, description="stop submitting beyond this per run")
    day_budget_usd: float | None = Field(default=None, ge=0, description="stop submitting beyond this per day")
    progress_interval_seconds: float = Field(default=5.0, gt=0, description="cadence of progress log lines")
    submit_heartbeat_seconds: float = Field(default=5.0, gt=0, description="renewal of this run's submit claims; "
                                            "a claim not renewed for 4× this belongs to a dead run")
    unknown_settle_seconds: float = Field(default=7200.0, gt=0, description="an unknown submit missing from fal's "
                                          "request history this long after its claim was never accepted")


@dg.multi_asset(
    specs=[
        # both outputs of the catalog step (it runs whole): any selection upstream of generations takes the step
        dg.AssetSpec("generations", group_name=GROUP, code_version="1", deps=["catalog_items", "rejected_items"],
                     metadata=spec_metadata(GENERATIONS), kinds={"parquet", "fal"}, skippable=True,
                     description="One row per valid item of the day: its request key, ledger attempt, what this "
                                 "run did (submitted / resumed / reused / skipped), request id, result, archived "
                                 "video and its sha256, timings, cost, and errors."),
        dg.AssetSpec("failed_generations", group_name=GROUP, code_version="1", deps=["catalog_items"],
                     metadata=spec_metadata(FAILED_GENERATIONS), kinds={"parquet"}, skippable=True,
                     description="Items of the day that did not produce a video (failed, unknown, skipped by "
                                 "the budget, still pending), each with a reason and its request key."),
    ],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    pool=FAL_POOL,
    can_subset=True,  # both tables are always written; events only for the selected ones
)
def generations(context: dg.AssetExecutionContext, config: GenerationRunConfig, fal: FalVideoResource,
                warehouse: WarehouseResource, database: LedgerDatabaseResource, fal_platform: FalPlatformResource):
    from sora_pipeline.generation.config import GenerationConfig
    from sora_pipeline.generation.records import WorkItem
    from sora_pipeline.generation.runner import GenerationRunner
    from sora_pipeline.generation.failpoints import failpoint
    from sora_pipeline.fal.errors import AuthenticationError

    day = context.partition_key
    items = [WorkItem(item_id=r["item_id"], prompt=r["prompt"], image_ref=r["image_ref"],
                      resolution=r["resolution"], aspect_ratio=r["aspect_ratio"],
                      duration=None if r["duration"] is None else int(r["duration"]), day=day,
                      params=json.loads(r["params"]) if r.get("params") else None,
                      end_image_ref=r.get("end_image_ref"), endpoint_id=r.get("endpoint_id") or fal.endpoint_id)
             for r in arrow_rows(read_upstream(warehouse, "catalog_items", day))]  # missing: fails, naming it
    unknown = sorted({i.endpoint_id for i in items} - set(fal.endpoints().profiles))
    if unknown:  # the profiles changed since the catalog step checked the rows: nothing is planned or paid
        raise dg.Failure(description=f"catalog_items of {day} name endpoint(s) without a profile here: "
                                     f"{', '.join(unknown)} — restore their profiles (SORA_ENDPOINT_PROFILES) or "
                                     "materialize the day's catalog step again", allow_retries=False)
    ledger = database.ledger()
    recover_day(ledger, day, warehouse.read("generations", day), queue_base_url=fal.base_url)  # a lost ledger
    used = Counter(i.endpoint_id for i in items)
    context.log.info(f"backend={fal.backend} endpoint={fal.endpoint_id} queue={fal.base_url} ledger={ledger!r}"
                     + (f"; rows by endpoint: {dict(used)}" if len(used) > 1 else ""))
    run_config = GenerationConfig(
        endpoint_id=fal.endpoint_id, endpoints=fal.endpoints(), backend=fal.backend, queue_base_url=fal.base_url, owner=context.run_id,
        day=day, max_concurrency=fal.run_concurrency, account_cap=fal.account_cap, submit_concurrency=fal.submit_concurrency, total_timeout=fal.total_timeout,
        archive_root=warehouse.videos_uri(day) if fal.archive_videos else None,
        storage_options=dict(warehouse.storage_options),
        policy=ResubmitPolicy(max_attempts=config.max_attempts, resubmit_unknown=config.resubmit_unknown,
                              regenerate=config.regenerate,
                              # a live submitter renews its claims (heartbeat): one not renewed is a dead run's
                              submit_lease_seconds=4 * config.submit_heartbeat_seconds),
        prices=fal.prices(), run_budget=config.run_budget_usd, day_budget=config.day_budget_usd,
        dry_run=config.dry_run, openai_api_key=fal.openai_api_key,
        progress_interval=config.progress_interval_seconds,
        webhook_wait=fal.webhook_wait_seconds if fal.webhook_url else None,
        webhook_ledger_poll=fal.webhook_ledger_poll_seconds,
        submit_heartbeat=config.submit_heartbeat_seconds, unknown_settle=config.unknown_settle_seconds,
        history=request_history(fal, fal_platform), caps=fal.caps.caps())
    progress_log = logging.getLogger("sora_pipeline.progress")  # the demo prints these lines

    def emit(line: str) -> None:
        context.log.info(line)
        progress_log.info(line)

    runner = GenerationRunner(run_config, fal.async_client, ledger, emit=emit, sync_client_factory=fal.sync_client)
    from sora_pipeline.generation.registry_check import check_endpoint, split_served, statuses_metadata
    statuses = {}  # is fal still serving each endpoint the day uses? (the default's asked even on a quiet day)
    for endpoint_id in dict.fromkeys([fal.endpoint_id, *(i.endpoint_id for i in items)]):
        statuses[endpoint_id] = served = check_endpoint(platform_url(fal, fal_platform), endpoint_id,
                                                        run_id=context.run_id,
                                                        timeout=min(fal_platform.request_timeout, 10.0))
        (context.log.info if served.state == "active" else context.log.warning)(served.line)
    to_run, refused = split_served(items, statuses, fal.endpoint_id, fal.backend)
    try:
        ran = {o.item_id: o for o in runner.run(to_run)} if to_run or not refused else {}
        refused_by_id = {o.item_id: o for o in refused}
        outcomes = [ran.get(i.item_id) or refused_by_id[i.item_id] for i in items
                    if i.item_id in ran or i.item_id in refused_by_id]
    except (AuthenticationError, LedgerUnavailable) as exc:  # one line for people; a retry cannot help
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    counts = Counter(o.status for o in outcomes)
    decisions = Counter(o.decision for o in outcomes)
    for o in outcomes:
        if o.status not in ("completed", "planned"):
            context.log.warning(f"{o.item_id}: {o.status} ({o.error_type}): {o.error_message}")
    extra = {
        "backend": fal.backend, "endpoint_id": fal.endpoint_id, "dry_run": config.dry_run,
        "estimated_cost_usd": dg.MetadataValue.float(float(round(runner.estimated_total, 4))),
        **cost_metadata(outcomes, fal.backend),
        "seconds_generated": dg.MetadataValue.float(float(sum(o.seconds_generated or 0 for o in outcomes
                                                              if o.status == "completed"))),
        "status_counts": dict(counts), "decision_counts": dict(decisions),
        "submitted": decisions.get("submitted", 0), **statuses_metadata(statuses),
        "endpoints": dict(Counter(o.endpoint_id for o in outcomes)),
    }
    if config.dry_run:
        # a dry run reports what it would do; it materializes nothing (downstream steps are skipped)
        context.log.info(f"DRY RUN {day}: {dict(decisions)}; estimated cost ${runner.estimated_total:,.2f}")
        yield dg.AssetObservation(asset_key="generations", partition=day, metadata=extra)
        return
    rows = [outcome_row(o) for o in outcomes]
    failed = [failed_row(o) for o in outcomes if o.status != "completed"]
    uri = warehouse.write(GENERATIONS, day, rows)
    failpoint("mid_table_write")  # generations replaced, failed_generations not yet
    failed_uri = warehouse.write(FAILED_GENERATIONS, day, failed)
    yield from selected_results(context, {
        "generations": table_metadata(GENERATIONS, uri, len(rows), extra=extra),
        "failed_generations": table_metadata(FAILED_GENERATIONS, failed_uri, len(failed),
                                             extra={"by_status": dict(Counter(r["status"] for r in failed))}),
    })


def platform_url(fal: FalVideoResource, fal_platform: FalPlatformResource) -> str:
    """fal's platform API (model registry, request history): a simulator answers it on its own origin, fal at
    SORA_FAL_API_URL."""
    return f"{fal.base_url}/v1" if fal.backend == "simulator" else fal_platform.api_url


def request_history(fal: FalVideoResource, fal_platform: FalPlatformResource):
    """`history(endpoint_id, start, end)` over fal's request history with payloads (the platform API of fal, or of
    the simulator the queue is), or None without a key to ask it with."""
    url = platform_url(fal, fal_platform)
    key = fal.fal_key or (SIMULATOR_KEY if fal.backend == "simulator" else None)
    if not key:
        return None

    def history(endpoint_id: str, start, end):
        from sora_pipeline.fal.platform import PlatformClient

        with PlatformClient(url, key, timeout=fal_platform.request_timeout,
                            max_json_bytes=fal_platform.max_json_bytes) as client:
            # small pages: each item carries its input, whose image may be a data URI of megabytes
            yield from client.requests_by_endpoint(endpoint_id, start=start, end=end, expand_payloads=True, limit=20)

    return history


def cost_metadata(outcomes: list, backend: str) -> dict:
    """Spend of the day's requests as numbers the UI plots over days: estimates beside what fal reported (billed
    units × unit price). The simulator's figures are labelled as such (`backend`), never as fal's."""
    billed = [o for o in outcomes if o.billed_cost_usd is not None]
    return {
        "requests": dg.MetadataValue.int(sum(1 for o in outcomes if o.request_id)),
        "priced_cost_usd": dg.MetadataValue.float(float(round(sum(o.priced_cost or 0 for o in outcomes), 4))),
        "billed_units": dg.MetadataValue.float(float(sum(o.billed_units or 0 for o in billed))),
        "billed_cost_usd": dg.MetadataValue.float(float(round(sum(o.billed_cost_usd for o in billed), 4))),
        "billed_requests": dg.MetadataValue.int(len(billed)),
        "cost_backend": backend,
    }


def outcome_row(o: "Outcome") -> dict:
    return dict(vars(o))


def failed_row(o: "Outcome") -> dict:
    return dict(vars(o), reason=o.error_message)
