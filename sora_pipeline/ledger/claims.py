"""Claiming a request: `decide` (ledger/rules.py) says what happens, `claim` makes it so in one transaction — the
row locked, a SUBMITTING row past its lease marked UNKNOWN, a SUBMIT's compare-and-swap to a new attempt and its
history row — so only one caller across threads, processes and runs gets SUBMIT for an attempt."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, Engine

from sora_pipeline.coordination.engine import BUDGET_LOCKS, read, serialize_on_postgres
from sora_pipeline.coordination.schema import attempts, aware, requests, utcnow

from .model import Decision, LedgerEntry, RequestNotPlanned, RequestState, ResubmitPolicy
from .writes import LostRace, Op
from .queries import spent_query
from .rows import CLAIM_CAS, ENTRY_BY_KEY_FOR_UPDATE, INSERT_ATTEMPT, entry_from_row
from .rules import decide, effective_state, needs_history

S = RequestState
_A = attempts.c
_R = requests.c
UNCONFIRMED_SUBMIT = (
    "the submit may have been sent but no request id was recorded (the submitter died or lost its claim); "
    "check fal's dashboard before resubmitting"
)


class LedgerClaims:
    """The claim side of `Ledger` (which provides `_engine`, `_run` and `_get`)."""

    _engine: Engine
    _run: Any
    _get: Any

    def renew_claims(self, request_keys: list[str], *, owner: str, now: datetime | None = None) -> int:
        """The submitter's heartbeat: `owner` still holds these SUBMITTING claims (it is sending them), so their
        lease starts again now. A claim whose owner stopped renewing (a crash) lapses after `submit_lease_seconds`
        and the next claim resolves it. Returns how many were renewed."""
        if not request_keys:
            return 0
        now = aware(now, "now") or utcnow()

        def op(conn: Connection) -> int:
            res = conn.execute(update(requests).where(_R.request_key.in_(request_keys), _R.owner == owner,
                                                      _R.state == S.SUBMITTING.value).values(claimed_at=now))
            return res.rowcount

        return self._run(op)

    def claim(
        self, request_key: str, *, owner: str, policy: ResubmitPolicy, now: datetime | None = None,
        day_budget: float | None = None, payload_sha256: str | None = None,
    ) -> tuple[Decision, LedgerEntry]:
        """Atomically decide what the caller does with this request; see `rules.decide` for the rules.

        With `day_budget`, a SUBMIT that would take the day's spend (every attempt of the request's day and backend
        that may have reached fal, `spent`) over it is SKIP_BUDGET instead — counted inside this transaction,
        serialized with every other budgeted claim of the day, so parallel runs never overshoot it together.
        `payload_sha256` (of what will be sent, secrets left out) is kept on a SUBMIT's attempt, so a submit whose
        answer is lost can be found in fal's request history later."""
        return self._run(self._op_claim(request_key, owner=owner, policy=policy, now=now, day_budget=day_budget,
                                        payload_sha256=payload_sha256))

    def decide(self, entry: LedgerEntry | None, policy: ResubmitPolicy, *, owner: str,
               now: datetime | None = None) -> Decision:
        """What `claim` would decide for `entry` (as read earlier) now, without writing anything: `rules.decide`
        with the latest completed attempt read from the history when the cap matters. A dry run's exact answer."""
        now = aware(now, "now") or utcnow()
        last = 0
        if needs_history(entry, policy, owner=owner, now=now):
            with read(self._engine) as conn:
                last = self._last_completed(conn, entry.request_key)
        return decide(entry, policy, owner=owner, now=now, last_completed_attempt=last)

    def _op_claim(self, key: str, *, owner: str, policy: ResubmitPolicy, now: datetime | None = None,
                  day_budget: float | None = None, payload_sha256: str | None = None) -> Op:
        if not owner:
            raise ValueError("owner must be a non-empty run/worker id")
        now = aware(now, "now") or utcnow()

        def op(conn: Connection) -> tuple[Decision, LedgerEntry]:
            decision = self._claim_in(conn, key, owner, policy, now, day_budget, payload_sha256)
            entry = self._get(conn, key)
            assert entry is not None
            return decision, entry

        op.claimed_key = key  # type: ignore[attr-defined]  # a claim that lost a race decides again
        return op

    def _claim_in(self, conn: Connection, key: str, owner: str, policy: ResubmitPolicy, now: datetime,
                  day_budget: float | None = None, payload_sha256: str | None = None) -> Decision:
        """Lock the row, `decide`, then perform the decision's writes."""
        row = conn.execute(ENTRY_BY_KEY_FOR_UPDATE, {"b_key": key}).first()
        if row is None:
            raise RequestNotPlanned(f"request {key} was never planned")
        e = entry_from_row(row)
        state = effective_state(e, policy, owner=owner, now=now)
        if state is not e.state:  # SUBMITTING, lease not held: nobody can still be sending it
            self._expire_submitting(conn, e, now)
        last = self._last_completed(conn, key) if needs_history(e, policy, owner=owner, now=now) else 0
        decision = decide(e, policy, owner=owner, now=now, last_completed_attempt=last)
        if decision is Decision.SUBMIT and day_budget is not None and self._over_budget(conn, e, day_budget):
            return Decision.SKIP_BUDGET
        if decision is Decision.SUBMIT:
            self._submit(conn, e, state, owner, now, payload_sha256)
        return decision

    def _expire_submitting(self, conn: Connection, e: LedgerEntry, now: datetime) -> None:
        """SUBMITTING -> UNKNOWN, on the request row and the attempt's history row."""
        key, n = e.request_key, e.attempt
        self._cas(conn, key, S.SUBMITTING, n, S.UNKNOWN, now)
        conn.execute(
            update(attempts).where(_A.request_key == key, _A.attempt == n, _A.state == S.SUBMITTING.value)
            .values(state=S.UNKNOWN.value, error_type="unconfirmed_submit", error_message=UNCONFIRMED_SUBMIT,
                    updated_at=now)
        )

    @staticmethod
    def _cas(conn: Connection, key: str, expect_state: RequestState, expect_attempt: int, new: RequestState,
             now: datetime, **values: Any) -> None:
        res = conn.execute(
            update(requests)
            .where(_R.request_key == key, _R.state == expect_state.value, _R.attempt == expect_attempt)
            .values(state=new.value, updated_at=now, **values)
        )
        if res.rowcount != 1:
            raise LostRace()

    @staticmethod
    def _submit(conn: Connection, e: LedgerEntry, state: RequestState, owner: str, now: datetime,
                payload_sha256: str | None = None) -> None:
        """Compare-and-swap the row from (`state`, attempt n) to SUBMITTING attempt n+1, and insert its history row."""
        new = e.attempt + 1
        res = conn.execute(CLAIM_CAS, {"b_key": e.request_key, "b_state": state.value, "b_attempt": e.attempt,
                                        "b_new": new, "b_owner": owner, "b_now": now})
        if res.rowcount != 1:
            raise LostRace()
        conn.execute(INSERT_ATTEMPT, dict(
            request_key=e.request_key, attempt=new, state=S.SUBMITTING.value, owner=owner,
            estimated_cost=e.estimated_cost, created_at=now, updated_at=now,
            artifacts_json={"payload_sha256": payload_sha256} if payload_sha256 else None,
        ))

    @staticmethod
    def _over_budget(conn: Connection, e: LedgerEntry, day_budget: float) -> bool:
        serialize_on_postgres(conn, BUDGET_LOCKS, f"{e.backend}:{e.day}")  # budgeted claims of a day, one at a time
        spent = float(conn.execute(spent_query(e.day, backend=e.backend)).scalar() or 0.0)
        return spent + e.estimated_cost > day_budget + 1e-9

    @staticmethod
    def _last_completed(conn: Connection, key: str) -> int:
        """Attempt number of the latest completed attempt (0 if none): the attempt cap counts from there."""
        q = select(func.max(_A.attempt)).where(_A.request_key == key, _A.state == S.COMPLETED.value)
        return conn.execute(q).scalar() or 0
