"""`WarehouseResource`: where the catalog is read from, where tables, videos and the request ledger live.

Every table write holds the day's lease in the ledger's database (`warehouse:<table uri>:<day>`, a
`sora_pipeline.coordination.Leases`), so writers of one day take turns across processes and machines sharing the
ledger (docs/object-stores.md)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pyarrow as pa
from pydantic import Field, PrivateAttr

from sora_pipeline.coordination import Database, Leases, default_ledger_url
from sora_pipeline.warehouse import tables
from sora_pipeline.defs.resources import open_database
from sora_pipeline.ledger import Ledger
from sora_pipeline.warehouse.schemas import TableDef


@dataclass(frozen=True)
class _Opened:
    """What this process opened at one ledger URL: one database (one engine, one pool) and what is built on it."""

    database: Database
    ledger: Ledger
    leases: Leases


_OPENED: dict[str, _Opened] = {}  # per URL and process
WRITE_LEASE_S = 60.0  # a crashed writer's lease on its day runs out after this; held ones are renewed every 20 s
WRITE_WAIT_S = 900.0  # how long a writer waits for the day's lease before failing


def write_lease_name(table_uri: str, day: str) -> str:
    """`warehouse:<table uri>:<day>` (local paths made absolute; hashed if longer than the column's 255)."""
    uri = table_uri if "://" in table_uri else os.path.abspath(table_uri)
    name = f"warehouse:{uri}:{day}"
    return name if len(name) <= 255 else f"warehouse:sha256:{hashlib.sha256(uri.encode()).hexdigest()}:{day}"


class WarehouseResource(dg.ConfigurableResource):
    """Catalog and warehouse locations (local paths or any fsspec URI) and the ledger's SQLAlchemy URL."""

    catalog_uri: str = Field(default="data/catalog", description="catalog Parquet dataset (SORA_CATALOG_URI)")
    warehouse_uri: str = Field(default="data/warehouse", description="output root (SORA_WAREHOUSE_URI)")
    ledger_url: str | None = Field(default=None, description="SQLAlchemy URL of the ledger (SORA_LEDGER_URL)")
    image_roots: list[str] = Field(default_factory=list, description="extra local image folders")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options")
    dagster_home: str | None = Field(default=None, description="DAGSTER_HOME: the ledger's folder when the "
                                     "warehouse is not local; a PostgreSQL ledger's rescue journal")

    _resolved_ledger_url: str | None = PrivateAttr(default=None)

    def resolved_ledger_url(self) -> str:
        if self._resolved_ledger_url is None:
            self._resolved_ledger_url = self.ledger_url or default_ledger_url(self.warehouse_uri, self.dagster_home)
        return self._resolved_ledger_url

    def _opened(self) -> _Opened:
        url = self.resolved_ledger_url()
        if url not in _OPENED:  # a database that does not answer: one line naming SORA_LEDGER_URL (dg.Failure)
            database = open_database(url, configured=bool(self.ledger_url))
            _OPENED[url] = _Opened(database, Ledger(database, rescue_dir=self.dagster_home), Leases(database))
        return _OPENED[url]

    def ledger(self) -> Ledger:
        return self._opened().ledger

    def leases(self) -> Leases:
        """The named leases in the ledger's database (the day's write lease of each table)."""
        return self._opened().leases

    def table_uri(self, table: str) -> str:
        return tables.table_uri(self.warehouse_uri, table)

    def videos_uri(self, day: str) -> str:
        return tables.file_uri_for(self.warehouse_uri, "videos", f"date={day}")

    def write(self, table: TableDef, day: str, rows: list[dict] | pa.Table) -> str:
        """Replace day `day` of `table`, holding the day's write lease in the ledger's database meanwhile."""
        data = rows if isinstance(rows, pa.Table) else table.from_rows(rows)
        lease = self.leases().hold_lease(write_lease_name(self.table_uri(table.name), day), lease_s=WRITE_LEASE_S,
                                         wait_s=WRITE_WAIT_S)
        return tables.write_day_partition(self.warehouse_uri, table.name, day, data,
                                          storage_options=self.storage_options or None, lock=lease)

    def read(self, table: str, day: str, columns: list[str] | None = None) -> pa.Table | None:
        return tables.read_day_partition(self.warehouse_uri, table, day,
                                         storage_options=self.storage_options or None, columns=columns)
