"""The shared database's tables and their ordered migrations (`ensure_schema`), with the UTC timestamps they hold.

One schema, one version number (`schema_version`) for every table: the request ledger's `requests` and `attempts`,
the fal account's `fal_admission`, the `fal_uploads` cache and the `named_leases`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from typing import Any

from sqlalchemy import (
    JSON, Boolean, Column, DateTime, Engine, Float, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text,
    func, inspect, select, text, update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeDecorator

from .engine import MIGRATION_LOCK, write

#: the request key of a simulator request from its stored spec (the ledger's `simulator_key`)
SimulatorKey = Callable[[dict[str, Any]], str]


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


def aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value


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


def _migration_2(conn: Connection, simulator_key: SimulatorKey | None) -> None:
    """Requests carry their backend (`fal` or `simulator`), and it is part of a simulator request's key: rows of
    older ledgers answered by a simulator (plain-http queue or video URLs; fal is https only) are re-keyed, so a
    simulator video is never reused as a real one, nor its would-be cost counted against a real budget. The new
    keys come from `simulator_key` (the ledger's key rule); a database opened without it that has rows to re-key
    is refused, and nothing of the migration is applied."""
    if "backend" not in {c["name"] for c in inspect(conn).get_columns("requests")}:
        conn.execute(text("ALTER TABLE requests ADD COLUMN backend VARCHAR(16) NOT NULL DEFAULT 'fal'"))
    simulated = {row.request_key for row in conn.execute(select(attempts.c.request_key, attempts.c.status_url,
                                                                attempts.c.output_json))
                 if _simulated(row.status_url, row.output_json)}
    for key in sorted(simulated):
        row = conn.execute(select(requests.c.spec_json).where(requests.c.request_key == key)).first()
        if row is None or not isinstance(row.spec_json, dict):
            continue
        if simulator_key is None:
            raise RuntimeError("this ledger database holds simulator requests of schema 1 to re-key: open it with "
                               "the request ledger (sora_pipeline.ledger.Ledger.open) once")
        spec = dict(row.spec_json)
        new_key = simulator_key(spec)
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


def migrations(simulator_key: SimulatorKey | None) -> list[Callable[[Connection], None]]:
    """Append new migrations here; never edit an applied one. Each runs in the migrating transaction."""
    return [_migration_1, partial(_migration_2, simulator_key=simulator_key), _migration_3, _migration_4]


LATEST_VERSION = len(migrations(None))


def ensure_schema(engine: Engine, simulator_key: SimulatorKey | None = None) -> int:
    """Create/upgrade the schema under a lock, applying pending migrations in one transaction; returns the version."""
    steps = migrations(simulator_key)
    with write(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        metadata.create_all(conn, tables=[schema_version], checkfirst=True)
        current = conn.execute(select(func.max(schema_version.c.version))).scalar() or 0
        if current > LATEST_VERSION:
            raise RuntimeError(f"ledger schema version {current} is newer than this code ({LATEST_VERSION})")
        for version in range(current + 1, LATEST_VERSION + 1):
            steps[version - 1](conn)
            conn.execute(schema_version.insert().values(version=version, applied_at=utcnow()))
        return LATEST_VERSION

