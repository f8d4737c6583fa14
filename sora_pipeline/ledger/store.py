"""`Ledger`: the durable record between "decide to submit" and "submit", safe across threads, processes and runs."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, func, not_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from .model import (
    AttemptRef,
    AttemptRecord, Decision, LedgerConflict, LedgerEntry, RequestNotPlanned, RequestSpec, RequestState,
    ResubmitPolicy,
)
from .rows import (
    ARTIFACTS_FOR_UPDATE, ATTEMPT_FOR_UPDATE, CLAIM_CAS, ENTRY_BY_KEY, ENTRY_BY_KEY_FOR_UPDATE, ENTRY_SELECT,
    INSERT_ATTEMPT, REQUEST_FOR_UPDATE, UPDATE_ATTEMPT, UPDATE_REQUEST_STATE, attempt_from_row, entry_from_row,
)
from sora_pipeline.redact import redact, redact_obj

from .rescue import RescueJournal

from .schema import attempts, ensure_schema, make_engine, read, requests, utcnow, write

log = logging.getLogger("sora_pipeline.ledger")
S = RequestState
_A = attempts.c
_R = requests.c
UNCONFIRMED_SUBMIT = (
    "the submit may have been sent but no request id was recorded (the submitter died or lost its claim); "
    "check fal's dashboard before resubmitting"
)


class _LostRace(Exception):
    """A compare-and-swap update matched no row: roll back and decide again."""


class _AfterCommit:
    """An error a write raises only once its transaction has committed (a stale attempt's recorded history)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


_Op = Callable[[Connection], Any]  # one write, run inside a transaction
_BATCHABLE = frozenset({"claim", "mark_submitted", "mark_completed", "mark_failed", "mark_unknown",
                        "mark_cancelled", "set_artifacts", "get"})


def _default_rescue_path(engine: Engine) -> str:
    """Next to a SQLite ledger file; else under $DAGSTER_HOME (or the working directory)."""
    if engine.dialect.name == "sqlite" and engine.url.database:
        return f"{engine.url.database}.rescued.jsonl"
    return os.path.join(os.environ.get("DAGSTER_HOME") or os.getcwd(), "sora_ledger_rescued.jsonl")


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value


class Ledger:
    """Durable per-request state on SQLite (file) or PostgreSQL. Every method uses its own pooled connection."""

    def __init__(self, url: str, *, engine_kwargs: dict[str, Any] | None = None,
                 rescue_path: str | None = None) -> None:
        self._engine = make_engine(url, engine_kwargs)
        self.rescue_journal = RescueJournal(rescue_path or _default_rescue_path(self._engine))
        if self._engine.dialect.name not in ("sqlite", "postgresql"):
            self._engine.dispose()
            raise ValueError(f"unsupported ledger database: {self._engine.dialect.name}")
        try:
            self.schema_version = ensure_schema(self._engine)
        except BaseException:
            self._engine.dispose()
            raise

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Ledger:
        return cls(url, **kwargs)

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def close(self) -> None:
        self._engine.dispose()

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

    # ---------------------------------------------------------------- planning and claiming
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

    def claim(
        self, request_key: str, *, owner: str, policy: ResubmitPolicy, now: datetime | None = None,
    ) -> tuple[Decision, LedgerEntry]:
        """Atomically decide what the caller does with this request; see the module docs for the rules."""
        return self._run(self._op_claim(request_key, owner=owner, policy=policy, now=now))

    def _op_claim(self, key: str, *, owner: str, policy: ResubmitPolicy, now: datetime | None = None) -> _Op:
        if not owner:
            raise ValueError("owner must be a non-empty run/worker id")
        now = _aware(now, "now") or utcnow()

        def op(conn: Connection) -> tuple[Decision, LedgerEntry]:
            decision = self._decide(conn, key, owner, policy, now)
            entry = self._get(conn, key)
            assert entry is not None
            return decision, entry

        op.claimed_key = key  # type: ignore[attr-defined]  # a claim that lost a race decides again
        return op

    def _decide(self, conn: Connection, key: str, owner: str, policy: ResubmitPolicy, now: datetime) -> Decision:
        row = conn.execute(ENTRY_BY_KEY_FOR_UPDATE, {"b_key": key}).first()
        if row is None:
            raise RequestNotPlanned(f"request {key} was never planned")
        e = entry_from_row(row)
        state, n = e.state, e.attempt
        if state is S.SUBMITTING:
            lease_ok = e.claimed_at is not None and (now - e.claimed_at).total_seconds() < policy.submit_lease_seconds
            if e.owner != owner and lease_ok:
                return Decision.BUSY
            self._cas(conn, key, S.SUBMITTING, n, S.UNKNOWN, now)
            conn.execute(
                update(attempts).where(_A.request_key == key, _A.attempt == n, _A.state == S.SUBMITTING.value)
                .values(state=S.UNKNOWN.value, error_type="unconfirmed_submit", error_message=UNCONFIRMED_SUBMIT,
                        updated_at=now)
            )
            state = S.UNKNOWN
        if state is S.PLANNED:
            return self._submit(conn, e, state, owner, now)
        if state is S.COMPLETED:
            if policy.regenerate and e.attempt_owner != owner:
                return self._submit(conn, e, state, owner, now)
            return Decision.REUSE
        if state is S.SUBMITTED:
            return Decision.RESUME
        used = n - self._last_completed(conn, key)
        if state is S.UNKNOWN:
            if policy.resubmit_unknown and used < policy.max_attempts:
                return self._submit(conn, e, state, owner, now)
            return Decision.SKIP_UNKNOWN
        if state is S.FAILED:
            if e.retryable and used < policy.max_attempts:
                return self._submit(conn, e, state, owner, now)
            return Decision.SKIP_FAILED
        if state is S.CANCELLED:
            if used < policy.max_attempts:
                return self._submit(conn, e, state, owner, now)
            return Decision.SKIP_FAILED
        raise AssertionError(f"unhandled state {state}")

    @staticmethod
    def _cas(conn: Connection, key: str, expect_state: RequestState, expect_attempt: int, new: RequestState,
             now: datetime, **values: Any) -> None:
        res = conn.execute(
            update(requests)
            .where(_R.request_key == key, _R.state == expect_state.value, _R.attempt == expect_attempt)
            .values(state=new.value, updated_at=now, **values)
        )
        if res.rowcount != 1:
            raise _LostRace()

    def _submit(self, conn: Connection, e: LedgerEntry, state: RequestState, owner: str, now: datetime) -> Decision:
        new = e.attempt + 1
        res = conn.execute(CLAIM_CAS, {"b_key": e.request_key, "b_state": state.value, "b_attempt": e.attempt,
                                        "b_new": new, "b_owner": owner, "b_now": now})
        if res.rowcount != 1:
            raise _LostRace()
        conn.execute(INSERT_ATTEMPT, dict(
            request_key=e.request_key, attempt=new, state=S.SUBMITTING.value, owner=owner,
            estimated_cost=e.estimated_cost, created_at=now, updated_at=now,
        ))
        return Decision.SUBMIT

    @staticmethod
    def _last_completed(conn: Connection, key: str) -> int:
        """Attempt number of the latest completed attempt (0 if none): the attempt cap counts from there."""
        q = select(func.max(_A.attempt)).where(_A.request_key == key, _A.state == S.COMPLETED.value)
        return conn.execute(q).scalar() or 0

    # ---------------------------------------------------------------- transitions of one attempt
    @staticmethod
    def _transition(
        key: str, attempt: int, target: RequestState, allowed: set[RequestState], values: dict[str, Any],
        *, noop: Any = None,
    ) -> _Op:
        """Move attempt `attempt` to `target` (its history row always; the request row only if still current)."""
        now = utcnow()

        def op(conn: Connection) -> None | _AfterCommit:
            where = {"b_key": key, "b_attempt": attempt}
            req = conn.execute(REQUEST_FOR_UPDATE, where).first()
            if req is None:
                raise RequestNotPlanned(f"request {key} was never planned")
            att = conn.execute(ATTEMPT_FOR_UPDATE, where).first()
            if att is None:
                raise LedgerConflict(f"request {key} has no attempt {attempt}")
            if noop is not None and noop(att):
                return None
            if S(att.state) not in allowed:
                raise LedgerConflict(
                    f"attempt {attempt} of request {key} is {att.state}; it cannot become {target.value}"
                )
            conn.execute(UPDATE_ATTEMPT, {**where, "state": target.value, "updated_at": now, **values})
            if req.attempt != attempt:
                return _AfterCommit(LedgerConflict(
                    f"attempt {attempt} of request {key} is stale (current attempt {req.attempt} is {req.state}); "
                    f"recorded as {target.value} in its history only",
                    recorded=True,
                ))
            conn.execute(UPDATE_REQUEST_STATE, {**where, "b_state": target.value, "b_now": now})
            return None

        return op

    def _op_mark_submitted(
        self, request_key: str, attempt: int, *, request_id: str, status_url: str | None,
        response_url: str | None, cancel_url: str | None, submitted_at: datetime | None = None,
    ) -> _Op:
        if not request_id:
            raise ValueError("request_id must not be empty")
        return self._transition(
            request_key, attempt, S.SUBMITTED, {S.SUBMITTING, S.UNKNOWN},
            dict(request_id=request_id, status_url=status_url, response_url=response_url, cancel_url=cancel_url,
                 submitted_at=_aware(submitted_at, "submitted_at") or utcnow(), error_type=None,
                 error_message=None),
            noop=lambda a: a.state == S.SUBMITTED.value and a.request_id == request_id,
        )

    def _op_mark_completed(
        self, request_key: str, attempt: int, *, output: dict[str, Any], completed_at: datetime | None = None,
        seconds_generated: float | None = None, actual_cost: float | None = None,
    ) -> _Op:
        return self._transition(
            request_key, attempt, S.COMPLETED, {S.SUBMITTING, S.SUBMITTED, S.UNKNOWN, S.CANCELLED, S.FAILED},
            dict(output_json=redact_obj(dict(output)), completed_at=_aware(completed_at, "completed_at") or utcnow(),
                 seconds_generated=seconds_generated, actual_cost=actual_cost, error_type=None, error_message=None,
                 retryable=None),
            noop=lambda a: a.state == S.COMPLETED.value,
        )

    def _op_mark_failed(
        self, request_key: str, attempt: int, *, error_type: str, error_message: str, retryable: bool,
    ) -> _Op:
        return self._transition(
            request_key, attempt, S.FAILED, {S.SUBMITTING, S.SUBMITTED, S.UNKNOWN, S.FAILED},
            dict(error_type=redact(error_type), error_message=redact(error_message), retryable=bool(retryable)),
        )

    def _op_mark_unknown(self, request_key: str, attempt: int, *, error_message: str) -> _Op:
        return self._transition(
            request_key, attempt, S.UNKNOWN, {S.SUBMITTING, S.SUBMITTED, S.UNKNOWN},
            dict(error_type="unknown", error_message=redact(error_message)),
        )

    def _op_mark_cancelled(self, request_key: str, attempt: int, *, reason: str) -> _Op:
        return self._transition(
            request_key, attempt, S.CANCELLED, {S.SUBMITTING, S.SUBMITTED, S.UNKNOWN, S.CANCELLED},
            dict(error_type="cancelled", error_message=redact(reason)),
        )

    @staticmethod
    def _op_set_artifacts(request_key: str, attempt: int, artifacts: dict[str, Any]) -> _Op:
        def op(conn: Connection) -> None:
            where = {"b_key": request_key, "b_attempt": attempt}
            conn.execute(REQUEST_FOR_UPDATE, where).first()  # lock order: request row, then attempt row
            current = conn.execute(ARTIFACTS_FOR_UPDATE, where).first()
            if current is None:
                raise LedgerConflict(f"request {request_key} has no attempt {attempt}")
            merged = dict(current.artifacts_json or {}) | redact_obj(dict(artifacts))
            conn.execute(UPDATE_ATTEMPT, {**where, "artifacts_json": merged, "updated_at": utcnow()})

        return op

    @classmethod
    def _op_get(cls, request_key: str) -> _Op:
        return lambda conn: cls._get(conn, request_key)

    def mark_submitted(self, request_key: str, attempt: int, **kwargs: Any) -> None:
        """Record the request id (SUBMITTING, or UNKNOWN after a lease expiry, -> SUBMITTED) in one transaction."""
        self._run(self._op_mark_submitted(request_key, attempt, **kwargs))

    def mark_completed(self, request_key: str, attempt: int, **kwargs: Any) -> None:
        """Record a paid result. Accepted from any non-completed state (a result must never be lost)."""
        self._run(self._op_mark_completed(request_key, attempt, **kwargs))

    def mark_failed(self, request_key: str, attempt: int, **kwargs: Any) -> None:
        self._run(self._op_mark_failed(request_key, attempt, **kwargs))

    def mark_unknown(self, request_key: str, attempt: int, **kwargs: Any) -> None:
        self._run(self._op_mark_unknown(request_key, attempt, **kwargs))

    def mark_cancelled(self, request_key: str, attempt: int, **kwargs: Any) -> None:
        self._run(self._op_mark_cancelled(request_key, attempt, **kwargs))

    def set_artifacts(self, request_key: str, attempt: int, artifacts: dict[str, Any]) -> None:
        """Merge `artifacts` into the attempt's artifacts (archive uri, sha256, probe, size)."""
        self._run(self._op_set_artifacts(request_key, attempt, artifacts))

    # ---------------------------------------------------------------- running writes, alone or grouped
    def _run(self, op: _Op) -> Any:
        """One write in its own transaction; a claim that lost a race decides again."""
        claimed_key = getattr(op, "claimed_key", None)
        for _ in range(10 if claimed_key else 1):
            try:
                with write(self._engine) as conn:
                    result = op(conn)
            except (_LostRace, IntegrityError):  # IntegrityError: the attempts PK caught a duplicate attempt
                if not claimed_key:
                    raise
                continue
            if isinstance(result, _AfterCommit):
                raise result.error
            return result
        raise LedgerConflict(f"could not claim request {claimed_key}: it kept changing under us")

    def run_batch(self, calls: Sequence[tuple[str, tuple, dict[str, Any]]]) -> list[Any]:
        """Group commit: run several writes (`(method name, args, kwargs)` of `claim`, `mark_*`, `set_artifacts`,
        `get`) in one transaction, so they share one commit (one fsync). Each result is what the method returns,
        or the exception it raises, as a value. If anything fails inside, the transaction is rolled back and each
        write runs alone (a claim's lost race, a stale attempt or a deadlock must not spoil the others)."""
        results: list[Any] = [None] * len(calls)
        ops: list[tuple[int, _Op]] = []
        for i, (name, args, kwargs) in enumerate(calls):
            if name not in _BATCHABLE:
                raise ValueError(f"{name} cannot run in a batch")
            try:
                ops.append((i, getattr(self, f"_op_{name}")(*args, **kwargs)))
            except Exception as exc:
                results[i] = exc
        try:
            with write(self._engine) as conn:
                done = [(i, op(conn)) for i, op in ops]
        except Exception:
            for i, op in ops:
                try:
                    results[i] = self._run(op)
                except Exception as exc:
                    results[i] = exc
            return results
        for i, result in done:
            results[i] = result.error if isinstance(result, _AfterCommit) else result
        return results

    # ---------------------------------------------------------------- queries
    @staticmethod
    def _get(conn: Connection, key: str) -> LedgerEntry | None:
        row = conn.execute(ENTRY_BY_KEY, {"b_key": key}).first()
        return None if row is None else entry_from_row(row)

    def get(self, request_key: str) -> LedgerEntry | None:
        with read(self._engine) as conn:
            return self._get(conn, request_key)

    def find_by_request_id(self, request_id: str) -> AttemptRef | None:
        """The attempt that recorded fal request id `request_id` (indexed lookup), or None."""
        a, r = attempts.c, requests.c
        q = (select(a.request_key, a.attempt, a.state, a.error_type, r.attempt.label("current_attempt"))
             .select_from(attempts.join(requests, r.request_key == a.request_key))
             .where(a.request_id == request_id).order_by(a.attempt.desc()).limit(1))
        with read(self._engine) as conn:
            row = conn.execute(q).first()
        if row is None:
            return None
        return AttemptRef(row.request_key, row.attempt, RequestState(row.state),
                          row.current_attempt == row.attempt, row.error_type)

    def history(self, request_key: str) -> list[AttemptRecord]:
        with read(self._engine) as conn:
            rows = conn.execute(select(attempts).where(_A.request_key == request_key).order_by(_A.attempt))
            return [attempt_from_row(r) for r in rows]

    def entries_for_day(self, day: str, endpoint_id: str | None = None) -> list[LedgerEntry]:
        q = ENTRY_SELECT.where(_R.day == day)
        if endpoint_id is not None:
            q = q.where(_R.endpoint_id == endpoint_id)
        with read(self._engine) as conn:
            return [entry_from_row(r) for r in conn.execute(q.order_by(_R.item_id, _R.request_key))]

    def in_flight(self, owner: str | None = None) -> list[LedgerEntry]:
        """SUBMITTED requests (those with a request id to poll or cancel), optionally only the given owner's."""
        q = ENTRY_SELECT.where(_R.state == S.SUBMITTED.value)
        if owner is not None:
            q = q.where(_R.owner == owner)
        with read(self._engine) as conn:
            return [entry_from_row(r) for r in conn.execute(q.order_by(_R.claimed_at, _R.request_key))]

    def counts_by_state(self, day: str | None = None) -> dict[str, int]:
        q = select(_R.state, func.count()).group_by(_R.state)
        if day is not None:
            q = q.where(_R.day == day)
        counts = {s.value: 0 for s in S}
        with read(self._engine) as conn:
            counts.update({state: int(n) for state, n in conn.execute(q)})
        return counts

    def spent(self, day: str, *, by: str = "request_day", backend: str | None = None) -> float:
        """Estimated cost of the attempts that may have reached fal, for a per-day budget cap.

        `by="request_day"` (default) counts attempts of requests planned for `day` (the pipeline's partition day);
        `by="claimed_utc"` counts attempts claimed on UTC calendar date `day`, whatever their request's day. Only a
        failed attempt without a request id (the submit was refused) is left out: SUBMITTING/UNKNOWN ones may have
        been billed and count. `backend="fal"` counts only money really spent at fal (not a simulator's would-be
        cost); None counts every backend.
        """
        start = datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=timezone.utc)
        q = select(func.coalesce(func.sum(_A.estimated_cost), 0.0)).where(
            not_(and_(_A.state == S.FAILED.value, _A.request_id.is_(None)))
        )
        if backend is not None:
            q = q.where(_A.request_key.in_(select(_R.request_key).where(_R.backend == backend)))
        if by == "request_day":
            q = q.select_from(attempts.join(requests, _R.request_key == _A.request_key)).where(_R.day == day)
        elif by == "claimed_utc":
            q = q.where(_A.created_at >= start, _A.created_at < start + timedelta(days=1))
        else:
            raise ValueError("by must be 'request_day' or 'claimed_utc'")
        with read(self._engine) as conn:
            return float(conn.execute(q).scalar() or 0.0)
