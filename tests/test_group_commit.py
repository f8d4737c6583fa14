"""Group commit: `Ledger.run_batch` (many writes, one transaction, per-write results) and the runner's
`GroupCommit` (coroutines' writes batched on the ledger thread), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event

from sora_pipeline.generation.group_commit import GroupCommit
from sora_pipeline.ledger import Decision, LedgerConflict, RequestNotPlanned, RequestState
from tests.test_ledger import POLICY, db_url, ledger, pg_url, planned, spec, submit, submitted  # noqa: F401

S = RequestState


def _commits(lg) -> list[int]:
    """A live count of the transactions the ledger's engine commits."""
    count = [0]
    event.listen(lg._engine, "commit", lambda conn: count.__setitem__(0, count[0] + 1))
    return count


def _submitted_kwargs(rid: str) -> dict:
    return dict(request_id=rid, status_url=f"https://q/{rid}/status", response_url=f"https://q/{rid}",
                cancel_url=f"https://q/{rid}/cancel")


def test_run_batch_is_one_transaction_with_each_result(ledger):
    keys = [planned(ledger, i) for i in range(5)]
    commits = _commits(ledger)
    results = ledger.run_batch([("claim", (k,), {"owner": "run-1", "policy": POLICY}) for k in keys])
    assert commits[0] == 1
    assert [d for d, _ in results] == [Decision.SUBMIT] * 5
    assert all(e.state is S.SUBMITTING and e.attempt == 1 for _, e in results)
    results = ledger.run_batch([("mark_submitted", (k, 1), _submitted_kwargs(f"rid-{k[:6]}")) for k in keys]
                               + [("get", (keys[0],), {})])
    assert commits[0] == 2
    assert results[:5] == [None] * 5
    assert results[5].state is S.SUBMITTED and results[5].request_id == f"rid-{keys[0][:6]}"
    assert {e.state for e in ledger.entries_for_day(spec(0).day)} == {S.SUBMITTED}


def test_run_batch_a_failing_write_does_not_spoil_the_others(ledger):
    good = [planned(ledger, i) for i in range(3)]
    for k in good:
        submit(ledger, k)
    calls = [("mark_submitted", (good[0], 1), _submitted_kwargs("rid-a")),
             ("mark_submitted", (good[1], 7), _submitted_kwargs("rid-b")),  # no attempt 7: a conflict
             ("mark_failed", ("never-planned", 1), dict(error_type="x", error_message="y", retryable=False)),
             ("mark_submitted", (good[2], 1), dict(_submitted_kwargs("rid-c"), request_id="")),  # invalid
             ("mark_submitted", (good[2], 1), _submitted_kwargs("rid-c"))]
    results = ledger.run_batch(calls)
    assert results[0] is None and results[4] is None
    assert isinstance(results[1], LedgerConflict)
    assert isinstance(results[2], RequestNotPlanned)
    assert isinstance(results[3], ValueError)
    assert ledger.get(good[0]).request_id == "rid-a" and ledger.get(good[2]).request_id == "rid-c"
    assert ledger.get(good[1]).state is S.SUBMITTING  # untouched
    with pytest.raises(ValueError, match="cannot run in a batch"):
        ledger.run_batch([("plan", ([],), {})])


def test_run_batch_stale_attempt_is_recorded_and_reported(ledger):
    key = planned(ledger, 0)
    first = submit(ledger, key)
    submitted(ledger, key, first, "rid-old")
    ledger.mark_failed(key, first, error_type="server", error_message="boom", retryable=True)
    second = submit(ledger, key, owner="run-2")
    other = planned(ledger, 1)
    submit(ledger, other)
    results = ledger.run_batch([
        ("mark_completed", (key, first), dict(output={"video": {"url": "https://x/v.mp4"}})),
        ("mark_submitted", (other, 1), _submitted_kwargs("rid-other")),
    ])
    assert isinstance(results[0], LedgerConflict) and results[0].recorded
    assert results[1] is None
    history = {a.attempt: a.state for a in ledger.history(key)}
    assert history == {first: S.COMPLETED, second: S.SUBMITTING}  # the paid result is kept in the history
    assert ledger.get(key).attempt == second and ledger.get(other).state is S.SUBMITTED


def test_group_commit_batches_concurrent_writes_and_raises_per_caller(ledger):
    keys = [planned(ledger, i) for i in range(40)]
    commits = _commits(ledger)

    async def main():
        writes = GroupCommit(ledger, pool)
        claims = await asyncio.gather(*(writes("claim", k, owner="run-1", policy=POLICY) for k in keys))
        assert [d for d, _ in claims] == [Decision.SUBMIT] * 40
        outcome = await asyncio.gather(
            *(writes("mark_submitted", k, 1, **_submitted_kwargs(f"rid-{i}")) for i, k in enumerate(keys)),
            writes("mark_submitted", keys[0], 9, **_submitted_kwargs("rid-x")), return_exceptions=True)
        return writes, outcome

    with ThreadPoolExecutor(max_workers=1) as pool:
        writes, outcome = asyncio.run(main())
    assert outcome[:40] == [None] * 40
    assert isinstance(outcome[40], LedgerConflict)
    assert writes.writes == 81
    assert writes.batches <= 4  # 81 writes asked for at once: a handful of transactions, not 81
    assert commits[0] < 81
    assert all(ledger.get(k).state is S.SUBMITTED for k in keys)
