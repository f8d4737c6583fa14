"""`generation_daily_stats`: one row per day summarizing what the pipeline did (counts, latency, cost, mix)."""


from datetime import date

import dagster as dg
import pyarrow as pa

from sora_pipeline.assets.lineage import arrow_rows, table_metadata
from sora_pipeline.partitions import daily_partitions
from sora_pipeline.stats import DAILY_STATS, daily_stats_row
from sora_pipeline.warehouse import WarehouseResource

GROUP = "analytics"


@dg.asset(
    key="generation_daily_stats", group_name=GROUP, code_version="1",
    deps=["generations", "video_metadata", "rejected_items"], kinds={"parquet"},
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.multi_run(1),
    description="Per day: items planned, submitted, completed, failed (by error type), rejected, skipped; "
                "success rate; submit→completion latency p50/p95/max; seconds generated; estimated and actual "
                "cost; resolution/aspect/duration mix; file sizes; where metadata came from.",
)
def generation_daily_stats(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    day = context.partition_key
    row = daily_stats_row(date.fromisoformat(day), arrow_rows(warehouse.read("generations", day)),
                          arrow_rows(warehouse.read("video_metadata", day)),
                          arrow_rows(warehouse.read("rejected_items", day)))
    uri = warehouse.write(DAILY_STATS, day, pa.Table.from_pylist([row], schema=DAILY_STATS.arrow_schema))
    headline = {k: row[k] for k in ("planned", "completed", "failed", "unknown", "skipped", "rejected",
                                    "success_rate", "latency_p50_s", "latency_p95_s", "seconds_generated",
                                    "estimated_cost_usd", "actual_cost_usd")}
    table = "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v if v is not None else '–'} |"
                                                         for k, v in headline.items())
    return dg.MaterializeResult(metadata=table_metadata(DAILY_STATS, uri, 1, upstream=None, extra={
        "summary": dg.MetadataValue.md(table),
        **{k: v for k, v in headline.items() if isinstance(v, (int, float)) and v is not None}}))
