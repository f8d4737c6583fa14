"""Transitions of one attempt (`mark_*`, `set_artifacts`), each guarded by the attempt number: a stale worker's
facts land only on its own history row, and `LedgerConflict(recorded=True)` tells it so."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from sora_pipeline.coordination.schema import aware, utcnow
from sora_pipeline.redact import redact, redact_obj

from .model import LedgerConflict, RequestNotPlanned, RequestState
from .writes import AfterCommit, Op
from .rows import ARTIFACTS_FOR_UPDATE, ATTEMPT_FOR_UPDATE, REQUEST_FOR_UPDATE, UPDATE_ATTEMPT, UPDATE_REQUEST_STATE

S = RequestState


class LedgerTransitions:
    """The `mark_*` side of `Ledger` (which provides `_run`): `_op_*` builders and the methods that run them."""

    _run: Any

    @staticmethod
    def _transition(
        key: str, attempt: int, target: RequestState, allowed: set[RequestState], values: dict[str, Any],
        *, noop: Any = None,
    ) -> Op:
        """Move attempt `attempt` to `target` (its history row always; the request row only if still current)."""
        now = utcnow()

        def op(conn: Connection) -> None | AfterCommit:
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
                return AfterCommit(LedgerConflict(
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
    ) -> Op:
        if not request_id:
            raise ValueError("request_id must not be empty")
        return self._transition(
            request_key, attempt, S.SUBMITTED, {S.SUBMITTING, S.UNKNOWN},
            dict(request_id=request_id, status_url=status_url, response_url=response_url, cancel_url=cancel_url,
                 submitted_at=aware(submitted_at, "submitted_at") or utcnow(), error_type=None,
                 error_message=None),
            noop=lambda a: a.state == S.SUBMITTED.value and a.request_id == request_id,
        )

    def _op_mark_completed(
        self, request_key: str, attempt: int, *, output: dict[str, Any], completed_at: datetime | None = None,
        seconds_generated: float | None = None, actual_cost: float | None = None,
    ) -> Op:
        return self._transition(
            request_key, attempt, S.COMPLETED, {S.SUBMITTING, S.SUBMITTED, S.UNKNOWN, S.CANCELLED, S.FAILED},
            dict(output_json=redact_obj(dict(output)), completed_at=aware(completed_at, "completed_at") or utcnow(),
                 seconds_generated=seconds_generated, actual_cost=actual_cost, error_type=None, error_message=None,
                 retryable=None),
            noop=lambda a: a.state == S.COMPLETED.value,
        )

    def _op_mark_failed(
        self, request_key: str, attempt: int, *, error_type: str, error_message: str, retryable: bool,
    ) -> Op:
        return self._transition(
            request_key, attempt, S.FAILED, {S.SUBMITTING, S.SUBMITTED, S.UNKNOWN, S.FAILED},
            dict(error_type=redact(error_type), error_message=redact(error_message), retryable=bool(retryable)),
        )

    @staticmethod
    def _op_mark_refused(request_key: str, attempt: int, *, error_type: str, error_message: str) -> Op:
        """fal refused the submit before creating a request (401/403: the key): nothing was accepted or billed.
        The attempt is FAILED without a request id (so it is not counted as spent) and the request goes back to
        PLANNED, so the next run submits it whatever `max_attempts` says."""
        now = utcnow()

        def op(conn: Connection) -> None:
            where = {"b_key": request_key, "b_attempt": attempt}
            req = conn.execute(REQUEST_FOR_UPDATE, where).first()
            if req is None:
                raise RequestNotPlanned(f"request {request_key} was never planned")
            att = conn.execute(ATTEMPT_FOR_UPDATE, where).first()
            if att is None or S(att.state) is not S.SUBMITTING or att.request_id is not None:
                raise LedgerConflict(f"attempt {attempt} of request {request_key} is not a submit in progress")
            conn.execute(UPDATE_ATTEMPT, {**where, "state": S.FAILED.value, "updated_at": now,
                                          "error_type": redact(error_type), "retryable": True,
                                          "error_message": redact(error_message)})
            if req.attempt == attempt:
                conn.execute(UPDATE_REQUEST_STATE, {**where, "b_state": S.PLANNED.value, "b_now": now})

        return op

    def _op_mark_unknown(self, request_key: str, attempt: int, *, error_message: str) -> Op:
        return self._transition(
            request_key, attempt, S.UNKNOWN, {S.SUBMITTING, S.SUBMITTED, S.UNKNOWN},
            dict(error_type="unknown", error_message=redact(error_message)),
        )

    def _op_mark_cancelled(self, request_key: str, attempt: int, *, reason: str) -> Op:
        return self._transition(
            request_key, attempt, S.CANCELLED, {S.SUBMITTING, S.SUBMITTED, S.UNKNOWN, S.CANCELLED},
            dict(error_type="cancelled", error_message=redact(reason)),
        )

    @staticmethod
    def _op_set_artifacts(request_key: str, attempt: int, artifacts: dict[str, Any]) -> Op:
        def op(conn: Connection) -> None:
            where = {"b_key": request_key, "b_attempt": attempt}
            conn.execute(REQUEST_FOR_UPDATE, where).first()  # lock order: request row, then attempt row
            current = conn.execute(ARTIFACTS_FOR_UPDATE, where).first()
            if current is None:
                raise LedgerConflict(f"request {request_key} has no attempt {attempt}")
            merged = dict(current.artifacts_json or {}) | redact_obj(dict(artifacts))
            conn.execute(UPDATE_ATTEMPT, {**where, "artifacts_json": merged, "updated_at": utcnow()})

        return op

    def mark_submitted(self, request_key: str, attempt: int, **kwargs: Any) -> None:
        """Record the request id (SUBMITTING, or UNKNOWN after a lease expiry, -> SUBMITTED) in one transaction."""
        self._run(self._op_mark_submitted(request_key, attempt, **kwargs))

    def mark_completed(self, request_key: str, attempt: int, **kwargs: Any) -> None:
        """Record a paid result. Accepted from any non-completed state (a result must never be lost)."""
        self._run(self._op_mark_completed(request_key, attempt, **kwargs))

    def mark_failed(self, request_key: str, attempt: int, **kwargs: Any) -> None:
        self._run(self._op_mark_failed(request_key, attempt, **kwargs))

    def mark_refused(self, request_key: str, attempt: int, **kwargs: Any) -> None:
        """The submit was refused before fal created anything (see `_op_mark_refused`): back to PLANNED."""
        self._run(self._op_mark_refused(request_key, attempt, **kwargs))

    def mark_unknown(self, request_key: str, attempt: int, **kwargs: Any) -> None:
        self._run(self._op_mark_unknown(request_key, attempt, **kwargs))

    def mark_cancelled(self, request_key: str, attempt: int, **kwargs: Any) -> None:
        self._run(self._op_mark_cancelled(request_key, attempt, **kwargs))

    def set_artifacts(self, request_key: str, attempt: int, artifacts: dict[str, Any]) -> None:
        """Merge `artifacts` into the attempt's artifacts (archive uri, sha256, probe, size)."""
        self._run(self._op_set_artifacts(request_key, attempt, artifacts))
