"""`WarehouseResource`: where the catalog is read from, where tables and videos live.

Every table write holds the day's lease in the shared database (`warehouse:<table uri>:<day>`, a
`sora_pipeline.coordination.Leases` from its nested `LedgerDatabaseResource`), so writers of one day take turns
across processes and machines sharing the database (docs/object-stores.md)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import dagster as dg
import pyarrow as pa
from pydantic import Field

from sora_pipeline.defs.database_resource import LedgerDatabaseResource
from sora_pipeline.warehouse import tables
from sora_pipeline.warehouse.schemas import TableDef

WRITE_LEASE_S = 60.0  # a crashed writer's lease on its day runs out after this; held ones are renewed every 20 s
WRITE_WAIT_S = 900.0  # how long a writer waits for the day's lease before failing


def write_lease_name(table_uri: str, day: str) -> str:
    """`warehouse:<table uri>:<day>` (local paths made absolute; hashed if longer than the column's 255)."""
    uri = table_uri if "://" in table_uri else os.path.abspath(table_uri)
    name = f"warehouse:{uri}:{day}"
    return name if len(name) <= 255 else f"warehouse:sha256:{hashlib.sha256(uri.encode()).hexdigest()}:{day}"


class WarehouseResource(dg.ConfigurableResource):
    """Catalog and warehouse locations (local paths or any fsspec URI); the shared database its writers take turns
    in (`database`, the code location's `database` resource)."""

    catalog_uri: str = Field(default="data/catalog", description="catalog Parquet dataset (SORA_CATALOG_URI)")
    warehouse_uri: str = Field(default="data/warehouse", description="output root (SORA_WAREHOUSE_URI)")
    image_roots: list[str] = Field(default_factory=list, description="extra local image folders")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options")
    database: LedgerDatabaseResource = Field(description="the shared database holding each day's write lease "
                                             "(the `database` resource)")

    def table_uri(self, table: str) -> str:
        return tables.table_uri(self.warehouse_uri, table)

    def videos_uri(self, day: str) -> str:
        return tables.file_uri_for(self.warehouse_uri, "videos", f"date={day}")

    def write(self, table: TableDef, day: str, rows: list[dict] | pa.Table) -> str:
        """Replace day `day` of `table`, holding the day's write lease in the shared database meanwhile."""
        data = rows if isinstance(rows, pa.Table) else table.from_rows(rows)
        lease = self.database.leases().hold_lease(write_lease_name(self.table_uri(table.name), day),
                                                  lease_s=WRITE_LEASE_S, wait_s=WRITE_WAIT_S)
        return tables.write_day_partition(self.warehouse_uri, table.name, day, data,
                                          storage_options=self.storage_options or None, lock=lease)

    def read(self, table: str, day: str, columns: list[str] | None = None) -> pa.Table | None:
        return tables.read_day_partition(self.warehouse_uri, table, day,
                                         storage_options=self.storage_options or None, columns=columns)
