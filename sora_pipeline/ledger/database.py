"""Tables, engine setup (SQLite WAL + BEGIN IMMEDIATE, pooled PostgreSQL) and ordered schema migrations."""

from __future__ import annotations

import os
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.util import find_spec
from typing import Any

from sqlalchemy import (
    JSON, Boolean, Column, DateTime, Engine, Float, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text,
    create_engine, event, func, inspect, select, text, update,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.types import TypeDecorator

from .file_identity import FileIdentity

SQLITE_BUSY_TIMEOUT_S = 60.0
_PG_LOCK_ID = 0x50_52_41_4C  # advisory lock taken while migrating


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive UTC; naive input is refused)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("ledger timestamps must be timezone-aware")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


metadata = MetaData()

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UTCDateTime, nullable=False),
)

requests = Table(
    "requests", metadata,
    Column("request_key", String(64), primary_key=True),
    Column("item_id", Text, nullable=False),
    Column("day", String(10), nullable=False, index=True),
    Column("endpoint_id", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("attempt", Integer, nullable=False, default=0),
    Column("spec_json", JSON(none_as_null=True), nullable=False),
    Column("estimated_cost", Float, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("owner", Text),
    Column("claimed_at", UTCDateTime),
    Column("backend", String(16), nullable=False, server_default="fal"),  # fal | simulator (schema 2)
)

attempts = Table(
    "attempts", metadata,
    Column("request_key", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("owner", Text),
    Column("estimated_cost", Float),
    Column("request_id", Text, index=True),
    Column("status_url", Text),
    Column("response_url", Text),
    Column("cancel_url", Text),
    Column("submitted_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
    Column("output_json", JSON(none_as_null=True)),
    Column("artifacts_json", JSON(none_as_null=True)),
    Column("error_type", Text),
    Column("error_message", Text),
    Column("retryable", Boolean),
    Column("seconds_generated", Float),
    Column("actual_cost", Float),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    Column("updated_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("request_key", "attempt", name="pk_attempts"),
)


def _migration_1(conn: Connection) -> None:
    """Initial schema: requests + attempts."""
    metadata.create_all(conn, tables=[requests, attempts], checkfirst=True)


admission = Table(
    "fal_admission", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # arrival order: grants go oldest first
    Column("account", String(32), nullable=False, index=True),  # the backend: fal | simulator
    Column("holder", Text, nullable=False),  # one process's admission broker
    Column("state", String(8), nullable=False),  # waiting | holding
    Column("lease_until", UTCDateTime, nullable=False),  # renewed by the holder; past it the row is dead
    Column("created_at", UTCDateTime, nullable=False),
)


def _simulated(status_url: str | None, output: Any) -> bool:
    """Whether an attempt was answered by a simulator or a test server: fal's queue and files are https only."""
    video = output.get("video") if isinstance(output, dict) else None
    video_url = video.get("url") if isinstance(video, dict) else None
    return any(isinstance(u, str) and u.startswith("http://") for u in (status_url, video_url))


def _migration_2(conn: Connection) -> None:
    """Requests carry their backend (`fal` or `simulator`), and it is part of a simulator request's key: rows of
    older ledgers answered by a simulator (plain-http queue or video URLs; fal is https only) are re-keyed, so a
    simulator video is never reused as a real one, nor its would-be cost counted against a real budget."""
    from .model import request_key

    if "backend" not in {c["name"] for c in inspect(conn).get_columns("requests")}:
        conn.execute(text("ALTER TABLE requests ADD COLUMN backend VARCHAR(16) NOT NULL DEFAULT 'fal'"))
    simulated = {row.request_key for row in conn.execute(select(attempts.c.request_key, attempts.c.status_url,
                                                                attempts.c.output_json))
                 if _simulated(row.status_url, row.output_json)}
    for key in sorted(simulated):
        row = conn.execute(select(requests.c.spec_json).where(requests.c.request_key == key)).first()
        if row is None or not isinstance(row.spec_json, dict):
            continue
        spec = dict(row.spec_json)
        fields = {k: spec[k] for k in ("item_id", "prompt", "resolution", "aspect_ratio", "duration",
                                       "image_sha256")}
        new_key = request_key(spec["endpoint_id"], **fields, backend="simulator")
        conn.execute(update(requests).where(requests.c.request_key == key).values(
            request_key=new_key, backend="simulator", spec_json=spec | {"backend": "simulator"}))
        conn.execute(update(attempts).where(attempts.c.request_key == key).values(request_key=new_key))


def _migration_3(conn: Connection) -> None:
    """The fal account's admission: leased places in flight, shared by every run, process and machine."""
    metadata.create_all(conn, tables=[admission], checkfirst=True)


uploads = Table(
    "fal_uploads", metadata,  # images uploaded to fal storage, remembered per content hash (schema 4)
    Column("content_sha256", String(64), primary_key=True),
    Column("storage_origin", Text, primary_key=True),  # where it was uploaded (fal's storage or a simulator)
    Column("file_url", Text, nullable=False),
    Column("size", Integer),
    Column("content_type", Text),
    Column("uploaded_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),  # re-upload after this
)

leases = Table(
    "named_leases", metadata,  # one holder at a time per name, e.g. a day's warehouse writer (schema 4)
    Column("name", String(255), primary_key=True),
    Column("holder", Text, nullable=False),
    Column("lease_until", UTCDateTime, nullable=False),
    Column("acquired_at", UTCDateTime, nullable=False),
)


def _migration_4(conn: Connection) -> None:
    """fal storage uploads per content hash, and named leases (serialized writers of one day on object stores)."""
    metadata.create_all(conn, tables=[uploads, leases], checkfirst=True)


# Append new migrations here; never edit an applied one. Each runs in the migrating transaction.
MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1, _migration_2, _migration_3, _migration_4]
LATEST_VERSION = len(MIGRATIONS)


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


ADMISSION_LOCKS = 0x534F_5241_0000_0000  # advisory lock key spaces: one account's grants,
BUDGET_LOCKS = 0x534F_5241_4200_0000  # one day's budgeted claims


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


def ensure_schema(engine: Engine) -> int:
    """Create/upgrade the schema under a lock, applying pending migrations in one transaction; returns the version."""
    with write(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
        metadata.create_all(conn, tables=[schema_version], checkfirst=True)
        current = conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
        if current > LATEST_VERSION:
            raise RuntimeError(f"ledger schema version {current} is newer than this code ({LATEST_VERSION})")
        for version in range(current + 1, LATEST_VERSION + 1):
            MIGRATIONS[version - 1](conn)
            conn.execute(schema_version.insert().values(version=version, applied_at=utcnow()))
        return LATEST_VERSION
