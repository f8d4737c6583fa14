"""The pure claim rules (`sora_pipeline.ledger.rules`) against what `Ledger.claim` really does on a SQLite ledger.

Every scenario builds one request state through the ledger's own API; then, for every policy (max_attempts 1-3,
resubmit_unknown, regenerate) × claiming owner (the last claimer or another run) × clock (inside or past the submit
lease), `decide(...)` and `Ledger.decide(...)` must name the decision `claim` then makes (and the rules `claim`
had before they moved), and `claim`'s writes must be the ones that decision implies. `would_submit` keeps the
answers of the runner's former `would_submit` for every state, and differs from the real claim only where its
docstring says so.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sora_pipeline.ledger import (
    UNCONFIRMED_SUBMIT, Decision, Ledger, LedgerEntry, RequestState, ResubmitPolicy, decide, would_submit,
)
from tests.test_ledger import spec

S, D = RequestState, Decision
T0 = datetime(2026, 1, 2, 12, 0, tzinfo=timezone.utc)  # when every SUBMITTING row of the scenarios was claimed
LEASE = 300.0
NOWS = {"in_lease": T0 + timedelta(seconds=10), "past_lease": T0 + timedelta(seconds=LEASE + 1)}
OWNERS = ("run-1", "run-2")  # run-1 makes every first attempt; run-2 every regeneration
POLICIES = [ResubmitPolicy(max_attempts=m, resubmit_unknown=u, regenerate=r, submit_lease_seconds=LEASE)
            for m in (1, 2, 3) for u in (False, True) for r in (False, True)]
OPEN = ResubmitPolicy(max_attempts=9, resubmit_unknown=True, regenerate=True)  # how the scenarios re-claim

# scenario -> (steps, the decisions the matrix must reach for it)
SCENARIOS: dict[str, tuple[list[str], set[Decision]]] = {
    "planned": ([], {D.SUBMIT}),
    "submitting": (["claim:run-1"], {D.BUSY, D.SKIP_UNKNOWN, D.SUBMIT}),
    "submitting_2": (["claim:run-1", "failed", "claim:run-1"], {D.BUSY, D.SKIP_UNKNOWN, D.SUBMIT}),
    "submitted": (["claim:run-1", "submitted"], {D.RESUME}),
    "completed": (["claim:run-1", "submitted", "completed"], {D.REUSE, D.SUBMIT}),
    "failed": (["claim:run-1", "submitted", "failed"], {D.SUBMIT, D.SKIP_FAILED}),
    "failed_2": (["claim:run-1", "failed", "claim:run-1", "failed"], {D.SUBMIT, D.SKIP_FAILED}),
    "failed_final": (["claim:run-1", "failed_final"], {D.SKIP_FAILED}),
    "cancelled": (["claim:run-1", "submitted", "cancelled"], {D.SUBMIT, D.SKIP_FAILED}),
    "cancelled_2": (["claim:run-1", "cancelled", "claim:run-1", "cancelled"], {D.SUBMIT, D.SKIP_FAILED}),
    "unknown": (["claim:run-1", "unknown"], {D.SUBMIT, D.SKIP_UNKNOWN}),
    "unknown_2": (["claim:run-1", "unknown", "claim:run-1", "unknown"], {D.SUBMIT, D.SKIP_UNKNOWN}),
    # after a completed attempt and a regeneration by run-2: the cap counts from the completed attempt
    "regen_submitting": (["claim:run-1", "completed", "claim:run-2"], {D.BUSY, D.SKIP_UNKNOWN, D.SUBMIT}),
    "regen_completed": (["claim:run-1", "completed", "claim:run-2", "completed"], {D.REUSE, D.SUBMIT}),
    "regen_failed": (["claim:run-1", "completed", "claim:run-2", "failed"], {D.SUBMIT, D.SKIP_FAILED}),
    "regen_failed_2": (["claim:run-1", "completed", "claim:run-2", "failed", "claim:run-2", "failed"],
                       {D.SUBMIT, D.SKIP_FAILED}),
    "regen_cancelled": (["claim:run-1", "completed", "claim:run-2", "cancelled"], {D.SUBMIT, D.SKIP_FAILED}),
    "regen_unknown": (["claim:run-1", "completed", "claim:run-2", "unknown"], {D.SUBMIT, D.SKIP_UNKNOWN}),
}


def _before_claim(entry: LedgerEntry, policy: ResubmitPolicy, owner: str, now: datetime, last_completed: int,
                  ) -> Decision:
    """`Ledger._decide`'s rules as they were before they moved to ledger/rules.py (its writes left out)."""
    state, n = entry.state, entry.attempt
    if state is S.SUBMITTING:
        lease_ok = (entry.claimed_at is not None
                    and (now - entry.claimed_at).total_seconds() < policy.submit_lease_seconds)
        if entry.owner != owner and lease_ok:
            return D.BUSY
        state = S.UNKNOWN
    if state is S.PLANNED:
        return D.SUBMIT
    if state is S.COMPLETED:
        return D.SUBMIT if policy.regenerate and entry.attempt_owner != owner else D.REUSE
    if state is S.SUBMITTED:
        return D.RESUME
    used = n - last_completed
    if state is S.UNKNOWN:
        return D.SUBMIT if policy.resubmit_unknown and used < policy.max_attempts else D.SKIP_UNKNOWN
    if state is S.FAILED:
        return D.SUBMIT if entry.retryable and used < policy.max_attempts else D.SKIP_FAILED
    return D.SUBMIT if used < policy.max_attempts else D.SKIP_FAILED  # cancelled


def _before_would_submit(entry: LedgerEntry | None, policy: ResubmitPolicy) -> bool:
    """sora_pipeline/generation/runner.py::would_submit as it was before the rules moved to the ledger."""
    if entry is None or entry.state == RequestState.PLANNED:
        return True
    if entry.state == RequestState.COMPLETED:
        return policy.regenerate
    if entry.state in (RequestState.FAILED, RequestState.CANCELLED):
        return (entry.state == RequestState.CANCELLED or bool(entry.retryable)) and entry.attempt < policy.max_attempts
    if entry.state == RequestState.UNKNOWN:
        return policy.resubmit_unknown
    return False


def _step_call(step: str, key: str, attempt: int) -> tuple[str, tuple, dict]:
    """One scenario step as a `run_batch` call."""
    if step.startswith("claim:"):
        return "claim", (key,), dict(owner=step.split(":")[1], policy=OPEN, now=T0)
    if step == "submitted":
        return "mark_submitted", (key, attempt), dict(request_id=f"rid-{key[:8]}-{attempt}", status_url=None,
                                                       response_url=None, cancel_url=None)
    if step == "completed":
        return "mark_completed", (key, attempt), dict(output={"n": attempt})
    if step in ("failed", "failed_final"):
        return "mark_failed", (key, attempt), dict(error_type="t", error_message="m", retryable=step == "failed")
    if step == "cancelled":
        return "mark_cancelled", (key, attempt), dict(reason="r")
    if step == "unknown":
        return "mark_unknown", (key, attempt), dict(error_message="u")
    raise AssertionError(step)


def _build(lg: Ledger, name: str, steps: list[str], n: int) -> list[str]:
    """`n` requests in the scenario's state (each step runs for all of them in one transaction)."""
    specs = [spec(f"{name}-{i}") for i in range(n)]
    lg.plan(specs)
    keys = [s.request_key for s in specs]
    attempt = 0
    for step in steps:
        attempt += step.startswith("claim:")
        results = lg.run_batch([_step_call(step, k, attempt) for k in keys])
        for r in results:
            assert not isinstance(r, Exception), (step, r)
            if step.startswith("claim:"):
                assert r[0] is D.SUBMIT and r[1].attempt == attempt, (step, r)
    return keys


@pytest.fixture(scope="module")
def lg(tmp_path_factory):
    with Ledger.open(f"sqlite:///{tmp_path_factory.mktemp('rules') / 'ledger.sqlite'}") as ledger:
        yield ledger


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_decide_is_what_claim_does(lg, name):
    steps, must_reach = SCENARIOS[name]
    combos = [(p, o, w) for p in POLICIES for o in OWNERS for w in NOWS]
    keys = _build(lg, name, steps, len(combos))
    reached: set[Decision] = set()
    for key, (policy, owner, when) in zip(keys, combos, strict=True):
        case = f"{name} {policy} owner={owner} {when}"
        now = NOWS[when]
        entry = lg.get(key)
        before = lg.history(key)
        last_completed = max((h.attempt for h in before if h.state is S.COMPLETED), default=0)

        expected = decide(entry, policy, owner=owner, now=now, last_completed_attempt=last_completed)
        assert expected is _before_claim(entry, policy, owner, now, last_completed), case
        assert lg.decide(entry, policy, owner=owner, now=now) is expected, case
        assert lg.history(key) == before and lg.get(key) == entry, case  # Ledger.decide writes nothing
        decision, after = lg.claim(key, owner=owner, policy=policy, now=now)
        assert decision is expected, case
        reached.add(decision)

        # the writes the decision implies
        history = lg.history(key)
        expired = entry.state is S.SUBMITTING and decision is not D.BUSY
        if expired:
            old = history[entry.attempt - 1]
            assert old.state is S.UNKNOWN and old.error_message == UNCONFIRMED_SUBMIT, case
        if decision is D.SUBMIT:
            assert (after.state, after.attempt, after.owner) == (S.SUBMITTING, entry.attempt + 1, owner), case
            assert len(history) == len(before) + 1 and history[-1].state is S.SUBMITTING, case
            assert after.claimed_at == now, case
        else:
            assert len(history) == len(before) and after.attempt == entry.attempt, case
            assert after.state is (S.UNKNOWN if expired else entry.state), case

        # would_submit: the runner's former answers, for every state
        assert would_submit(entry, policy) is _before_would_submit(entry, policy), case
        # ... and the real claim's, but for the differences its docstring lists
        under_cap = entry.attempt - last_completed < policy.max_attempts
        differs = (
            (entry.state is S.COMPLETED and policy.regenerate and entry.attempt_owner == owner)
            or (entry.state is S.UNKNOWN and policy.resubmit_unknown and not under_cap)
            or (entry.state is S.SUBMITTING and decision is D.SUBMIT)
            or (entry.state in (S.FAILED, S.CANCELLED) and last_completed > 0 and decision is D.SUBMIT
                and entry.attempt >= policy.max_attempts)
        )
        assert would_submit(entry, policy) is ((decision is D.SUBMIT) is not differs), case
    assert reached == must_reach, (name, reached)


def test_decide_and_would_submit_without_an_entry():
    for policy in POLICIES:
        assert decide(None, policy, owner="run-1", now=T0, last_completed_attempt=0) is D.SUBMIT
        assert would_submit(None, policy) is _before_would_submit(None, policy) is True


def test_every_state_is_covered():
    """The scenarios leave a request in every state (so the matrix above spans them all)."""
    ends = {"claim:run-1": S.SUBMITTING, "claim:run-2": S.SUBMITTING, "submitted": S.SUBMITTED,
            "completed": S.COMPLETED, "failed": S.FAILED, "failed_final": S.FAILED, "cancelled": S.CANCELLED,
            "unknown": S.UNKNOWN}
    assert {ends[steps[-1]] if steps else S.PLANNED for steps, _ in SCENARIOS.values()} == set(S)
