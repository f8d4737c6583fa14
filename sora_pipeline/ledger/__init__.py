"""Durable request ledger: one row per request key, one history row per paid attempt.

The ledger sits between "decide to submit" and "submit" so that a video is never paid for twice and a paid result
is never lost. Flow: `plan()` the specs, `claim()` each key (only one caller across threads, processes and runs
gets `Decision.SUBMIT` for an attempt), persist the fal request id with `mark_submitted()` right after the submit
call returns, then `mark_completed()` / `mark_failed()` / `mark_cancelled()` / `mark_unknown()` and
`set_artifacts()`. Every `mark_*` is guarded by the attempt number: a stale worker never overwrites a newer
attempt (its facts land only on its own history row, and `LedgerConflict(recorded=True)` is raised).

Claim rules (`claim(key, owner=..., policy=...)`), stated once as the pure function `decide` (rules.py), which
`claim` calls before performing its writes and a dry run can call without any (`Ledger.decide`, `would_submit`):
  planned -> SUBMIT; completed -> REUSE, or SUBMIT when `policy.regenerate` and the completed attempt was made by
  another owner (so one run regenerates at most once); submitted -> RESUME; submitting by another owner within
  `submit_lease_seconds` -> BUSY; submitting past the lease or by the same owner -> marked UNKNOWN, then the
  unknown rule; unknown -> SKIP_UNKNOWN, or SUBMIT when `policy.resubmit_unknown` and under the cap;
  failed -> SUBMIT when retryable and under the cap, else SKIP_FAILED; cancelled -> SUBMIT under the cap, else
  SKIP_FAILED. The cap `max_attempts` counts attempts since the latest completed attempt (all attempts if none).
  With `day_budget`, a SUBMIT that would take the day's spend over it is SKIP_BUDGET (counted in the claim).

Modules: model (value types), rules (the claim rules), store (`Ledger`, composed of claims, transitions, queries
and writes), rows (statements), rescue (the local journal of unrecorded request ids), recovery (a day rebuilt from
the warehouse). The ledger is built on the shared database (`sora_pipeline.coordination`: engine, tables and
migrations, and beside the ledger the account's admission, the named leases and the upload cache).
"""

from .model import (
    AttemptRecord, AttemptRef, Decision, LedgerConflict, LedgerEntry, RequestNotPlanned, RequestSpec, RequestState,
    ResubmitPolicy, normalized_spec, request_key, simulator_key,
)
from .recovery import recover_day
from .rules import decide, would_submit
from .claims import UNCONFIRMED_SUBMIT
from .store import Ledger

__all__ = [
    "UNCONFIRMED_SUBMIT", "AttemptRecord", "AttemptRef", "Decision", "Ledger", "LedgerConflict", "LedgerEntry",
    "RequestNotPlanned", "RequestSpec", "RequestState", "ResubmitPolicy", "decide", "normalized_spec",
    "recover_day", "request_key", "simulator_key", "would_submit",
]
