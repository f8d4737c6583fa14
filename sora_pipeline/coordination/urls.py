"""The database's URL: where it lives by default, what cannot work (checked when the code location loads) and a
database that does not answer (one line when it is opened). Never repeats a password."""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import NoSuchModuleError

from .engine import _PG_DRIVERS
from .errors import LedgerUnreachable


def url_problem(url: str) -> str | None:
    """Why `url` cannot be the ledger, said as what to do — not a URL, a database other than SQLite or PostgreSQL,
    a driver that is not installed, an in-memory SQLite, a SQLite file in a folder that does not exist — or None
    (whether the database answers is known only by connecting). The text never repeats the URL (its password)."""
    try:
        u = make_url(url)
    except Exception:  # noqa: BLE001 - SQLAlchemy's ArgumentError, or a ValueError from a bad port
        return ("not a database URL; write sqlite:////absolute/path/ledger.sqlite or "
                "postgresql://user:password@host:5432/dbname")
    backend = u.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        return (f"the ledger runs on SQLite or PostgreSQL, not {backend}; write sqlite:////path/ledger.sqlite or "
                "postgresql://user@host:5432/dbname (pip install 'sora_pipeline[postgres]')")
    if backend == "sqlite":
        if u.database in (None, "", ":memory:") or u.database.startswith("file:"):
            return "the ledger needs a SQLite file, e.g. sqlite:////absolute/path/ledger.sqlite"
        folder = os.path.dirname(os.path.abspath(u.database))
        if not os.path.isdir(folder):
            return (f"the folder {folder} does not exist; create it, or name a file in an existing folder (a typo "
                    "here would start an empty ledger that knows nothing of what was already paid for)")
        return None
    driver = u.get_driver_name() if "+" in u.drivername else None
    if driver is None or driver in _PG_DRIVERS:
        wanted = [driver] if driver else list(_PG_DRIVERS)
        if all(find_spec(d) is None for d in wanted):
            return (f"needs the {' or '.join(wanted)} module, which is not installed: "
                    "pip install 'sora_pipeline[postgres]' (or uv pip install -e '.[postgres]')")
        return None
    try:
        u.get_dialect().import_dbapi()
    except (ImportError, NoSuchModuleError) as exc:  # a driver not installed, or not a driver SQLAlchemy knows
        return (f"the {driver} driver cannot be loaded ({exc}); write postgresql:// (psycopg2: "
                "pip install 'sora_pipeline[postgres]')")
    return None


def unreachable(url: str, exc: BaseException) -> LedgerUnreachable:
    """A connection failure while opening the ledger as `LedgerUnreachable` (one line: URL, host, cause)."""
    u = make_url(url)
    cause = " ".join(str(getattr(exc, "orig", None) or exc).split()) or type(exc).__name__
    host = (f"{u.host or 'localhost'}:{u.port or 5432}" if u.get_backend_name() == "postgresql"
            else f"file {os.path.abspath(u.database or '')}")
    if len(cause) > 300:
        cause = cause[:300] + "…"
    return LedgerUnreachable(u.render_as_string(hide_password=True), host, cause)


def default_ledger_file(warehouse_uri: str | None, dagster_home: str | None) -> Path:
    """Where the ledger lives by default (an absolute path; nothing is created).

    A local warehouse (plain path or file:// URI) gets `<warehouse>/_ledger/ledger.sqlite`; otherwise (no
    warehouse, or not a local one) `<dagster_home>/sora_ledger.sqlite`; otherwise `./sora_ledger.sqlite`.
    `dagster_home` is taken as given (the settings' `DAGSTER_HOME`).
    """
    parts = urlsplit(warehouse_uri) if warehouse_uri else None
    if parts is not None and (parts.scheme == "file" or parts.scheme == "" or len(parts.scheme) == 1):
        local = unquote(parts.path) if parts.scheme == "file" else warehouse_uri
        return Path(local).expanduser().resolve() / "_ledger" / "ledger.sqlite"
    if dagster_home:
        return Path(dagster_home).expanduser().resolve() / "sora_ledger.sqlite"
    return Path.cwd() / "sora_ledger.sqlite"


def sqlite_file_url(path: str | Path) -> str:
    """The SQLAlchemy URL of the SQLite file `path`; creates its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


def default_ledger_url(warehouse_uri: str | None, dagster_home: str | None) -> str:
    """The URL of `default_ledger_file`; creates its folder."""
    return sqlite_file_url(default_ledger_file(warehouse_uri, dagster_home))
