"""The ledger's reads: one entry, an attempt's history, a day's entries, what is in flight, counts and spend."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from sqlalchemy import Select, and_, func, not_, select
from sqlalchemy.engine import Connection, Engine

from sora_pipeline.coordination.engine import read
from sora_pipeline.coordination.schema import attempts, requests

from .model import AttemptRecord, AttemptRef, LedgerEntry, RequestState
from .writes import Op
from .rows import ENTRY_BY_KEY, ENTRY_SELECT, attempt_from_row, entry_from_row

S = RequestState
_A = attempts.c
_R = requests.c


class LedgerQueries:
    """The read side of `Ledger` (which provides `_engine`). Every read uses its own pooled connection."""

    _engine: Engine

    @staticmethod
    def _get(conn: Connection, key: str) -> LedgerEntry | None:
        row = conn.execute(ENTRY_BY_KEY, {"b_key": key}).first()
        return None if row is None else entry_from_row(row)

    @classmethod
    def _op_get(cls, request_key: str) -> Op:
        return lambda conn: cls._get(conn, request_key)

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

    def submitted_attempts(self, day: str) -> list[dict]:
        """Every attempt of the day's requests that fal gave a request id (whatever became of it: each one may be
        billed), with what the billing reconciliation needs; plain dicts, oldest first."""
        q = (select(_A.request_id, _A.request_key, _A.attempt, _A.state, _A.estimated_cost, _A.submitted_at,
                    _A.completed_at, _A.artifacts_json, _R.item_id, _R.endpoint_id, _R.backend)
             .select_from(attempts.join(requests, _R.request_key == _A.request_key))
             .where(_R.day == day, _A.request_id.is_not(None)).order_by(_A.submitted_at, _A.request_key))
        with read(self._engine) as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def known_request_ids(self, request_ids: list[str]) -> set[str]:
        """Which of `request_ids` any attempt of any day recorded (indexed lookups, in chunks)."""
        known: set[str] = set()
        with read(self._engine) as conn:
            for i in range(0, len(request_ids), 500):
                chunk = request_ids[i:i + 500]
                known.update(r for (r,) in conn.execute(select(_A.request_id).where(_A.request_id.in_(chunk))))
        return known

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
        failed attempt without a request id (the submit was refused) and a cancelled one (fal confirmed
        the cancel) are left out: SUBMITTING/UNKNOWN ones may have
        been billed and count. `backend="fal"` counts only money really spent at fal (not a simulator's would-be
        cost); None counts every backend.
        """
        with read(self._engine) as conn:
            return float(conn.execute(spent_query(day, by=by, backend=backend)).scalar() or 0.0)


def spent_query(day: str, *, by: str = "request_day", backend: str | None = None) -> Select:
    """The sum `LedgerQueries.spent` reads (also run inside a claim's transaction for the day budget)."""
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=timezone.utc)
    q = select(func.coalesce(func.sum(_A.estimated_cost), 0.0)).where(
        not_(and_(_A.state == S.FAILED.value, _A.request_id.is_(None))),
        _A.state != S.CANCELLED.value,  # fal confirmed the cancel (only a confirmed one is recorded)
    )
    if backend is not None:
        q = q.where(_A.request_key.in_(select(_R.request_key).where(_R.backend == backend)))
    if by == "request_day":
        q = q.select_from(attempts.join(requests, _R.request_key == _A.request_key)).where(_R.day == day)
    elif by == "claimed_utc":
        q = q.where(_A.created_at >= start, _A.created_at < start + timedelta(days=1))
    else:
        raise ValueError("by must be 'request_day' or 'claimed_utc'")
    return q
