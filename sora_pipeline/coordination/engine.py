"""The database's engine: SQLite (a file, WAL, BEGIN IMMEDIATE for writes, its identity watched) or pooled PostgreSQL;
`write` / `read` transactions and per-name serialization on PostgreSQL (advisory locks)."""

from __future__ import annotations

import os
import sqlite3
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url

from .file_identity import FileIdentity

SQLITE_BUSY_TIMEOUT_S = 60.0
# key spaces of the PostgreSQL advisory locks, kept together so they never collide
MIGRATION_LOCK = 0x50_52_41_4C  # taken while migrating
ADMISSION_LOCKS = 0x534F_5241_0000_0000  # one account's grants (admission.py)
BUDGET_LOCKS = 0x534F_5241_4200_0000  # one day's budgeted claims (the ledger's claims)
LEASE_LOCKS = 0x534F_524C_0000_0000  # the named leases ("SORL", leases.py)


def make_engine(url: str, engine_kwargs: dict[str, Any] | None = None) -> Engine:
    """An engine whose `write()` transactions are serialized correctly on SQLite and pooled on PostgreSQL."""
    kwargs = dict(engine_kwargs or {})
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database in (None, "", ":memory:"):
            raise ValueError("the ledger needs a file-backed SQLite database (several connections share it)")
        u = u.set(database=os.path.abspath(u.database))  # the file whose identity is watched (see below)
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
        connect_args.setdefault("check_same_thread", False)
        engine = create_engine(u, connect_args=connect_args, **kwargs)
        _install_sqlite_hooks(engine)
    else:
        if u.get_backend_name() == "postgresql":
            u = _postgres_driver(u)
            connect_args = kwargs.setdefault("connect_args", {})
            connect_args.setdefault("connect_timeout", PG_CONNECT_TIMEOUT_S)  # a silent host: fail, do not hang
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("pool_size", 5)
        kwargs.setdefault("max_overflow", 10)
        engine = create_engine(u, **kwargs)
    return engine


#: PostgreSQL drivers the ledger is tested with, in the order a plain `postgresql://` URL picks them: psycopg2
#: first, as SQLAlchemy 2.0 and dagster-postgres do (one URL can serve Dagster's storage and the ledger)
_PG_DRIVERS = ("psycopg2", "psycopg")


def _postgres_driver(u: URL) -> URL:
    """`postgresql://` → `postgresql+<the first installed of psycopg2, psycopg 3>`; a clear error when the driver a
    URL needs is not installed."""
    shown = u.render_as_string(hide_password=True)
    if "+" in u.drivername:
        driver = u.get_driver_name()
        if driver in _PG_DRIVERS and find_spec(driver) is None:
            raise ImportError(f"ledger URL {shown} needs the {driver} module, which is not installed: "
                              "install sora_pipeline[postgres]")
        return u
    for driver in _PG_DRIVERS:
        if find_spec(driver) is not None:
            return u.set(drivername=f"{u.drivername}+{driver}")
    raise ImportError(f"ledger URL {shown} needs a PostgreSQL driver (psycopg2 or psycopg 3) and neither is "
                      "installed: install sora_pipeline[postgres]")


PG_CONNECT_TIMEOUT_S = 10


def _ensure_wal(cur: Any) -> None:
    """WAL mode, switched once per database file. Switching needs the file to itself, and SQLite may answer
    "database is locked" at once (without its busy handler) while other connections work: a connection that
    finds WAL already on does not switch, and a switch that meets a lock is retried for up to the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _install_sqlite_hooks(engine: Engine) -> None:
    watched = FileIdentity(engine.url.database)

    @event.listens_for(engine, "do_connect")
    def _before_connect(_dialect: Any, _record: Any, _cargs: Any, _cparams: Any) -> None:
        if watched.identity is not None and watched.current() is None:  # sqlite3 would create an empty file
            watched.fail("deleted")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        watched.check()  # a new connection must open the file the engine started with
        # take transaction control away from the sqlite3 module; SQLAlchemy's "begin" event emits BEGIN
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            _ensure_wal(cur)
            cur.execute("PRAGMA synchronous = FULL")  # a recorded request id must survive a power cut
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        watched.check(conn.connection.dbapi_connection)
        mode = "IMMEDIATE" if conn.get_execution_options().get("ledger_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def serialize_on_postgres(conn: Connection, space: int, name: str) -> None:
    """Inside a write transaction, one at a time per (`space`, `name`): a PostgreSQL transaction-level advisory
    lock. SQLite needs none: its write transactions (BEGIN IMMEDIATE) are serialized already."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": space | zlib.crc32(name.encode())})


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A write transaction: BEGIN IMMEDIATE on SQLite (takes the write lock up front), plain BEGIN elsewhere."""
    with engine.connect() as conn:
        conn.execution_options(ledger_write=True)
        with conn.begin():
            yield conn


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        with conn.begin():
            yield conn
