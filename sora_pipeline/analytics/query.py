"""Query the warehouse with DuckDB: `connect()` opens an in-memory DuckDB with one view per output table.

    from sora_pipeline.analytics.query import connect
    con = connect()                      # SORA_WAREHOUSE_URI, default data/warehouse
    con.sql("SELECT date, count(*) FROM video_metadata GROUP BY date ORDER BY date").show()

Each day-partitioned table is a view over the files its days' manifests name (`read_parquet([...])`, see
`sora_pipeline.warehouse.tables`) read with `hive_partitioning=true` (so every view has a `date` column) and
`union_by_name=true` (older days written before a column was added read as null there). The file list is taken
when `connect()` runs: a connection is a snapshot of every day as it was then (each day whole), and stays
readable while replaced files are kept (`GC_GRACE_S`, 10 minutes); connect again to see newer days. DuckDB reads
the Parquet files directly, with filter and projection pushdown: nothing is loaded into pandas. Local paths and
`file://` URIs are read natively; any other fsspec URI (`memory://`, `s3://`, `gs://`, …) goes through the fsspec
filesystem registered in DuckDB (`storage_options` are passed to fsspec). Views are created only for tables that
have at least one day; the rollup `generation_summary` (not partitioned) is a view over its single file when it
exists.
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import duckdb
import fsspec
import pyarrow as pa

from sora_pipeline.warehouse.schemas import ALL_TABLES, TableDef
from sora_pipeline.analytics.stats import DAILY_STATS, SUMMARY, empty_source
from sora_pipeline.warehouse.tables import current_files, file_uri_for

__all__ = ["DAY_TABLES", "SUMMARY_FILE", "connect", "summary_uri", "warehouse_fs"]

# views `connect()` creates (when the table has data), in this order
DAY_TABLES: dict[str, TableDef] = {
    "video_metadata": ALL_TABLES["video_metadata"],
    "generations": ALL_TABLES["generations"],
    "failed_generations": ALL_TABLES["failed_generations"],
    "rejected_items": ALL_TABLES["rejected_items"],
    "catalog_items": ALL_TABLES["catalog_items"],
    "fal_billing": ALL_TABLES["fal_billing"],
    "generation_daily_stats": DAILY_STATS,
}
SUMMARY_FILE = "summary.parquet"
#: endpoints side by side over every day in the warehouse (filter `date` in the view's sources for a range: query
#: `endpoint_comparison_for(con, first, last)`): the view `connect()` creates as `endpoint_comparison`
ENDPOINT_COMPARISON_SQL = """
WITH g AS (SELECT * FROM generations WHERE date BETWEEN {first} AND {last}),
v AS (SELECT * FROM video_metadata WHERE date BETWEEN {first} AND {last}),
b AS (SELECT * FROM fal_billing WHERE date BETWEEN {first} AND {last} AND known_to_ledger),
per_endpoint AS (
  SELECT endpoint_id, any_value(backend) AS backend, count(*) AS items,
    count(*) FILTER (WHERE status = 'completed') AS videos,
    round(count(*) FILTER (WHERE status = 'completed') / count(*), 4) AS success_rate,
    count(*) FILTER (WHERE status = 'failed') AS failed,
    count(*) FILTER (WHERE status = 'failed' AND coalesce(error_type, '') LIKE '%content_policy%') AS content_policy,
    count(*) FILTER (WHERE coalesce(error_type, '') LIKE '%timeout%') AS timeouts,
    round(quantile_cont(epoch(completed_at - submitted_at), 0.5) FILTER (WHERE status = 'completed'), 3)
      AS latency_p50_s,
    round(quantile_cont(epoch(completed_at - submitted_at), 0.95) FILTER (WHERE status = 'completed'), 3)
      AS latency_p95_s,
    sum(seconds_generated) FILTER (WHERE status = 'completed') AS seconds_generated,
    sum(estimated_cost) FILTER (WHERE request_id IS NOT NULL) AS estimated_cost_usd
  FROM g GROUP BY endpoint_id
),
billed AS (  -- per video-second over the requests fal billed (days not reconciled yet do not dilute it)
  SELECT b.endpoint_id, sum(b.billed_cost_usd) AS billed_cost_usd,
    count(*) FILTER (WHERE b.billed_cost_usd IS NULL) AS unbilled,
    sum(g.seconds_generated) FILTER (WHERE b.billed_cost_usd IS NOT NULL AND g.status = 'completed') AS billed_seconds
  FROM b LEFT JOIN g ON g.request_id = b.request_id GROUP BY b.endpoint_id),
probed AS (
  SELECT endpoint_id, to_json(histogram(width || 'x' || height)) AS sizes, to_json(histogram(fps)) AS fps_mix
  FROM v GROUP BY endpoint_id
)
SELECT p.*, bl.billed_cost_usd, bl.unbilled AS unbilled_requests,
  round(p.estimated_cost_usd / nullif(p.seconds_generated, 0), 4) AS estimated_usd_per_video_second,
  round(bl.billed_cost_usd / nullif(bl.billed_seconds, 0), 4) AS billed_usd_per_video_second,
  pr.sizes AS probed_sizes, pr.fps_mix AS probed_fps
FROM per_endpoint p LEFT JOIN billed bl USING (endpoint_id) LEFT JOIN probed pr USING (endpoint_id)
ORDER BY p.endpoint_id
""".format(first="DATE '0001-01-01'", last="DATE '9999-12-31'")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
T = TypeVar("T")


def _default_warehouse() -> str:
    """`SORA_WAREHOUSE_URI`, default `data/warehouse` (as the code location reads it)."""
    return (os.environ.get("SORA_WAREHOUSE_URI") or "").strip() or "data/warehouse"


def _local_path(uri: str) -> str | None:
    """The local path of a plain path or a `file://` URI; None for any other scheme."""
    m = _SCHEME_RE.match(uri)
    if not m:
        return os.path.abspath(uri)
    if m.group(1).lower() in ("file", "local"):
        return os.path.abspath(uri[len(m.group(0)):] or "/")
    return None


def warehouse_fs(warehouse_uri: str, storage_options: dict | None = None):
    """(fsspec filesystem, path inside it) of the warehouse root."""
    return fsspec.core.url_to_fs(warehouse_uri, **(storage_options or {}))


def summary_uri(warehouse_uri: str) -> str:
    return file_uri_for(warehouse_uri, SUMMARY.name, SUMMARY_FILE)


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class _Warehouse:
    """Paths DuckDB reads and the existence checks, for a local folder or a registered fsspec filesystem."""

    def __init__(self, con: duckdb.DuckDBPyConnection, warehouse_uri: str, storage_options: dict | None):
        self.uri = warehouse_uri
        self.local = _local_path(warehouse_uri)
        if self.local is None:
            fs, _ = warehouse_fs(warehouse_uri, storage_options)
            protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
            if not con.filesystem_is_registered(protocols[0]):
                con.register_filesystem(fs)
            self.fs = fs
            self.base = warehouse_uri.rstrip("/")
        else:
            self.fs = None
            self.base = self.local
        self.storage_options = storage_options

    def path(self, *parts: str) -> str:
        return os.path.join(self.base, *parts) if self.local is not None else "/".join([self.base, *parts])

    def day_files(self, table: str) -> list[str]:
        """The current files of every day of `table`, as the days' manifests name them."""
        return [f for files in current_files(self.uri, table, self.storage_options).values() for f in files]

    def has_files(self, pattern: str) -> bool:
        if self.local is not None:
            return any(not os.path.basename(p).startswith((".", "_")) for p in glob.glob(pattern))
        try:
            return any(not p.rsplit("/", 1)[-1].startswith((".", "_")) for p in self.fs.glob(pattern))
        except FileNotFoundError:
            return False


def connect(warehouse_uri: str | None = None, *, storage_options: dict[str, Any] | None = None,
            empty_missing: bool = False, con: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with views `video_metadata`, `generations`, `failed_generations`,
    `rejected_items`, `catalog_items`, `generation_daily_stats` (every day, with a `date` column) and
    `generation_summary`, for the tables that exist under `warehouse_uri` (default: SORA_WAREHOUSE_URI or
    `data/warehouse`).

    With `empty_missing=True` a table that has no day yet becomes an empty view with its full schema (so queries
    over it return no rows instead of failing with "table does not exist").
    """
    warehouse_uri = warehouse_uri or _default_warehouse()
    con = con or duckdb.connect(":memory:")
    wh = _Warehouse(con, warehouse_uri, storage_options)
    for name, table in DAY_TABLES.items():
        files = wh.day_files(name)
        if files:
            listed = "[" + ", ".join(_sql_str(f) for f in files) + "]"
            source = (f"read_parquet({listed}, hive_partitioning = true, union_by_name = true, "
                      "hive_types = {'date': DATE})")
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {source}")
            have = {c.lower() for c in con.sql(f"SELECT * FROM {name} LIMIT 0").columns}
            missing = [f for f in table.arrow_schema if f.name.lower() not in have]
            if missing:  # days written before a column existed: the column reads as null
                empty = pa.schema(missing).empty_table()
                con.register(f"_missing_{name}", empty)
                con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT s.*, m.* FROM {source} s "
                            f"LEFT JOIN _missing_{name} m ON false")
        elif empty_missing:
            con.register(f"_empty_{name}", empty_source(table))
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM _empty_{name}")
    if {"generations", "video_metadata", "fal_billing"} <= set(views(con)):
        con.execute(f"CREATE OR REPLACE VIEW endpoint_comparison AS {ENDPOINT_COMPARISON_SQL}")
    summary = wh.path(SUMMARY.name, SUMMARY_FILE)
    if wh.has_files(summary):
        con.execute(f"CREATE OR REPLACE VIEW {SUMMARY.name} AS SELECT * FROM read_parquet({_sql_str(summary)})")
    return con


def endpoint_comparison_for(con: duckdb.DuckDBPyConnection, first: str, last: str) -> list[dict]:
    """`endpoint_comparison` over the days `first`…`last` (YYYY-MM-DD, inclusive), as dicts."""
    from datetime import date

    bounds = {"'0001-01-01'": f"'{date.fromisoformat(first).isoformat()}'",
              "'9999-12-31'": f"'{date.fromisoformat(last).isoformat()}'"}
    sql = ENDPOINT_COMPARISON_SQL
    for old, new in bounds.items():
        sql = sql.replace(old, new)
    rel = con.sql(sql)
    return [dict(zip(rel.columns, row)) for row in rel.fetchall()]


def views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Names of the views on a connection made by `connect()`."""
    return [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal "
                                      "ORDER BY view_name").fetchall()]


def retry_io(fn: Callable[[], T], attempts: int = 3) -> T:
    """Run `fn`, again if a file vanished under it (a day being replaced at that moment by another run)."""
    for attempt in range(attempts):
        try:
            return fn()
        except (duckdb.IOException, FileNotFoundError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")
