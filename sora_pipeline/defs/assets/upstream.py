"""Reading a day's upstream table inside a step: a table the day never got is a failure that names the asset to
materialize first, never an empty day (a day written with 0 rows is read as 0 rows)."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa

from sora_pipeline.defs.warehouse_resource import WarehouseResource

# table → what writes it, for the message (the catalog's two tables come from one step)
WRITTEN_BY = {"catalog_items": "catalog_items and rejected_items (one step)",
              "rejected_items": "catalog_items and rejected_items (one step)",
              "generations": "generations and failed_generations (one step)",
              "failed_generations": "generations and failed_generations (one step)"}


def missing_upstream(table: str, day: str, where: str) -> str:
    """One line: the day's `table` does not exist, and what to materialize first."""
    return (f"{table} for {day} does not exist in the warehouse ({where}): materialize "
            f"{WRITTEN_BY.get(table, table)} for {day} first, or include it in the selection "
            f"(e.g. dagster asset materialize --select '*generation_daily_stats' --partition {day})")


def read_upstream(warehouse: WarehouseResource, table: str, day: str, columns: list[str] | None = None) -> pa.Table:
    """The day's rows of `table` (only `columns` when given); a `dg.Failure` (not retried) naming what to
    materialize if it was never written."""
    data = warehouse.read(table, day, columns)
    if data is None:
        raise dg.Failure(description=missing_upstream(table, day, warehouse.table_uri(table)), allow_retries=False)
    return data
