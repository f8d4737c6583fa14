"""`LedgerDatabaseResource`: the shared database (SQLite file or PostgreSQL) that carries the request ledger and the
coordination between runs, processes and machines — the named leases (a day's warehouse writer), the fal account's
admission and the upload cache (`sora_pipeline.coordination`, `sora_pipeline.ledger`).

Its URL is SORA_LEDGER_URL; unset, a SQLite file the code location places under the local warehouse (or
$DAGSTER_HOME). The database is opened once per URL and process, however many resources name it."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg
from pydantic import Field, PrivateAttr

from sora_pipeline.coordination import Database, Leases, LedgerUnreachable, default_ledger_file, sqlite_file_url
from sora_pipeline.ledger import Ledger, simulator_key


@dataclass(frozen=True)
class _Opened:
    """What this process opened at one URL: one database (one engine, one pool) and what is built on it."""

    database: Database
    ledger: Ledger
    leases: Leases


_OPENED: dict[str, _Opened] = {}  # per URL and process


def open_database(url: str, *, configured: bool) -> Database:
    """The shared database (ledger, leases, admission, uploads) at `url`; one that does not answer fails the step
    with one line (`dagster.Failure`: the run's failure message in the UI, the demo and the CLIs) naming
    SORA_LEDGER_URL, the host and the cause. Nothing is submitted before this succeeds."""
    try:
        return Database(url, simulator_key=simulator_key)
    except LedgerUnreachable as exc:
        where = f"SORA_LEDGER_URL={exc.url}" if configured else f"{exc.url} (SORA_LEDGER_URL unset: the default)"
        raise dg.Failure(description=f"the request ledger does not answer: {where}, {exc.host}: {exc.cause} — "
                                     "start that database or set SORA_LEDGER_URL to one that answers; nothing was "
                                     "submitted") from None


class LedgerDatabaseResource(dg.ConfigurableResource):
    """The shared database of the request ledger, the named leases, the fal account's admission and the upload
    cache. `generations` and `fal_billing` read and write the ledger through it; `WarehouseResource` holds its
    write leases in it."""

    url: str | None = Field(default=None, description="SQLAlchemy URL of the shared database: request ledger, "
                            "leases, admission, upload cache (SORA_LEDGER_URL); unset: the SQLite file "
                            "`default_file`")
    default_file: str | None = Field(default=None, description="the SQLite file while `url` is unset; the code "
                                     "location sets it from SORA_WAREHOUSE_URI and DAGSTER_HOME: "
                                     "<warehouse>/_ledger/ledger.sqlite for a local warehouse, else "
                                     "$DAGSTER_HOME/sora_ledger.sqlite, else ./sora_ledger.sqlite "
                                     "(unset: the last two)")
    dagster_home: str | None = Field(default=None, description="DAGSTER_HOME: a PostgreSQL ledger's rescue "
                                     "journal")

    _resolved_url: str | None = PrivateAttr(default=None)

    def resolved_url(self) -> str:
        """`url`, or the SQLite URL of the default file (its folder created)."""
        if self._resolved_url is None:
            self._resolved_url = self.url or sqlite_file_url(self.default_file
                                                             or default_ledger_file(None, self.dagster_home))
        return self._resolved_url

    def _opened(self) -> _Opened:
        url = self.resolved_url()
        if url not in _OPENED:  # a database that does not answer: one line naming SORA_LEDGER_URL (dg.Failure)
            database = open_database(url, configured=bool(self.url))
            _OPENED[url] = _Opened(database, Ledger(database, rescue_dir=self.dagster_home), Leases(database))
        return _OPENED[url]

    def ledger(self) -> Ledger:
        """The request ledger."""
        return self._opened().ledger

    def leases(self) -> Leases:
        """The named leases (the day's write lease of each warehouse table)."""
        return self._opened().leases
