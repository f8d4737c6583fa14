"""Statistics of the pipeline's work, one SQL (DuckDB) for a single day and for the rollup over all days.

`generation_daily_stats` (rows per day) and `generation_summary` (rows per day plus total rows) share their
metric columns and the query that computes them (`stats_sql`), so a day's figures and the rollup never disagree.
The query reads four relations with a `date` column: `generations`, `video_metadata`, `rejected_items` and
`fal_billing` — views over the hive-partitioned Parquet tables (`sora_pipeline.analytics.query.connect`) or, for
one day, the day's Arrow tables registered under those names (`daily_stats_rows`). No Dagster import here.

Every row is for one endpoint or for `all` (`ENDPOINT_COLUMN`): a day that used a single endpoint keeps a single
row (that endpoint's); a day that used several has one row per endpoint plus the day's `all` row; a quiet day has
an `all` row. Percentiles are `quantile_cont` (linear interpolation, like numpy's default) over the completed
items; an `all` or total row's percentiles are over every completed item it covers, not an average of others.
"""

from __future__ import annotations

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
ALL_ENDPOINTS = "all"
ENDPOINT_COLUMN = Column(
    "endpoint_id", pa.string(),
    "the fal endpoint these figures are for, or `all`. A day (or, in generation_summary, all days) that used one "
    "endpoint (in generations or rejected_items) has a single row, that endpoint's, holding everything; one that "
    "used several has one row per endpoint plus an `all` row (the total, percentiles over every item); one that "
    "used none has a single `all` row. To add figures up across rows, filter `endpoint_id != 'all'`; rows without "
    "an endpoint (rejected rows written before rejected_items had the column, fal spend on an endpoint the day "
    "did not use) count only in the total: the `all` row, or the single row (null: a row written before this "
    "column existed)")
STATS_LINEAGE: dict[str, tuple[tuple[str, str], ...]] = {
    ENDPOINT_COLUMN.name: (("generations", "endpoint_id"), ("rejected_items", "endpoint_id")),
    **{c.name: deps for c, deps in _METRICS}}

DAILY_STATS = TableDef("generation_daily_stats", "One row per day and endpoint summarizing the pipeline's work "
                       "(plus the day's `all` row when it used several endpoints)", (
    Column("day", pa.date32(), "the day partition"),
    ENDPOINT_COLUMN,
    *METRIC_COLUMNS,
))

SUMMARY = TableDef("generation_summary", "The pipeline's work over all days: rows per day and a total, each per "
                   "endpoint (plus an `all` row when several endpoints were used)", (
    Column("scope", pa.string(), "`day` (one day) or `all` (every day; `day` is null)"),
    Column("day", pa.date32(), "the day (null on the total rows)"),
    ENDPOINT_COLUMN,
    Column("days", pa.int64(), "days with any generation or rejected row (of this endpoint, on its total row)"),
    Column("first_day", pa.date32(), "earliest such day"),
    Column("last_day", pa.date32(), "latest such day"),
    *METRIC_COLUMNS,
))

SOURCE_TABLES = {t.name: t for t in (GENERATIONS, VIDEO_METADATA, REJECTED_ITEMS, FAL_BILLING)}
#: what the query reads of `rejected_items` (a day of 100,000 rejected rows need not bring their reasons)
REJECTED_COLUMNS = ["field", "endpoint_id"]

HEADLINE = ("planned", "completed", "failed", "unknown", "skipped", "rejected", "success_rate", "latency_p50_s",
            "latency_p95_s", "latency_max_s", "queue_p50_s", "run_p50_s", "seconds_generated",
            "estimated_cost_usd", "billed_cost_usd", "unbilled_requests", "priced_cost_usd", "mean_file_size")


def _counts(expr: str, where: str) -> str:
    return f"to_json(histogram(CAST({expr} AS VARCHAR)) FILTER (WHERE {where}))"


def stats_sql(*, by_day: bool = True, total: bool = False, day: str | None = None,
              without_endpoint: frozenset[str] = frozenset()) -> str:
    """The metrics query over `generations`, `video_metadata`, `rejected_items`, `fal_billing` (each with a `date`
    column; those named in `without_endpoint` have no `endpoint_id` column: their rows count for no endpoint).

    Rows (`by_day`): for each day present in any of them (or exactly `day` when given, even if it has no rows),
    one row per endpoint the day used (`generations` and `rejected_items`), plus an `all` row for the whole day
    when it used several or none; a day that used one endpoint has only that endpoint's row, holding the whole
    day. With `total`, the same over every day (`is_total`). Columns: `is_total`, `day`, `endpoint_id`, `days`,
    `first_day`, `last_day`, then the metric columns in `METRIC_COLUMNS` order; ordered by day, then endpoint
    with `all` last.
    """
    sets = ", ".join((["(date, endpoint_id)", "(date)"] if by_day else []) + (["(endpoint_id)", "()"] if total else []))
    if not sets:
        raise ValueError("by_day or total must be set")
    if day is not None:
        day = date.fromisoformat(day).isoformat()  # validated: it is pasted into the SQL
        days_cte = f"SELECT DATE '{day}' AS date"
    else:
        days_cte = ("SELECT date FROM generations UNION SELECT date FROM video_metadata "
                    "UNION SELECT date FROM rejected_items")
    keys = []
    if by_day:  # a day's endpoints; a day with one endpoint reads the day's figures (`src` 'all') under its name
        keys.append("SELECT false AS is_total, date, endpoint_id, CASE WHEN count(*) OVER (PARTITION BY date) = 1 "
                    "THEN 'all' ELSE endpoint_id END AS src FROM eps")
        keys.append("SELECT false, d.date, 'all', 'all' FROM days d LEFT JOIN (SELECT date, count(*) AS n FROM eps "
                    "GROUP BY date) c ON c.date = d.date WHERE coalesce(c.n, 0) <> 1")
    if total:
        keys.append("SELECT true, CAST(NULL AS DATE), endpoint_id, CASE WHEN (SELECT count(*) FROM ep_span) = 1 "
                    "THEN 'all' ELSE endpoint_id END FROM ep_span")
        keys.append("SELECT true, CAST(NULL AS DATE), 'all', 'all' WHERE (SELECT count(*) FROM ep_span) <> 1")
    done = "status = 'completed'"
    # the grouping columns of every aggregate: `ep` is the endpoint, `all` over every endpoint (null: no endpoint)
    by = ("grouping(date) = 1 AS is_total, date, "
          "CASE WHEN grouping(endpoint_id) = 1 THEN 'all' ELSE endpoint_id END AS ep")
    src = {name: (f"SELECT *, CAST(NULL AS VARCHAR) AS endpoint_id FROM {name}" if name in without_endpoint
                  else f"SELECT * FROM {name}") + " WHERE date IN (SELECT date FROM days)"
           for name in ("generations", "video_metadata", "rejected_items", "fal_billing")}
    on = "{t}.is_total = k.is_total AND {t}.date IS NOT DISTINCT FROM k.date AND {t}.ep = k.src"
    return f"""
WITH days AS ({days_cte}),
g0 AS (
  SELECT *, epoch(completed_at - submitted_at) AS _lat, epoch(started_at - submitted_at) AS _queue,
         epoch(completed_at - started_at) AS _run
  FROM ({src["generations"]})
),
r0 AS ({src["rejected_items"]}),
eps AS (
  SELECT date, endpoint_id FROM g0 WHERE endpoint_id IS NOT NULL
  UNION SELECT date, endpoint_id FROM r0 WHERE endpoint_id IS NOT NULL
),
ep_span AS (SELECT endpoint_id, count(*) AS days, min(date) AS first_day, max(date) AS last_day FROM eps
            GROUP BY endpoint_id),
keys AS ({" UNION ALL ".join(keys)}),
g AS (
  SELECT {by},
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
b0 AS ({src["fal_billing"]}),
reconciled AS (SELECT DISTINCT date FROM b0),
b AS (
  -- fal's own billing records win over the result's billable units on every day reconciled (`fal_billing`)
  SELECT {by},
    sum(billed_cost_usd) FILTER (WHERE known_to_ledger AND backend = 'fal') AS billed_usd,
    count(*) FILTER (WHERE known_to_ledger AND backend = 'fal' AND billed_cost_usd IS NULL) AS unbilled,
    sum(billed_cost_usd) FILTER (WHERE NOT known_to_ledger) AS unknown_usd
  FROM b0 GROUP BY GROUPING SETS ({sets})
),
g_unreconciled AS (
  -- the total rows: days without fal_billing rows count their generations' billable units
  SELECT CASE WHEN grouping(endpoint_id) = 1 THEN 'all' ELSE endpoint_id END AS ep,
    sum(billed_cost_usd) FILTER (WHERE backend = 'fal') AS billed_usd,
    count(*) FILTER (WHERE backend = 'fal' AND request_id IS NOT NULL AND billed_cost_usd IS NULL) AS unbilled
  FROM g0 WHERE date NOT IN (SELECT date FROM reconciled) GROUP BY GROUPING SETS ((endpoint_id), ())
),
v AS (
  SELECT {by},
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
  FROM ({src["video_metadata"]}) GROUP BY GROUPING SETS ({sets})
),
r AS (
  SELECT {by}, count(*) AS rejected,
    {_counts("coalesce(field, '?')", "true")} AS rejected_by_field
  FROM r0 GROUP BY GROUPING SETS ({sets})
),
span AS (SELECT count(DISTINCT date) AS days, min(date) AS first_day, max(date) AS last_day FROM days)
SELECT k.is_total, k.date AS day, k.endpoint_id,
  CASE WHEN NOT k.is_total THEN 1 WHEN k.src = 'all' THEN span.days ELSE es.days END AS days,
  CASE WHEN NOT k.is_total THEN k.date WHEN k.src = 'all' THEN span.first_day ELSE es.first_day END AS first_day,
  CASE WHEN NOT k.is_total THEN k.date WHEN k.src = 'all' THEN span.last_day ELSE es.last_day END AS last_day,
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
        WHEN rec.date IS NOT NULL THEN b.billed_usd ELSE g.g_billed_usd END, 4) AS billed_cost_usd,
  CAST(CASE WHEN k.is_total THEN coalesce(b.unbilled, 0) + coalesce(gu.unbilled, 0)
            WHEN rec.date IS NOT NULL THEN coalesce(b.unbilled, 0) ELSE coalesce(g.g_unbilled, 0) END AS BIGINT)
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
LEFT JOIN ep_span es ON k.is_total AND es.endpoint_id = k.src
LEFT JOIN g ON {on.format(t="g")}
LEFT JOIN v ON {on.format(t="v")}
LEFT JOIN r ON {on.format(t="r")}
LEFT JOIN b ON {on.format(t="b")}
LEFT JOIN reconciled rec ON NOT k.is_total AND rec.date = k.date
LEFT JOIN g_unreconciled gu ON k.is_total AND gu.ep = k.src
ORDER BY k.is_total, k.date, k.endpoint_id = 'all', k.endpoint_id
"""


def compute_stats(con: duckdb.DuckDBPyConnection, *, by_day: bool = True, total: bool = False,
                  day: str | None = None) -> list[dict]:
    """Run `stats_sql` on a connection that has the four source relations; rows as dicts."""
    without = frozenset(name for name in SOURCE_TABLES  # e.g. rejected_items of a day written before the column
                        if "endpoint_id" not in {c.lower() for c in con.sql(f"SELECT * FROM {name} LIMIT 0").columns})
    rel = con.sql(stats_sql(by_day=by_day, total=total, day=day, without_endpoint=without))
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


def daily_stats_rows(day: str | date, generations: pa.Table | None, videos: pa.Table | None,
                     rejected: pa.Table | None, billing: pa.Table | None = None) -> list[dict]:
    """The `generation_daily_stats` rows of one day from that day's tables (None = the day was not written): one
    per endpoint, plus the day's `all` row when it used several or none (see `ENDPOINT_COLUMN`)."""
    import duckdb  # here: the table definitions above are read by every load of the code location

    day = day.isoformat() if isinstance(day, date) else str(day)
    con = duckdb.connect(config={"threads": 1})  # one day's rows: no parallel scan (a smaller peak RSS)
    try:
        for name, data in (("generations", generations), ("video_metadata", videos), ("rejected_items", rejected),
                           ("fal_billing", billing)):
            con.register(name, with_date(data, SOURCE_TABLES[name], day))
        rows = compute_stats(con, by_day=True, day=day)
    finally:
        con.close()
    return [{c.name: row[c.name] for c in DAILY_STATS.columns} for row in rows]


def daily_stats_row(day: str | date, generations: pa.Table | None, videos: pa.Table | None,
                    rejected: pa.Table | None, billing: pa.Table | None = None) -> dict:
    """The whole day's `generation_daily_stats` row (its `all` row, or its single endpoint's row)."""
    (row,) = totals(daily_stats_rows(day, generations, videos, rejected, billing))
    return row


def totals(rows: list[dict]) -> list[dict]:
    """The total row of each day (and of each scope, for summary rows), in order: its `all` row, or its only row
    when it used a single endpoint."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row.get("scope"), row["day"]), []).append(row)
    return [next((r for r in group if r.get("endpoint_id") == ALL_ENDPOINTS), group[0]) for group in groups.values()]


def summary_rows(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """The `generation_summary` rows (every day's, then the total's; each per endpoint as `ENDPOINT_COLUMN`
    says) from views over all days."""
    rows = []
    for r in compute_stats(con, by_day=True, total=True):
        rows.append({"scope": "all" if r["is_total"] else "day", **{c.name: r.get(c.name) for c in SUMMARY.columns
                                                                     if c.name != "scope"}})
    return rows
