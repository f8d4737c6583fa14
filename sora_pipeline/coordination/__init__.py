"""The shared database (SQLite file or PostgreSQL) and the coordination it carries between runs, processes and
machines: one database, one engine per URL and process, one schema with one version.

Modules: engine (`make_engine`: SQLite WAL + BEGIN IMMEDIATE with its file watched by file_identity, pooled
PostgreSQL; `write`/`read` transactions, advisory lock key spaces), schema (every table and the ordered migrations),
database (`Database`: opens the engine and migrates), urls (`url_problem`, `default_ledger_file`,
`default_ledger_url`, `sqlite_file_url`), errors (`LedgerUnavailable` and its kinds), and what is built on a
`Database`: leases (`Leases`: one holder at a time per name, e.g. a day's warehouse writer), admission
(`Admission`: the fal account's places in flight), uploads (`UploadCache`: fal storage URLs per image hash). The
request ledger (`sora_pipeline.ledger`) is built on it too.
"""

from .admission import Admission
from .database import Database
from .errors import LedgerError, LedgerFileGone, LedgerUnavailable, LedgerUnreachable
from .leases import HeldLease, LeaseLost, Leases, LeaseTimeout
from .schema import LATEST_VERSION as SCHEMA_VERSION
from .uploads import UploadCache
from .urls import default_ledger_file, default_ledger_url, sqlite_file_url, url_problem

__all__ = [
    "SCHEMA_VERSION", "Admission", "Database", "HeldLease", "LeaseLost", "LeaseTimeout", "Leases", "LedgerError",
    "LedgerFileGone", "LedgerUnavailable", "LedgerUnreachable", "UploadCache", "default_ledger_file",
    "default_ledger_url", "sqlite_file_url", "url_problem",
]
