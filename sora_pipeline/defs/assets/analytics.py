"""Analytics: `generation_daily_stats` (rows per day) and `generation_summary` (rollup over all days).

Both compute the same metrics with the same DuckDB query (`sora_pipeline.analytics.stats.stats_sql`): the daily asset
over the day's four tables, the summary directly over the hive-partitioned Parquet tables of every day. Rows are
per endpoint, with an `all` row where several endpoints (or none) were used (`stats.ENDPOINT_COLUMN`); the headline
figures are the totals. Each materialization carries a Markdown table of the headline figures with a chart
embedded (rendered by the Dagster UI) and writes the chart to the warehouse too. DuckDB is imported by the steps,
not by loading the code location."""


import io
import os
import uuid

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from sora_pipeline.analytics import charts
from sora_pipeline.defs.assets.lineage import spec_metadata, table_metadata
from sora_pipeline.defs.assets.upstream import read_upstream
from sora_pipeline.defs.partitions import daily_partitions
from sora_pipeline.analytics.report import days_markdown, endpoints_markdown, headline_markdown
from sora_pipeline.analytics.stats import (
    DAILY_STATS, HEADLINE, REJECTED_COLUMNS, STATS_LINEAGE, SUMMARY, daily_stats_rows, summary_rows, totals,
)
from sora_pipeline.warehouse.tables import file_uri_for
from sora_pipeline.defs.warehouse_resource import WarehouseResource

GROUP = "analytics"
SOURCES = ["generations", "video_metadata", "rejected_items", "fal_billing"]


def stats_lineage() -> dg.TableColumnLineage:
    """Which upstream columns `endpoint_id` and each metric column are computed from."""
    return dg.TableColumnLineage(deps_by_column={
        name: [dg.TableColumnDep(asset_key=dg.AssetKey(table), column_name=column) for table, column in deps]
        for name, deps in STATS_LINEAGE.items()})


def write_bytes(uri: str, data: bytes, storage_options: dict | None = None) -> str:
    """Write a whole file under the warehouse, replacing it in one step (rename locally; a single object copy on
    object stores), so a reader never sees half a file."""
    from sora_pipeline.analytics.query import warehouse_fs

    fs, path = warehouse_fs(uri, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}" if parent else f".tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "wb") as fh:
        fh.write(data)
    try:
        if "file" in ((fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)):
            os.replace(tmp, path)
        else:
            fs.mv(tmp, path)
    except BaseException:
        fs.rm(tmp)
        raise
    return uri


def _chart(context, make, *args) -> bytes | None:
    try:
        return make(*args)
    except Exception as exc:  # a chart never fails the asset
        context.log.warning(f"could not draw the chart: {type(exc).__name__}: {exc}")
        return None


def _numbers(row: dict, names) -> dict:
    out = {}
    for name in names:
        value = row.get(name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            out[name] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            out[name] = dg.MetadataValue.float(value)
    return out


@dg.asset(
    key="generation_daily_stats", group_name=GROUP, code_version="3",
    deps=SOURCES, kinds={"parquet", "duckdb"},
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.multi_run(1),
    metadata=spec_metadata(DAILY_STATS),
    description="Per day and endpoint (one row when the day used one endpoint; else a row per endpoint and the "
                "day's `all` row): items planned, submitted, reused, completed, failed (by error type), unknown, "
                "skipped (by reason), pending, rejected (by field); success rate; submit→completion latency "
                "p50/p95/max and queue vs. run time; seconds generated; estimated cost beside what fal billed (fal "
                "only, never the simulator's); resolution/aspect/duration/fps/size mix; file sizes; where the media "
                "metadata came from (API, probe, both). Headline table (the day's total) and chart in the "
                "materialization; chart also at `<warehouse>/generation_daily_stats/_reports/`.",
)
def generation_daily_stats(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    day = context.partition_key
    # the day's tables must exist (a missing one names what to materialize); fal_billing is read when reconciled
    rows = daily_stats_rows(day, read_upstream(warehouse, "generations", day),
                            read_upstream(warehouse, "video_metadata", day),
                            read_upstream(warehouse, "rejected_items", day, columns=REJECTED_COLUMNS),
                            warehouse.read("fal_billing", day))
    (row,) = totals(rows)  # the whole day: the headline, the chart and the log line
    uri = warehouse.write(DAILY_STATS, day, pa.Table.from_pylist(rows, schema=DAILY_STATS.arrow_schema))
    per_endpoint = [r for r in rows if r is not row]
    markdown = headline_markdown(row) + (
        "\n\n### Per endpoint\n\n" + days_markdown(per_endpoint, key="endpoint_id") if per_endpoint else "")
    extra: dict = {"dagster/column_lineage": stats_lineage()}
    png = _chart(context, charts.daily_chart, row)
    if png is not None:
        chart_uri = write_bytes(file_uri_for(warehouse.warehouse_uri, DAILY_STATS.name, "_reports",
                                             f"date={day}.png"), png, warehouse.storage_options or None)
        markdown = charts.markdown_with_chart(markdown, png, f"generation_daily_stats {day}")
        extra["chart"] = dg.MetadataValue.path(chart_uri)
    context.log.info(f"{day}: {row['completed']}/{row['planned']} completed, {row['failed']} failed, "
                     f"{row['rejected']} rejected; estimated ${row['estimated_cost_usd']:,.2f}, billed by fal "
                     + ("(nothing reported)" if row["billed_cost_usd"] is None else f"${row['billed_cost_usd']:,.2f}")
                     + (f"; {len(per_endpoint)} endpoints" if per_endpoint else ""))
    return dg.MaterializeResult(metadata=table_metadata(DAILY_STATS, uri, len(rows), upstream=None, extra={
        **extra, "summary": dg.MetadataValue.md(markdown), **_numbers(row, HEADLINE)}))


@dg.asset(
    key="generation_summary", group_name=GROUP, code_version="2",
    deps=SOURCES, kinds={"parquet", "duckdb"},
    metadata=spec_metadata(SUMMARY),
    # refreshed by Dagster's automation sensor after any day's tables change (cheap: one DuckDB query)
    automation_condition=dg.AutomationCondition.eager(),
    description="Rollup over every day, computed by DuckDB directly over the hive-partitioned Parquet tables "
                "(generations, video_metadata, rejected_items, fal_billing): rows per day (scope `day`) and total rows "
                "(scope `all`) with the generation_daily_stats metrics (total percentiles over all items), per "
                "endpoint as in generation_daily_stats; the report and chart compare the endpoints. Writes "
                "`<warehouse>/generation_summary/summary.parquet`, `summary.png` and `summary.md`. Not partitioned: "
                "refreshed automatically after days change (eager automation), or materialize it yourself.",
)
def generation_summary(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    from sora_pipeline.analytics.query import connect, retry_io, summary_uri

    options = warehouse.storage_options or None
    con = connect(warehouse.warehouse_uri, storage_options=options, empty_missing=True)
    try:
        rows, endpoints = retry_io(lambda: _summary_and_endpoints(con))
    finally:
        con.close()
    table = SUMMARY.from_rows(rows)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    uri = write_bytes(summary_uri(warehouse.warehouse_uri), buf.getvalue(), options)
    day_rows = totals([r for r in rows if r["scope"] == "day"])  # each day's total
    total = next(iter(totals([r for r in rows if r["scope"] == "all"])), {})
    headline = (f"**{total.get('days', 0)} day(s)** {total.get('first_day') or ''} → {total.get('last_day') or ''}"
                f"\n\n{headline_markdown(total)}")
    headline += "\n\n### Per endpoint\n\n" + endpoints_markdown(endpoints) if endpoints else ""
    report = headline + ("\n\n### Per day\n\n" + days_markdown(day_rows) if day_rows else "")
    extra: dict = {"dagster/column_lineage": stats_lineage(), "days": dg.MetadataValue.int(len(day_rows)),
                   "endpoints": dg.MetadataValue.int(len(endpoints))}
    png = _chart(context, charts.summary_chart, day_rows, total, endpoints)
    markdown = report
    if png is not None:
        chart_uri = write_bytes(file_uri_for(warehouse.warehouse_uri, SUMMARY.name, "summary.png"), png, options)
        markdown = charts.markdown_with_chart(report, png, "generation_summary")
        extra["chart"] = dg.MetadataValue.path(chart_uri)
    report = (f"# generation_summary\n\n{headline}\n\n" + ("![chart](summary.png)\n\n" if png else "")
              + ("### Per day\n\n" + days_markdown(day_rows) + "\n" if day_rows else ""))
    write_bytes(file_uri_for(warehouse.warehouse_uri, SUMMARY.name, "summary.md"), report.encode(), options)
    context.log.info(f"summary over {len(day_rows)} day(s): {total.get('completed', 0)} videos, "
                     f"estimated ${total.get('estimated_cost_usd') or 0:,.2f}, billed by fal "
                     + ("(nothing reported)" if total.get("billed_cost_usd") is None
                        else f"${total['billed_cost_usd']:,.2f}"))
    return dg.MaterializeResult(metadata=table_metadata(SUMMARY, uri, len(rows), upstream=None, extra={
        **extra, "summary": dg.MetadataValue.md(markdown), **_numbers(total, HEADLINE)}))


def _summary_and_endpoints(con) -> tuple[list[dict], list[dict]]:
    """The summary rows and the `endpoint_comparison` rows over the same days (one snapshot of the warehouse)."""
    from sora_pipeline.analytics.query import endpoint_comparison_for

    rows = summary_rows(con)
    total = totals([r for r in rows if r["scope"] == "all"])
    if not total or total[0]["first_day"] is None:
        return rows, []
    return rows, endpoint_comparison_for(con, str(total[0]["first_day"]), str(total[0]["last_day"]))
