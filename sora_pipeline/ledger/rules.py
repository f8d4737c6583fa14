"""The claim rules as pure functions: what `Ledger.claim` decides for an entry, without touching a database.

`decide` is the one rule book. `Ledger.claim` locks the request row, calls `decide`, then performs its side
effects: a SUBMITTING entry whose lease is not held (`effective_state` says UNKNOWN) is marked UNKNOWN first, and a
SUBMIT moves the row to SUBMITTING under a new attempt number and inserts that attempt's history row.
`Ledger.decide` asks the same question of a live ledger without writing; `would_submit` is the coarse dry-run
answer for callers that know only the entry (no owner, clock or history).
"""

from __future__ import annotations

from datetime import datetime, timezone

from .model import Decision, LedgerEntry, RequestState, ResubmitPolicy

S = RequestState
#: states whose resubmission is bounded by `policy.max_attempts` (counted since the latest completed attempt)
CAPPED_STATES = frozenset({S.UNKNOWN, S.FAILED, S.CANCELLED})
_NO_OWNER = "\x00no-owner"  # an owner no attempt ever had: `would_submit` asks as another run would
_ANY_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)  # `would_submit` never asks about a lease


def lease_held(entry: LedgerEntry, policy: ResubmitPolicy, *, owner: str, now: datetime) -> bool:
    """Another owner claimed this SUBMITTING entry less than `submit_lease_seconds` ago: it may still be sending
    its submit. (The same owner finding its own SUBMITTING entry means it crashed mid-submit.)"""
    return (S(entry.state) is S.SUBMITTING and entry.owner != owner and entry.claimed_at is not None
            and (now - entry.claimed_at).total_seconds() < policy.submit_lease_seconds)


def effective_state(entry: LedgerEntry, policy: ResubmitPolicy, *, owner: str, now: datetime) -> RequestState:
    """The state the rules apply to: a SUBMITTING entry whose lease is not held counts as UNKNOWN (`claim` marks it
    so: the submit may have been sent without its request id being recorded)."""
    state = S(entry.state)
    if state is S.SUBMITTING and not lease_held(entry, policy, owner=owner, now=now):
        return S.UNKNOWN
    return state


def needs_history(entry: LedgerEntry | None, policy: ResubmitPolicy, *, owner: str, now: datetime) -> bool:
    """Whether `decide` reads `last_completed_attempt` for this entry (a store looks it up only then)."""
    return entry is not None and effective_state(entry, policy, owner=owner, now=now) in CAPPED_STATES


def decide(entry: LedgerEntry | None, policy: ResubmitPolicy, *, owner: str, now: datetime,
           last_completed_attempt: int) -> Decision:
    """What `Ledger.claim(key, owner=owner, policy=policy, now=now)` decides for `entry`.

    `entry` None (not in the ledger yet: planning inserts it PLANNED) and PLANNED -> SUBMIT. COMPLETED -> REUSE, or
    SUBMIT when `policy.regenerate` and the completed attempt was made by another owner (one run regenerates at
    most once). SUBMITTED -> RESUME. SUBMITTING by another owner within the lease -> BUSY; otherwise it counts as
    UNKNOWN. UNKNOWN -> SKIP_UNKNOWN, or SUBMIT when `policy.resubmit_unknown` and under the cap. FAILED -> SUBMIT
    when retryable and under the cap, else SKIP_FAILED. CANCELLED -> SUBMIT under the cap, else SKIP_FAILED.
    "Under the cap": `entry.attempt - last_completed_attempt < policy.max_attempts`, where
    `last_completed_attempt` is the number of the latest COMPLETED attempt in the history (0 if none); it is read
    only for UNKNOWN, FAILED and CANCELLED (see `needs_history`).
    """
    if entry is None:
        return Decision.SUBMIT
    state = effective_state(entry, policy, owner=owner, now=now)
    if state is S.SUBMITTING:
        return Decision.BUSY
    if state is S.PLANNED:
        return Decision.SUBMIT
    if state is S.COMPLETED:
        return Decision.SUBMIT if policy.regenerate and entry.attempt_owner != owner else Decision.REUSE
    if state is S.SUBMITTED:
        return Decision.RESUME
    under_cap = entry.attempt - last_completed_attempt < policy.max_attempts
    if state is S.UNKNOWN:
        return Decision.SUBMIT if policy.resubmit_unknown and under_cap else Decision.SKIP_UNKNOWN
    if state is S.FAILED:
        return Decision.SUBMIT if entry.retryable and under_cap else Decision.SKIP_FAILED
    if state is S.CANCELLED:
        return Decision.SUBMIT if under_cap else Decision.SKIP_FAILED
    raise AssertionError(f"unhandled state {state}")


def would_submit(entry: LedgerEntry | None, policy: ResubmitPolicy) -> bool:
    """Whether a claim by another run would submit this entry, from the entry alone (dry runs, budget estimates).

    The same rules as `decide`, asked as a new owner with no completed attempt in the history, except that
    SUBMITTING and SUBMITTED answer False (in flight: resumed or waited for, not paid again) and UNKNOWN answers
    `policy.resubmit_unknown` without the cap. Where it can differ from the real claim: COMPLETED with
    `regenerate` claimed by the run that completed it (REUSE), UNKNOWN at the cap (SKIP_UNKNOWN), a SUBMITTING
    entry past its lease or of the same owner with `resubmit_unknown` under the cap (SUBMIT), and FAILED or
    CANCELLED whose cap counts from a completed attempt (SUBMIT past `max_attempts` attempts in all).
    """
    if entry is None:
        return True
    state = S(entry.state)
    if state in (S.SUBMITTING, S.SUBMITTED):
        return False
    if state is S.UNKNOWN:
        return policy.resubmit_unknown
    return decide(entry, policy, owner=_NO_OWNER, now=_ANY_TIME, last_completed_attempt=0) is Decision.SUBMIT
