"""A webhook in the ledger: `record_webhook` writes the hint on its attempt (never an outcome), `wait_for_webhook`
is what the generation step awaits instead of polling fal."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sora_pipeline.fal.errors import RequestFailedError
from sora_pipeline.ledger import AttemptRef, Ledger, LedgerConflict, LedgerEntry, RequestState

TERMINAL_STATES = frozenset({RequestState.COMPLETED, RequestState.FAILED, RequestState.CANCELLED})


def find_attempt(ledger: Ledger, request_id: str) -> AttemptRef | None:
    """The ledger attempt that recorded fal request id `request_id`."""
    return ledger.find_by_request_id(request_id)


@dataclass(frozen=True)
class WebhookEvent:
    """A parsed webhook body (what it claims; nothing in it is trusted as an outcome)."""

    request_id: str
    status: str  # OK | ERROR
    payload: Any = None
    error: str | None = None
    gateway_request_id: str | None = None
    payload_error: str | None = None

    @classmethod
    def parse(cls, body: bytes) -> WebhookEvent:
        try:
            doc = json.loads(body)
        except ValueError:
            raise ValueError("body is not JSON") from None
        if not isinstance(doc, dict):
            raise ValueError("body is not a JSON object")
        rid, status = doc.get("request_id"), doc.get("status")
        if not isinstance(rid, str) or not rid or len(rid) > 200:
            raise ValueError("request_id is missing")
        if status not in ("OK", "ERROR"):
            raise ValueError(f"status must be OK or ERROR, not {str(status)[:40]!r}")
        return cls(request_id=rid, status=status, payload=doc.get("payload"), error=doc.get("error"),
                   gateway_request_id=doc.get("gateway_request_id"), payload_error=doc.get("payload_error"))


def record_webhook(ledger: Ledger, event: WebhookEvent, *, signed: bool = False) -> str:
    """Record a webhook as a hint on its attempt; returns what happened.

    `hint` (recorded: the waiting step now asks fal), `duplicate` (the same hint is already there), `ignored` (the
    attempt already has fal's own outcome), `stale` (the request id belongs to an attempt that is no longer
    current), `unmatched` (no attempt has this request id — yet). Never writes an outcome.
    """
    ref = find_attempt(ledger, event.request_id)
    if ref is None:
        return "unmatched"
    if not ref.current:
        return "stale"
    if ref.state in TERMINAL_STATES:
        return "ignored"
    entry = ledger.get(ref.request_key)
    hint = (entry.artifacts or {}).get("webhook") if entry is not None else None
    if isinstance(hint, dict) and hint.get("status") == event.status and bool(hint.get("signed")) == signed:
        return "duplicate"
    try:
        ledger.set_artifacts(ref.request_key, ref.attempt, {"webhook": {
            "status": event.status, "signed": signed, "received_at": datetime.now(UTC).isoformat()}})
    except LedgerConflict:
        return "stale"
    return "hint"


async def wait_for_webhook(ledger: Ledger, request_key: str, attempt: int, *, timeout: float,
                           poll_ledger_every: float = 1.0) -> LedgerEntry | None:
    """Wait until attempt `attempt` of `request_key` has an outcome or a webhook hint in the ledger.

    Returns the entry when the attempt is COMPLETED / FAILED / CANCELLED (written from fal's own answers), or when
    a webhook hint arrived (the entry is then still SUBMITTED, with `artifacts["webhook"]`: ask fal now). Returns
    None after `timeout` seconds, or when the attempt is no longer the current one: the caller falls back to
    polling fal. Each check is one primary-key read of the ledger (no call to fal).
    """
    deadline = time.monotonic() + max(0.0, timeout)
    interval = max(0.01, poll_ledger_every)
    while True:
        entry = await asyncio.to_thread(ledger.get, request_key)
        if entry is None or entry.attempt != attempt:
            return None
        if entry.state in TERMINAL_STATES or (entry.artifacts or {}).get("webhook"):
            return entry
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        await asyncio.sleep(min(interval, remaining))


async def completed_by_webhook(ledger: Ledger, request_key: str, attempt: int, *, timeout: float,
                               poll_ledger_every: float = 1.0) -> LedgerEntry | None:
    """Webhook mode, for a run waiting on a request: the completed entry once the receiver's confirmed outcome is in
    the ledger; None when no usable outcome came in time (the caller polls fal); a failed or cancelled outcome
    raises `RequestFailedError` as fal's own answer would."""
    entry = await wait_for_webhook(ledger, request_key, attempt, timeout=timeout, poll_ledger_every=poll_ledger_every)
    if entry is None or entry.state not in TERMINAL_STATES:
        return None
    if entry.state != RequestState.COMPLETED:
        raise RequestFailedError(entry.error_message or f"request {entry.state.value} (webhook)",
                                 request_id=entry.request_id, retryable=bool(entry.retryable),
                                 fal_error_type=entry.error_type)
    return entry

