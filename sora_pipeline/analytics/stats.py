"""Statistics of the pipeline's work, one SQL (DuckDB) for a single day and for the rollup over all days.

`generation_daily_stats` (one row per day) and `generation_summary` (one row per day plus a total row) share
their metric columns and the query that computes them (`stats_sql`), so a day's figures and the rollup never
disagree. The query reads four relations with a `date` column: `generations`, `video_metadata`,
`rejected_items` and `fal_billing` — views over the hive-partitioned Parquet tables (`sora_pipeline.analytics.query.connect`) or, for one
day, the day's Arrow tables registered under those names (`daily_stats_row`). No Dagster import here.

Percentiles are `quantile_cont` (linear interpolation, like numpy's default) over the completed items; the total
row's percentiles are over every completed item of every day, not an average of daily percentiles.
"""

from __future__ import annotations

import json
from datetime import date
from typing import TYPE_CHECKING

import pyarrow as pa

from sora_pipeline.warehouse.schemas import (FAL_BILLING, GENERATIONS, REJECTED_ITEMS, VIDEO_METADATA, Column,
                                             TableDef)

if TYPE_CHECKING:
    import duckdb

JSON_COUNTS = "JSON {value: count}"

# the metric columns shared by the daily table and the summary, with the upstream columns they derive from
_METRICS: tuple[tuple[Column, tuple[tuple[str, str], ...]], ...] = tuple(
    (Column(name, typ, desc), deps) for name, typ, desc, deps in (
        ("planned", pa.int64(), "valid catalog items (rows of `generations`)", (("generations", "item_id"),)),
        ("submitted", pa.int64(), "items submitted to fal by the day's latest run", (("generations", "decision"),)),
        ("reused", pa.int64(), "items whose stored result was reused (no new charge)", (("generations", "decision"),)),
        ("resumed", pa.int64(), "items whose in-flight request was resumed", (("generations", "decision"),)),
        ("completed", pa.int64(), "items with a video", (("generations", "status"),)),
        ("failed", pa.int64(), "items that failed", (("generations", "status"),)),
        ("unknown", pa.int64(), "items whose submit had no answer (a person decides)", (("generations", "status"),)),
        ("skipped", pa.int64(), "items skipped (budget cap, claimed by another run)", (("generations", "status"),)),
        ("pending", pa.int64(), "items still running at fal when the run ended", (("generations", "status"),)),
        ("rejected", pa.int64(), "catalog rows rejected by validation", (("rejected_items", "item_id"),)),
        ("failed_by_type", pa.string(), "JSON {error_type: count} of the failed items",
         (("generations", "error_type"),)),
        ("skipped_by_reason", pa.string(), "JSON {error_type: count} of the skipped items (e.g. budget)",
         (("generations", "error_type"),)),
        ("rejected_by_field", pa.string(), "JSON {field: count} of the rejected rows", (("rejected_items", "field"),)),
        ("success_rate", pa.float64(), "completed / planned (null when nothing was planned)",
         (("generations", "status"),)),
        ("latency_p50_s", pa.float64(), "submit → completion, median seconds (completed items)",
         (("generations", "submitted_at"), ("generations", "completed_at"))),
        ("latency_p95_s", pa.float64(), "submit → completion, 95th percentile seconds",
         (("generations", "submitted_at"), ("generations", "completed_at"))),
        ("latency_max_s", pa.float64(), "submit → completion, max seconds",
         (("generations", "submitted_at"), ("generations", "completed_at"))),
        ("queue_p50_s", pa.float64(), "submit → first seen IN_PROGRESS (time in fal's queue), median seconds",
         (("generations", "submitted_at"), ("generations", "started_at"))),
        ("queue_p95_s", pa.float64(), "time in fal's queue, 95th percentile seconds",
         (("generations", "submitted_at"), ("generations", "started_at"))),
        ("run_p50_s", pa.float64(), "first seen IN_PROGRESS → completion (running time), median seconds",
         (("generations", "started_at"), ("generations", "completed_at"))),
        ("run_p95_s", pa.float64(), "running time, 95th percentile seconds",
         (("generations", "started_at"), ("generations", "completed_at"))),
        ("seconds_generated", pa.float64(), "seconds of video generated (completed items)",
         (("generations", "seconds_generated"),)),
        ("estimated_cost_usd", pa.float64(), "USD estimated for the items that reached fal (any run): the "
         "estimate to compare with billed_cost_usd", (("generations", "estimated_cost"),)),
        ("estimated_cost_run_usd", pa.float64(), "USD estimated for the items the latest run submitted (new spend)",
         (("generations", "estimated_cost"), ("generations", "decision"))),
        ("priced_cost_usd", pa.float64(), "USD at the profile's prices for the generated seconds and output size "
         "(completed items; an estimate)", (("generations", "priced_cost"),)),
        ("billed_cost_usd", pa.float64(), "USD fal billed for the day's requests on fal (its billing events, else "
         "its billable units × unit price; the simulator's never counted; null when fal reported nothing)",
         (("fal_billing", "billed_cost_usd"), ("generations", "billed_cost_usd"))),
        ("unbilled_requests", pa.int64(), "requests on fal without a billed cost yet (billing data lags)",
         (("fal_billing", "billing_source"), ("generations", "billing_source"))),
        ("unknown_spend_usd", pa.float64(), "USD fal billed on the day for requests the ledger never submitted",
         (("fal_billing", "known_to_ledger"),)),
        ("videos", pa.int64(), "rows of `video_metadata`", (("video_metadata", "item_id"),)),
        ("resolution_mix", pa.string(), "JSON {resolution asked: count} of the videos",
         (("video_metadata", "resolution"),)),
        ("aspect_ratio_mix", pa.string(), "JSON {aspect_ratio asked: count} of the videos",
         (("video_metadata", "aspect_ratio"),)),
        ("duration_mix", pa.string(), "JSON {requested_duration: count} of the videos",
         (("video_metadata", "requested_duration"),)),
        ("fps_mix", pa.string(), "JSON {fps: count} of the videos", (("video_metadata", "fps"),)),
        ("size_mix", pa.string(), "JSON {WIDTHxHEIGHT: count} of the videos",
         (("video_metadata", "width"), ("video_metadata", "height"))),
        ("mean_file_size", pa.float64(), "bytes", (("video_metadata", "file_size"),)),
        ("max_file_size", pa.int64(), "bytes", (("video_metadata", "file_size"),)),
        ("total_file_size", pa.int64(), "bytes", (("video_metadata", "file_size"),)),
        ("metadata_from_api", pa.int64(), "videos whose media values came only from the API",
         (("video_metadata", "metadata_source"),)),
        ("metadata_from_probe", pa.int64(), "videos whose media values came only from the PyAV probe",
         (("video_metadata", "metadata_source"),)),
        ("metadata_from_both", pa.int64(), "videos with values from both (api+probe)",
         (("video_metadata", "metadata_source"),)),
    ))

METRIC_COLUMNS: tuple[Column, ...] = tuple(c for c, _ in _METRICS)
METRIC_LINEAGE: dict[str, tuple[tuple[str, str], ...]] = {c.name: deps for c, deps in _METRICS}

DAILY_STATS = TableDef("generation_daily_stats", "One row per day summarizing the pipeline's work", (
    Column("day", pa.date32(), "the day partition"),
    *METRIC_COLUMNS,
))

SUMMARY = TableDef("generation_summary", "The pipeline's work over all days: one row per day and a total row", (
    Column("scope", pa.string(), "`day` (one day) or `all` (every day; `day` is null)"),
    Column("day", pa.date32(), "the day (null on the total row)"),
    Column("days", pa.int64(), "days with any generation or rejected row"),
    Column("first_day", pa.date32(), "earliest such day"),
    Column("last_day", pa.date32(), "latest such day"),
    *METRIC_COLUMNS,
))

SOURCE_TABLES = {t.name: t for t in (GENERATIONS, VIDEO_METADATA, REJECTED_ITEMS, FAL_BILLING)}

HEADLINE = ("planned", "completed", "failed", "unknown", "skipped", "rejected", "success_rate", "latency_p50_s",
            "latency_p95_s", "latency_max_s", "queue_p50_s", "run_p50_s", "seconds_generated",
            "estimated_cost_usd", "billed_cost_usd", "unbilled_requests", "priced_cost_usd", "mean_file_size")


def _counts(expr: str, where: str) -> str:
    return f"to_json(histogram(CAST({expr} AS VARCHAR)) FILTER (WHERE {where}))"


def stats_sql(*, by_day: bool = True, total: bool = False, day: str | None = None) -> str:
    """The metrics query over `generations`, `video_metadata`, `rejected_items` (each with a `date` column).

    Rows: one per day present in any of them (`by_day`; or exactly `day` when given, even if it has no rows)
    and one total row (`total`). Columns: `is_total`, `day`, `days`, `first_day`, `last_day`, then the
    metric columns in `METRIC_COLUMNS` order.
    """
    sets = ", ".join((["(date)"] if by_day else []) + (["()"] if total else []))
    if not sets:
        raise ValueError("by_day or total must be set")
    if day is not None:
        day = date.fromisoformat(day).isoformat()  # validated: it is pasted into the SQL
        days_cte = f"SELECT DATE '{day}' AS date"
    else:
        days_cte = ("SELECT date FROM generations UNION SELECT date FROM video_metadata "
                    "UNION SELECT date FROM rejected_items")
    keys = []
    if by_day:
        keys.append("SELECT false AS is_total, date FROM days")
    if total:
        keys.append("SELECT true AS is_total, CAST(NULL AS DATE) AS date")
    done = "status = 'completed'"
    return f"""
WITH days AS ({days_cte}),
keys AS ({" UNION ALL ".join(keys)}),
g0 AS (
  SELECT *, epoch(completed_at - submitted_at) AS _lat, epoch(started_at - submitted_at) AS _queue,
         epoch(completed_at - started_at) AS _run
  FROM generations WHERE date IN (SELECT date FROM days)
),
g AS (
  SELECT grouping(date) = 1 AS is_total, date,
    count(*) AS planned,
    count(*) FILTER (WHERE decision = 'submitted') AS submitted,
    count(*) FILTER (WHERE decision = 'reused') AS reused,
    count(*) FILTER (WHERE decision = 'resumed') AS resumed,
    count(*) FILTER (WHERE {done}) AS completed,
    count(*) FILTER (WHERE status = 'failed') AS failed,
    count(*) FILTER (WHERE status = 'unknown') AS unknown,
    count(*) FILTER (WHERE status = 'skipped') AS skipped,
    count(*) FILTER (WHERE status = 'pending') AS pending,
    {_counts("coalesce(error_type, 'error')", "status = 'failed'")} AS failed_by_type,
    {_counts("coalesce(error_type, 'skipped')", "status = 'skipped'")} AS skipped_by_reason,
    quantile_cont(_lat, 0.5) FILTER (WHERE {done}) AS latency_p50_s,
    quantile_cont(_lat, 0.95) FILTER (WHERE {done}) AS latency_p95_s,
    max(_lat) FILTER (WHERE {done}) AS latency_max_s,
    quantile_cont(_queue, 0.5) FILTER (WHERE {done}) AS queue_p50_s,
    quantile_cont(_queue, 0.95) FILTER (WHERE {done}) AS queue_p95_s,
    quantile_cont(_run, 0.5) FILTER (WHERE {done}) AS run_p50_s,
    quantile_cont(_run, 0.95) FILTER (WHERE {done}) AS run_p95_s,
    sum(seconds_generated) FILTER (WHERE {done}) AS seconds_generated,
    sum(estimated_cost) FILTER (WHERE request_id IS NOT NULL OR status = 'unknown') AS estimated_cost_usd,
    sum(estimated_cost) FILTER (WHERE decision = 'submitted') AS estimated_cost_run_usd,
    sum(priced_cost) FILTER (WHERE {done}) AS priced_cost_usd,
    sum(billed_cost_usd) FILTER (WHERE backend = 'fal') AS g_billed_usd,
    count(*) FILTER (WHERE backend = 'fal' AND request_id IS NOT NULL AND billed_cost_usd IS NULL) AS g_unbilled
  FROM g0 GROUP BY GROUPING SETS ({sets})
),
b0 AS (SELECT * FROM fal_billing WHERE date IN (SELECT date FROM days)),
b AS (
  -- fal's own billing records win over the result's billable units on every day reconciled (`fal_billing`)
  SELECT grouping(date) = 1 AS is_total, date,
    sum(billed_cost_usd) FILTER (WHERE known_to_ledger AND backend = 'fal') AS billed_usd,
    count(*) FILTER (WHERE known_to_ledger AND backend = 'fal' AND billed_cost_usd IS NULL) AS unbilled,
    sum(billed_cost_usd) FILTER (WHERE NOT known_to_ledger) AS unknown_usd
  FROM b0 GROUP BY GROUPING SETS ({sets})
),
g_unreconciled AS (
  -- the total row: days without fal_billing rows count their generations' billable units
  SELECT sum(billed_cost_usd) FILTER (WHERE backend = 'fal') AS billed_usd,
    count(*) FILTER (WHERE backend = 'fal' AND request_id IS NOT NULL AND billed_cost_usd IS NULL) AS unbilled
  FROM g0 WHERE date NOT IN (SELECT date FROM b0)
),
v AS (
  SELECT grouping(date) = 1 AS is_total, date,
    count(*) AS videos,
    {_counts("resolution", "resolution IS NOT NULL")} AS resolution_mix,
    {_counts("aspect_ratio", "aspect_ratio IS NOT NULL")} AS aspect_ratio_mix,
    {_counts("requested_duration", "requested_duration IS NOT NULL")} AS duration_mix,
    {_counts("fps", "fps IS NOT NULL")} AS fps_mix,
    {_counts("width || 'x' || height", "width IS NOT NULL AND height IS NOT NULL")} AS size_mix,
    avg(file_size) AS mean_file_size, max(file_size) AS max_file_size, sum(file_size) AS total_file_size,
    count(*) FILTER (WHERE metadata_source = 'api') AS metadata_from_api,
    count(*) FILTER (WHERE metadata_source = 'probe') AS metadata_from_probe,
    count(*) FILTER (WHERE metadata_source = 'api+probe') AS metadata_from_both
  FROM video_metadata WHERE date IN (SELECT date FROM days) GROUP BY GROUPING SETS ({sets})
),
r AS (
  SELECT grouping(date) = 1 AS is_total, date, count(*) AS rejected,
    {_counts("coalesce(field, '?')", "true")} AS rejected_by_field
  FROM rejected_items WHERE date IN (SELECT date FROM days) GROUP BY GROUPING SETS ({sets})
),
span AS (SELECT count(DISTINCT date) AS days, min(date) AS first_day, max(date) AS last_day FROM days)
SELECT k.is_total, k.date AS day,
  CASE WHEN k.is_total THEN span.days ELSE 1 END AS days,
  CASE WHEN k.is_total THEN span.first_day ELSE k.date END AS first_day,
  CASE WHEN k.is_total THEN span.last_day ELSE k.date END AS last_day,
  CAST(coalesce(g.planned, 0) AS BIGINT) AS planned,
  CAST(coalesce(g.submitted, 0) AS BIGINT) AS submitted,
  CAST(coalesce(g.reused, 0) AS BIGINT) AS reused,
  CAST(coalesce(g.resumed, 0) AS BIGINT) AS resumed,
  CAST(coalesce(g.completed, 0) AS BIGINT) AS completed,
  CAST(coalesce(g.failed, 0) AS BIGINT) AS failed,
  CAST(coalesce(g.unknown, 0) AS BIGINT) AS unknown,
  CAST(coalesce(g.skipped, 0) AS BIGINT) AS skipped,
  CAST(coalesce(g.pending, 0) AS BIGINT) AS pending,
  CAST(coalesce(r.rejected, 0) AS BIGINT) AS rejected,
  CAST(coalesce(g.failed_by_type, '{{}}') AS VARCHAR) AS failed_by_type,
  CAST(coalesce(g.skipped_by_reason, '{{}}') AS VARCHAR) AS skipped_by_reason,
  CAST(coalesce(r.rejected_by_field, '{{}}') AS VARCHAR) AS rejected_by_field,
  CASE WHEN g.planned > 0 THEN round(g.completed / g.planned, 4) END AS success_rate,
  round(g.latency_p50_s, 3) AS latency_p50_s, round(g.latency_p95_s, 3) AS latency_p95_s,
  round(g.latency_max_s, 3) AS latency_max_s,
  round(g.queue_p50_s, 3) AS queue_p50_s, round(g.queue_p95_s, 3) AS queue_p95_s,
  round(g.run_p50_s, 3) AS run_p50_s, round(g.run_p95_s, 3) AS run_p95_s,
  round(coalesce(g.seconds_generated, 0), 3) AS seconds_generated,
  round(coalesce(g.estimated_cost_usd, 0), 4) AS estimated_cost_usd,
  round(coalesce(g.estimated_cost_run_usd, 0), 4) AS estimated_cost_run_usd,
  round(coalesce(g.priced_cost_usd, 0), 4) AS priced_cost_usd,
  round(CASE WHEN k.is_total THEN
          CASE WHEN b.billed_usd IS NULL AND gu.billed_usd IS NULL THEN NULL
               ELSE coalesce(b.billed_usd, 0) + coalesce(gu.billed_usd, 0) END
        WHEN b.is_total IS NOT NULL THEN b.billed_usd ELSE g.g_billed_usd END, 4) AS billed_cost_usd,
  CAST(CASE WHEN k.is_total THEN coalesce(b.unbilled, 0) + coalesce(gu.unbilled, 0)
            WHEN b.is_total IS NOT NULL THEN b.unbilled ELSE coalesce(g.g_unbilled, 0) END AS BIGINT)
    AS unbilled_requests,
  round(coalesce(b.unknown_usd, 0), 4) AS unknown_spend_usd,
  CAST(coalesce(v.videos, 0) AS BIGINT) AS videos,
  CAST(coalesce(v.resolution_mix, '{{}}') AS VARCHAR) AS resolution_mix,
  CAST(coalesce(v.aspect_ratio_mix, '{{}}') AS VARCHAR) AS aspect_ratio_mix,
  CAST(coalesce(v.duration_mix, '{{}}') AS VARCHAR) AS duration_mix,
  CAST(coalesce(v.fps_mix, '{{}}') AS VARCHAR) AS fps_mix,
  CAST(coalesce(v.size_mix, '{{}}') AS VARCHAR) AS size_mix,
  round(v.mean_file_size, 1) AS mean_file_size,
  CAST(v.max_file_size AS BIGINT) AS max_file_size,
  CAST(coalesce(v.total_file_size, 0) AS BIGINT) AS total_file_size,
  CAST(coalesce(v.metadata_from_api, 0) AS BIGINT) AS metadata_from_api,
  CAST(coalesce(v.metadata_from_probe, 0) AS BIGINT) AS metadata_from_probe,
  CAST(coalesce(v.metadata_from_both, 0) AS BIGINT) AS metadata_from_both
FROM keys k CROSS JOIN span
LEFT JOIN g ON g.is_total = k.is_total AND g.date IS NOT DISTINCT FROM k.date
LEFT JOIN v ON v.is_total = k.is_total AND v.date IS NOT DISTINCT FROM k.date
LEFT JOIN r ON r.is_total = k.is_total AND r.date IS NOT DISTINCT FROM k.date
LEFT JOIN b ON b.is_total = k.is_total AND b.date IS NOT DISTINCT FROM k.date
CROSS JOIN g_unreconciled gu
ORDER BY k.is_total, k.date
"""


def compute_stats(con: duckdb.DuckDBPyConnection, *, by_day: bool = True, total: bool = False,
                  day: str | None = None) -> list[dict]:
    """Run `stats_sql` on a connection that has the three source relations; rows as dicts."""
    rel = con.sql(stats_sql(by_day=by_day, total=total, day=day))
    names = rel.columns
    return [dict(zip(names, row)) for row in rel.fetchall()]


def empty_source(table: TableDef) -> pa.Table:
    """A 0-row table with `table`'s columns and the hive `date` column (for a table not written yet)."""
    return table.arrow_schema.append(pa.field("date", pa.date32())).empty_table()


def with_date(data: pa.Table | None, table: TableDef, day: str) -> pa.Table:
    if data is None:
        return empty_source(table)
    return data.append_column(pa.field("date", pa.date32()),
                              pa.array([date.fromisoformat(day)] * len(data), pa.date32()))


def daily_stats_row(day: str | date, generations: pa.Table | None, videos: pa.Table | None,
                    rejected: pa.Table | None, billing: pa.Table | None = None) -> dict:
    """The `generation_daily_stats` row of one day from that day's tables (None = the day was not written)."""
    import duckdb  # here: the table definitions above are read by every load of the code location

    day = day.isoformat() if isinstance(day, date) else str(day)
    con = duckdb.connect()
    try:
        for name, data in (("generations", generations), ("video_metadata", videos), ("rejected_items", rejected),
                           ("fal_billing", billing)):
            con.register(name, with_date(data, SOURCE_TABLES[name], day))
        (row,) = compute_stats(con, by_day=True, day=day)
    finally:
        con.close()
    return {"day": row["day"], **{c.name: row[c.name] for c in METRIC_COLUMNS}}


def summary_rows(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """The `generation_summary` rows (every day, then the total) from views over all days."""
    rows = []
    for r in compute_stats(con, by_day=True, total=True):
        rows.append({"scope": "all" if r["is_total"] else "day", **{c.name: r.get(c.name) for c in SUMMARY.columns
                                                                     if c.name != "scope"}})
    return rows


# ---------------------------------------------------------------------------------------------- presentation
def fmt(name: str, value) -> str:
    """A metric value for people: money with $, seconds with s, rates as %, sizes in MB."""
    if value is None:
        return "–"
    if name.endswith("_usd"):
        return f"${value:,.2f}"
    if name.endswith("_s"):
        return f"{value:,.1f} s"
    if name == "success_rate":
        return f"{value:.0%}"
    if name == "seconds_generated":
        return f"{value:,.0f} s"
    if "file_size" in name:
        return f"{value / 1e6:,.2f} MB"
    if name.endswith(("_mix", "_by_type", "_by_reason", "_by_field")):
        data = json.loads(value) if isinstance(value, str) else value
        return ", ".join(f"{k}: {v}" for k, v in data.items()) or "–"
    if isinstance(value, float):
        return f"{value:,.3f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def headline_markdown(row: dict, names: tuple[str, ...] = HEADLINE + ("failed_by_type", "rejected_by_field",
                                                                       "resolution_mix")) -> str:
    """A two-column Markdown table of one stats row."""
    return "| metric | value |\n|---|---|\n" + "\n".join(f"| {n} | {fmt(n, row.get(n))} |" for n in names)


def days_markdown(rows: list[dict]) -> str:
    """One line per day (summary rows with scope `day`)."""
    cols = ("planned", "completed", "failed", "rejected", "latency_p50_s", "latency_p95_s", "seconds_generated",
            "estimated_cost_usd", "billed_cost_usd")
    head = "| day | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    return head + "\n".join(f"| {r['day']} | " + " | ".join(fmt(c, r.get(c)) for c in cols) + " |" for r in rows)
