"""Why a run stops before its items are done, in one line each: the ledger failed, or fal refused the key. Either
way nothing already at fal is cancelled (it is paid for): the next run resumes it."""

from __future__ import annotations

from sora_pipeline.fal.errors import AuthenticationError
from sora_pipeline.generation.group_commit import ledger_unavailable
from sora_pipeline.coordination import LedgerUnavailable
from sora_pipeline.ledger import Ledger


def ledger_stopped_the_run(ledger: Ledger, exc: BaseException, in_flight: int, rescued: list[str]) -> LedgerUnavailable:
    """One clear error for a ledger failure that stops a run: what failed, and where the paid requests are."""
    message = str(exc) if isinstance(exc, LedgerUnavailable) else str(ledger_unavailable(ledger, exc))
    message += (f". The run stops; {in_flight} request(s) in flight keep running at fal and the next run "
                "resumes them (nothing was cancelled)")
    if rescued:
        message += (f"; {len(rescued)} request id(s) the ledger could not record were saved to "
                    f"{ledger.rescue_journal.path} and are recorded by the next run: " + ", ".join(rescued))
    return LedgerUnavailable(message)


def key_stopped_the_run(exc: AuthenticationError, in_flight: int) -> AuthenticationError:
    """One line for a run stopped by fal refusing the key (401/403 before a request id): what to set."""
    return AuthenticationError(
        f"fal refused the key ({exc}); set FAL_KEY to a valid key and run the day again: the refused items were "
        f"not billed and stay resubmittable; {in_flight} request(s) in flight keep running at fal and the next "
        "run resumes them")
