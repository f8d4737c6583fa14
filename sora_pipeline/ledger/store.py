"""`Ledger`: the durable record between "decide to submit" and "submit", safe across threads, processes and runs.

The class composes its sides: claims (claims.py, rules in rules.py), transitions of one attempt (transitions.py),
reads (queries.py) and the running of writes, alone or grouped (writes.py); here are setup, planning and the rescue
journal for request ids the database could not take. It is built on the shared database
(`sora_pipeline.coordination.Database`), which `Ledger.open` opens."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from sora_pipeline.coordination import Database
from sora_pipeline.coordination.engine import write
from sora_pipeline.coordination.schema import requests, utcnow

from .claims import LedgerClaims
from .model import LedgerConflict, RequestNotPlanned, RequestSpec, RequestState, simulator_key
from .writes import LedgerWrites
from .queries import LedgerQueries
from .rescue import RescueJournal
from .transitions import LedgerTransitions

__all__ = ["Ledger"]
log = logging.getLogger("sora_pipeline.ledger")
S = RequestState


def _default_rescue_path(engine: Engine, rescue_dir: str | None) -> str:
    """Next to a SQLite ledger file; else in `rescue_dir` (the settings' DAGSTER_HOME), or the working directory."""
    if engine.dialect.name == "sqlite" and engine.url.database:
        return f"{engine.url.database}.rescued.jsonl"
    return os.path.join(rescue_dir or os.getcwd(), "sora_ledger_rescued.jsonl")


class Ledger(LedgerClaims, LedgerTransitions, LedgerQueries, LedgerWrites):
    """Durable per-request state on SQLite (file) or PostgreSQL. Every method uses its own pooled connection.

    `rescue_path`: the rescue journal's file; by default next to a SQLite file, else in `rescue_dir` (or the
    working directory). `close()` closes the database."""

    def __init__(self, database: Database, *, rescue_path: str | None = None, rescue_dir: str | None = None) -> None:
        self.database = database
        self._engine = database.engine
        self.rescue_journal = RescueJournal(rescue_path or _default_rescue_path(self._engine, rescue_dir))

    @classmethod
    def open(cls, url: str, *, engine_kwargs: dict[str, Any] | None = None, rescue_path: str | None = None,
             rescue_dir: str | None = None) -> Ledger:
        """Open the database at `url` (created or migrated; schema 2 re-keys with the ledger's `simulator_key`)
        and the ledger on it."""
        database = Database(url, engine_kwargs=engine_kwargs, simulator_key=simulator_key)
        return cls(database, rescue_path=rescue_path, rescue_dir=rescue_dir)

    @property
    def schema_version(self) -> int:
        return self.database.schema_version

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def close(self) -> None:
        self.database.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({self._engine.url.render_as_string(hide_password=True)!r})"

    # ---------------------------------------------------------------- when the database fails
    def rescue(self, request_key: str, attempt: int, *, request_id: str, status_url: str | None = None,
               response_url: str | None = None, cancel_url: str | None = None,
               submitted_at: datetime | None = None) -> None:
        """Save a request id that `mark_submitted` could not record (the database failed) to the local rescue
        journal; `replay_rescued` records it once the database answers again."""
        self.rescue_journal.append(dict(request_key=request_key, attempt=attempt, request_id=request_id,
                                        status_url=status_url, response_url=response_url, cancel_url=cancel_url,
                                        submitted_at=(submitted_at or utcnow()).isoformat()))

    def replay_rescued(self) -> int:
        """Record the rescue journal's request ids (SUBMITTING/UNKNOWN → SUBMITTED): their requests are resumed,
        never submitted again. Returns how many were recorded."""
        def record(r: dict[str, Any]) -> None:
            try:
                self.mark_submitted(r["request_key"], int(r["attempt"]), request_id=r["request_id"],
                                    status_url=r.get("status_url"), response_url=r.get("response_url"),
                                    cancel_url=r.get("cancel_url"),
                                    submitted_at=datetime.fromisoformat(r["submitted_at"]))
            except (LedgerConflict, RequestNotPlanned) as exc:  # moved on meanwhile: nothing left to rescue
                log.warning("rescued request %s not recorded: %s", r.get("request_id"), exc)

        return self.rescue_journal.replay(record)

    # ---------------------------------------------------------------- planning
    def plan(self, specs: Iterable[RequestSpec]) -> None:
        """Insert PLANNED rows for keys not present yet (idempotent; concurrent callers safe)."""
        now = utcnow()
        rows: dict[str, dict[str, Any]] = {}
        for spec in specs:
            if spec.request_key not in rows:
                rows[spec.request_key] = dict(
                    request_key=spec.request_key, item_id=spec.item_id, day=spec.day, endpoint_id=spec.endpoint_id,
                    state=S.PLANNED.value, attempt=0, spec_json=spec.spec_json(),
                    estimated_cost=float(spec.estimated_cost), created_at=now, updated_at=now, owner=None,
                    claimed_at=None, backend=spec.backend,
                )
        if not rows:
            return
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        stmt = insert(requests).on_conflict_do_nothing(index_elements=["request_key"])
        with write(self._engine) as conn:
            conn.execute(stmt, list(rows.values()))  # executemany: compiled once, whatever the number of rows
