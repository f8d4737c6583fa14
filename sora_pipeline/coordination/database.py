"""`Database`: the shared database (a SQLite file or PostgreSQL) opened once per URL and process, its schema migrated.

The request ledger (`sora_pipeline.ledger.Ledger`), the fal account's admission (`Admission`), the named leases
(`Leases`) and the upload cache (`UploadCache`) are built on one `Database` and share its engine (its pool)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from .engine import make_engine
from .schema import SimulatorKey, ensure_schema
from .urls import unreachable

__all__ = ["Database"]


class Database:
    """The engine of the database at `url`, with its schema created or upgraded (`simulator_key`: see
    `schema._migration_2`). A database that does not answer raises `LedgerUnreachable` (one line)."""

    def __init__(self, url: str, *, engine_kwargs: dict[str, Any] | None = None,
                 simulator_key: SimulatorKey | None = None) -> None:
        self.engine: Engine = make_engine(url, engine_kwargs)
        if self.engine.dialect.name not in ("sqlite", "postgresql"):
            self.engine.dispose()
            raise ValueError(f"unsupported ledger database: {self.engine.dialect.name}")
        try:
            self.schema_version = ensure_schema(self.engine, simulator_key)
        except DBAPIError as exc:  # the database does not answer (or refuses us): one line, before anything runs
            self.engine.dispose()
            raise unreachable(url, exc) from None
        except BaseException:
            self.engine.dispose()
            raise

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r})"
