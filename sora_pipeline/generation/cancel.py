"""Cancelling the requests an interrupted run was waiting on, so that nobody pays for what nobody will collect —
and never so that an item is paid twice: only a confirmed cancellation is recorded as `cancelled`."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sora_pipeline.endpoints import EndpointProfile
from sora_pipeline.fal.client import FalQueueClient
from sora_pipeline.fal.protocol import QueueHandle
from sora_pipeline.ledger import Ledger

log = logging.getLogger("sora_pipeline.generation")
# only these cancel answers mean fal will not bill the request: anything else (ALREADY_COMPLETED, an unknown
# answer, no answer) leaves it SUBMITTED, and the next run resumes it and fetches its result
CONFIRMED_CANCEL = frozenset({"CANCELLATION_REQUESTED", "NOT_FOUND"})


def cancel_requests(pending: dict[str, tuple[int, QueueHandle, EndpointProfile]],
                    client_factory: Callable[[EndpointProfile], FalQueueClient],
                    ledger: Ledger, *, owner: str, timeout: float) -> Counter:
    """Ask fal to cancel each `request_key → (attempt, handle, endpoint)` at once (bounded by `timeout`), each
    through a client of its endpoint (`client_factory(profile)`); record the
    confirmed ones as cancelled, leave every other one SUBMITTED (resumable). Returns how many were `cancelled`
    (confirmed), `completed` (fal had finished them: the next run fetches the result) and `resumable` (no
    usable answer in time: the next run resumes them)."""
    deadline = time.monotonic() + timeout

    def cancel(key: str, attempt: int, handle: QueueHandle, profile: EndpointProfile) -> str:
        if time.monotonic() > deadline:
            return "resumable"
        try:
            with client_factory(profile) as client:
                answer = client.cancel(handle)
            if answer not in CONFIRMED_CANCEL:
                # e.g. ALREADY_COMPLETED: the result exists and is billed; it stays SUBMITTED so the next run
                # fetches it instead of paying for it again
                log.warning("cancel of %s answered %s: kept for the next run to fetch", handle.request_id, answer)
                return "completed" if answer == "ALREADY_COMPLETED" else "resumable"
            ledger.mark_cancelled(key, attempt, reason=f"run {owner} terminated; cancel answered {answer}")
            return "cancelled"
        except Exception as exc:  # no answer: it stays SUBMITTED (resumable); keep cancelling the others
            log.warning("could not cancel %s: %s", handle.request_id, exc)
            return "resumable"

    with ThreadPoolExecutor(max_workers=min(16, len(pending))) as pool:
        futures = [pool.submit(cancel, key, *held) for key, held in pending.items()]
    return Counter(f.result() for f in futures)


def interrupted_line(counts: Counter) -> str:
    """`run interrupted: 3 request(s) cancelled at fal (not billed), 1 completed anyway (fetched by the next run),
    0 without an answer (resumed by the next run)`"""
    return (f"run interrupted: {counts.get('cancelled', 0)} request(s) cancelled at fal (not billed), "
            f"{counts.get('completed', 0)} completed anyway (fetched by the next run), "
            f"{counts.get('resumable', 0)} without an answer (resumed by the next run)")
