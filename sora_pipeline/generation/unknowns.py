"""Submits whose answer was lost (`unknown`), resolved from fal's own request history instead of by a person.

fal has no idempotency key for queue submits, so the ledger keeps a fingerprint of what each attempt sends (the
payload's sha256, secrets left out: `payload_fingerprint`). At the start of a day's run, every `unknown` attempt
(and every submit claim whose submitter stopped renewing it) is looked up in fal's request history
(`GET /models/requests/by-endpoint?expand=payloads`, every page of the window around its claim):

- found: its request id is recorded (SUBMITTED) and the run resumes it — no second submit;
- provably absent: the history covers the whole window and the claim is older than `settle` (by then a request
  would have ended and be listed), so fal never accepted it: the attempt becomes FAILED and retryable, and the
  existing resubmit policy applies;
- not decidable (no key for the history, the API unavailable, too recent): it stays `unknown`, with the reason.

Each decision is written to the attempt's history row (its state and message)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sora_pipeline.endpoints import EndpointProfile
from sora_pipeline.fal.protocol import QueueHandle, QueueProtocol
from sora_pipeline.ledger import Ledger, LedgerEntry, RequestState, ResubmitPolicy
from sora_pipeline.ledger.claims import UNCONFIRMED_SUBMIT
from sora_pipeline.ledger.rules import lease_held

#: inputs never part of a fingerprint: secrets (an OpenAI key) are not ours to keep, even hashed
SECRET_INPUTS = frozenset({"api_key"})
WINDOW_SLACK = timedelta(minutes=5)  # clock skew between us and fal around the claim
DEFAULT_SETTLE = timedelta(hours=2)  # a request older than this has ended at fal (and is listed) if it exists


def payload_fingerprint(payload: dict[str, Any]) -> str:
    """sha256 of the payload as canonical JSON (sorted keys, no whitespace), secret inputs left out."""
    public = {k: v for k, v in payload.items() if k not in SECRET_INPUTS}
    return hashlib.sha256(json.dumps(public, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Resolution:
    """What became of one unknown attempt."""

    request_key: str
    item_id: str
    outcome: str  # found | absent | undecided
    request_id: str | None = None
    reason: str = ""


def handles_on(queue_base_url: str, profiles: Mapping[str, EndpointProfile]) -> Callable[[str, str], QueueHandle]:
    """`handle_for(endpoint_id, request_id)`: a found request's queue URLs on the configured origin."""
    def handle_for(endpoint_id: str, request_id: str) -> QueueHandle:
        protocol = QueueProtocol(base_url=queue_base_url, endpoint_id=endpoint_id, key=None,
                                 profile=profiles.get(endpoint_id))
        return protocol.handle_for(request_id)

    return handle_for


def resolve_day(ledger: Ledger, day: str, keys: set[str], *, owner: str, policy: ResubmitPolicy,
                history: Callable[..., Any] | None, handle_for: Callable[[str, str], Any], settle: timedelta,
                emit: Callable[[str], None]) -> list[Resolution]:
    """At the start of a day's run: submit claims of `keys` whose submitter stopped renewing them become unknown
    (as a claim would mark them), then every unknown one is resolved (`resolve_unknowns`); one line says how."""
    now = datetime.now(UTC)
    counts = ledger.counts_by_state(day)  # the usual day has nothing to resolve: no read of its entries then
    if not counts[RequestState.SUBMITTING.value] and not counts[RequestState.UNKNOWN.value]:
        return []
    entries = [e for e in ledger.entries_for_day(day) if e.request_key in keys]
    stale = [e for e in entries if e.state is RequestState.SUBMITTING
             and not lease_held(e, policy, owner=owner, now=now)]
    for e in stale:
        ledger.mark_unknown(e.request_key, e.attempt, error_message=UNCONFIRMED_SUBMIT)
    if not stale and not any(e.state is RequestState.UNKNOWN for e in entries):
        return []
    entries = [e for e in ledger.entries_for_day(day) if e.request_key in keys]
    results = resolve_unknowns(ledger, entries, history=history, handle_for=handle_for, now=now, settle=settle)
    outcomes = Counter(r.outcome for r in results)
    if results:
        emit(f"unknown submits of {day} checked against fal's request history: {outcomes['found']} found "
             f"(resumed), {outcomes['absent']} never reached fal (resubmittable), {outcomes['undecided']} still "
             "unknown")
    return results


def resolve_unknowns(ledger: Ledger, entries: Iterable[LedgerEntry], *, history: Callable[..., Any] | None,
                     handle_for: Callable[[str, str], Any], now: datetime | None = None,
                     settle: timedelta = DEFAULT_SETTLE) -> list[Resolution]:
    """Resolve every UNKNOWN entry among `entries` (see the module doc). `history(endpoint_id, start, end)`
    yields fal's request-history items with payloads (None: no way to ask); `handle_for(endpoint_id, request_id)`
    gives the queue URLs of a found request. Returns one `Resolution` per unknown entry."""
    now = now or datetime.now(UTC)
    unknown = [e for e in entries if e.state is RequestState.UNKNOWN and e.attempt > 0]
    if not unknown:
        return []
    results: list[Resolution] = []
    by_endpoint: dict[str, list[LedgerEntry]] = {}
    for e in unknown:
        by_endpoint.setdefault(e.endpoint_id, []).append(e)
    for endpoint_id, group in by_endpoint.items():
        claims = {e.request_key: _claimed(e) for e in group}
        if history is None:
            results += [_undecided(ledger, e, "no key for fal's request history; set FAL_KEY") for e in group]
            continue
        start = min(claims.values()) - WINDOW_SLACK
        try:
            items = list(history(endpoint_id, start, now + WINDOW_SLACK))
        except Exception as exc:  # the history could not be read completely: nothing is decided
            results += [_undecided(ledger, e, f"fal's request history could not be read ({exc})") for e in group]
            continue
        seen: dict[str, str] = {}
        for item in items:
            payload = item.get("json_input")
            if isinstance(payload, dict) and item.get("request_id"):
                seen.setdefault(payload_fingerprint(payload), str(item["request_id"]))
        for e in group:
            fingerprint = (e.artifacts or {}).get("payload_sha256")
            if not fingerprint:
                results.append(_undecided(ledger, e, "this attempt kept no payload fingerprint to look it up by"))
            elif fingerprint in seen:
                results.append(_found(ledger, e, seen[fingerprint], handle_for, start, now))
            elif now - claims[e.request_key] >= settle:
                results.append(_absent(ledger, e, start, now))
            else:
                results.append(_undecided(ledger, e, f"not in fal's request history yet; a request claimed "
                                                     f"{claims[e.request_key]:%H:%M:%S} UTC may still be running "
                                                     f"(decided after {settle})"))
    return results


def _claimed(e: LedgerEntry) -> datetime:
    return e.claimed_at or e.created_at or datetime.now(UTC)


def _window(start: datetime, end: datetime) -> str:
    return f"{start:%Y-%m-%d %H:%M:%S} → {end:%Y-%m-%d %H:%M:%S} UTC"


def _found(ledger: Ledger, e: LedgerEntry, request_id: str, handle_for, start, now) -> Resolution:
    handle = handle_for(e.endpoint_id, request_id)
    ledger.mark_submitted(e.request_key, e.attempt, request_id=request_id, status_url=handle.status_url,
                          response_url=handle.response_url, cancel_url=handle.cancel_url)
    return Resolution(e.request_key, e.item_id, "found", request_id,
                      f"found in fal's request history ({_window(start, now)}) as {request_id}: resumed, not resubmitted")


def _absent(ledger: Ledger, e: LedgerEntry, start, now) -> Resolution:
    reason = (f"fal's request history ({_window(start, now)}, every page) has no request with this payload: fal "
              "never accepted the submit, so it may be submitted again under the resubmit policy")
    ledger.mark_failed(e.request_key, e.attempt, error_type="not_at_fal", error_message=reason, retryable=True)
    return Resolution(e.request_key, e.item_id, "absent", None, reason)


def _undecided(ledger: Ledger, e: LedgerEntry, why: str) -> Resolution:
    reason = f"submit answer lost; still unknown: {why}"
    ledger.mark_unknown(e.request_key, e.attempt, error_message=reason)
    return Resolution(e.request_key, e.item_id, "undecided", None, reason)
