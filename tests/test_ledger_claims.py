"""Ledger transitions and claim rules, one behaviour per test, on real SQLite files and PostgreSQL (skipped when the
server is unreachable): the happy path and queries, retries and caps, leases, regeneration, guards against stale
workers, and the per-day spend."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sora_pipeline.ledger import UNCONFIRMED_SUBMIT, Decision, LedgerConflict, RequestNotPlanned, ResubmitPolicy
from tests.test_ledger import (  # noqa: F401  (fixtures)
    DAY, POLICY, SHA, S, db_url, ledger, pg_url, planned, spec, submit, submitted,
)


def test_happy_path_and_queries(ledger):
    key = planned(ledger, 0)
    ledger.plan([spec(0), spec(1)])  # idempotent
    e = ledger.get(key)
    assert e.state is S.PLANNED and e.attempt == 0 and e.request_id is None and e.created_at.tzinfo is not None
    assert submit(ledger, key) == 1
    assert ledger.get(key).state is S.SUBMITTING
    submitted(ledger, key, 1)
    assert [x.request_key for x in ledger.in_flight("run-1")] == [key] and ledger.in_flight("other") == []
    assert ledger.claim(key, owner="run-2", policy=POLICY)[0] is Decision.RESUME
    done = datetime.now(timezone.utc)
    ledger.mark_completed(key, 1, output={"video": {"url": "u"}, "video_id": "v"}, completed_at=done,
                          seconds_generated=4.0, actual_cost=2.0)
    ledger.mark_completed(key, 1, output={"other": 1}, completed_at=done)  # idempotent, keeps the first
    ledger.set_artifacts(key, 1, {"uri": "file:///a.mp4"})
    ledger.set_artifacts(key, 1, {"sha256": SHA})
    decision, e = ledger.claim(key, owner="run-2", policy=POLICY)
    assert decision is Decision.REUSE
    assert e.output == {"video": {"url": "u"}, "video_id": "v"} and e.artifacts == {"uri": "file:///a.mp4", "sha256": SHA}
    assert e.request_id == "rid-1" and e.seconds_generated == 4.0 and e.actual_cost == 2.0
    assert e.completed_at == done and e.completed_at.tzinfo is not None and e.attempt_owner == "run-1"
    assert ledger.in_flight() == []
    assert [x.request_key for x in ledger.entries_for_day(DAY)] == sorted([key, spec(1).request_key],
                                                                         key=lambda k: ledger.get(k).item_id)
    assert ledger.entries_for_day(DAY, endpoint_id="other") == [] and ledger.entries_for_day("2020-01-01") == []
    counts = ledger.counts_by_state(DAY)
    assert counts["completed"] == 1 and counts["planned"] == 1 and sum(counts.values()) == 2
    assert ledger.counts_by_state("2020-01-01")["planned"] == 0


def test_unplanned_key(ledger):
    with pytest.raises(RequestNotPlanned):
        ledger.claim("0" * 64, owner="r", policy=POLICY)
    with pytest.raises(RequestNotPlanned):
        ledger.mark_failed("0" * 64, 1, error_type="x", error_message="y", retryable=True)


def test_failed_retry_until_cap_with_history(ledger):
    key = planned(ledger)
    for n in (1, 2, 3):
        assert submit(ledger, key, policy=ResubmitPolicy(max_attempts=3)) == n
        submitted(ledger, key, n, rid=f"rid-{n}")
        ledger.mark_failed(key, n, error_type="runner_disconnected", error_message=f"boom {n}", retryable=True)
    decision, e = ledger.claim(key, owner="run-1", policy=ResubmitPolicy(max_attempts=3))
    assert decision is Decision.SKIP_FAILED and e.attempt == 3 and e.error_message == "boom 3"
    assert ledger.claim(key, owner="run-1", policy=ResubmitPolicy(max_attempts=4))[0] is Decision.SUBMIT
    hist = ledger.history(key)
    assert [(h.attempt, h.state, h.request_id) for h in hist] == [
        (1, S.FAILED, "rid-1"), (2, S.FAILED, "rid-2"), (3, S.FAILED, "rid-3"), (4, S.SUBMITTING, None)]
    assert hist[0].retryable is True and hist[0].error_message == "boom 1"


def test_non_retryable_failure_is_skipped(ledger):
    key = planned(ledger)
    submit(ledger, key)
    ledger.mark_failed(key, 1, error_type="content_policy_violation", error_message="no", retryable=False)
    assert ledger.claim(key, owner="run-2", policy=POLICY)[0] is Decision.SKIP_FAILED


def test_cancelled_is_resubmittable_under_cap(ledger):
    key = planned(ledger)
    submit(ledger, key)
    submitted(ledger, key, 1)
    ledger.mark_cancelled(key, 1, reason="run terminated")
    e = ledger.get(key)
    assert e.state is S.CANCELLED and e.error_message == "run terminated"
    assert submit(ledger, key, owner="run-2") == 2
    ledger.mark_cancelled(key, 2, reason="again")
    assert ledger.claim(key, owner="run-3", policy=ResubmitPolicy(max_attempts=2))[0] is Decision.SKIP_FAILED


def test_unknown_skipped_unless_resubmit_unknown(ledger):
    key = planned(ledger)
    submit(ledger, key)
    ledger.mark_unknown(key, 1, error_message="submit timed out")
    assert ledger.claim(key, owner="run-2", policy=POLICY)[0] is Decision.SKIP_UNKNOWN
    assert submit(ledger, key, owner="run-2", policy=ResubmitPolicy(resubmit_unknown=True)) == 2
    assert ledger.history(key)[0].state is S.UNKNOWN


def test_busy_within_lease_then_unknown_after(ledger):
    key = planned(ledger)
    t0 = datetime(2026, 1, 2, 12, 0, tzinfo=timezone.utc)
    submit(ledger, key, owner="run-1", now=t0)
    d, e = ledger.claim(key, owner="run-2", policy=POLICY, now=t0 + timedelta(seconds=299))
    assert d is Decision.BUSY and e.state is S.SUBMITTING and e.owner == "run-1"
    d, e = ledger.claim(key, owner="run-2", policy=POLICY, now=t0 + timedelta(seconds=301))
    assert d is Decision.SKIP_UNKNOWN and e.state is S.UNKNOWN and e.error_message == UNCONFIRMED_SUBMIT
    assert "no request id was recorded" in e.error_message
    # the slow submitter comes back with its id: recorded, nothing is lost
    submitted(ledger, key, 1, rid="late")
    e = ledger.get(key)
    assert e.state is S.SUBMITTED and e.request_id == "late" and e.error_message is None


def test_lease_expiry_with_resubmit_unknown(ledger):
    key = planned(ledger)
    t0 = datetime(2026, 1, 2, 12, 0, tzinfo=timezone.utc)
    submit(ledger, key, owner="run-1", now=t0)
    pol = ResubmitPolicy(resubmit_unknown=True, submit_lease_seconds=10)
    assert submit(ledger, key, owner="run-2", policy=pol, now=t0 + timedelta(seconds=11)) == 2
    assert [h.state for h in ledger.history(key)] == [S.UNKNOWN, S.SUBMITTING]
    # the original submitter reports late: kept in history, the newer attempt is untouched
    with pytest.raises(LedgerConflict) as exc:
        submitted(ledger, key, 1, rid="late")
    assert exc.value.recorded
    h = ledger.history(key)
    assert h[0].request_id == "late" and h[0].state is S.SUBMITTED and h[1].state is S.SUBMITTING
    assert ledger.get(key).attempt == 2 and ledger.get(key).state is S.SUBMITTING


def test_same_owner_submitting_means_unknown(ledger):
    key = planned(ledger)
    submit(ledger, key, owner="run-1")
    d, e = ledger.claim(key, owner="run-1", policy=POLICY)  # our own crash mid-submit
    assert d is Decision.SKIP_UNKNOWN and e.state is S.UNKNOWN


def test_regenerate_once_per_owner(ledger):
    key = planned(ledger)
    submit(ledger, key, owner="run-1")
    submitted(ledger, key, 1)
    ledger.mark_completed(key, 1, output={"n": 1})
    regen = ResubmitPolicy(regenerate=True, max_attempts=1)
    assert ledger.claim(key, owner="run-1", policy=regen)[0] is Decision.REUSE  # made by this very run
    assert submit(ledger, key, owner="run-2", policy=regen) == 2  # cap does not block a regeneration
    submitted(ledger, key, 2, rid="rid-2")
    assert ledger.claim(key, owner="run-2", policy=regen)[0] is Decision.RESUME
    ledger.mark_completed(key, 2, output={"n": 2})
    d, e = ledger.claim(key, owner="run-2", policy=regen)  # a retried step of the same run
    assert d is Decision.REUSE and e.output == {"n": 2} and e.attempt == 2
    assert [h.output for h in ledger.history(key)] == [{"n": 1}, {"n": 2}]
    assert ledger.claim(key, owner="run-3", policy=POLICY)[0] is Decision.REUSE


def test_cap_counts_from_latest_completed(ledger):
    key = planned(ledger)
    submit(ledger, key)
    ledger.mark_completed(key, 1, output={})
    submit(ledger, key, owner="run-2", policy=ResubmitPolicy(regenerate=True))
    ledger.mark_failed(key, 2, error_type="t", error_message="m", retryable=True)
    assert ledger.claim(key, owner="run-2", policy=ResubmitPolicy(max_attempts=2))[0] is Decision.SUBMIT
    ledger.mark_failed(key, 3, error_type="t", error_message="m", retryable=True)
    assert ledger.claim(key, owner="run-2", policy=ResubmitPolicy(max_attempts=2))[0] is Decision.SKIP_FAILED


def test_guards(ledger):
    key = planned(ledger)
    with pytest.raises(LedgerConflict):
        submitted(ledger, key, 1)  # no attempt yet
    submit(ledger, key)
    with pytest.raises(LedgerConflict):
        submitted(ledger, key, 2)
    submitted(ledger, key, 1)
    submitted(ledger, key, 1)  # same id again: idempotent
    with pytest.raises(LedgerConflict):
        submitted(ledger, key, 1, rid="different")
    ledger.mark_completed(key, 1, output={"ok": True})
    for call in (lambda: ledger.mark_failed(key, 1, error_type="x", error_message="y", retryable=True),
                 lambda: ledger.mark_cancelled(key, 1, reason="r"),
                 lambda: ledger.mark_unknown(key, 1, error_message="u")):
        with pytest.raises(LedgerConflict):
            call()
    assert ledger.get(key).state is S.COMPLETED and ledger.get(key).output == {"ok": True}
    with pytest.raises(LedgerConflict):
        ledger.set_artifacts(key, 7, {"x": 1})


def test_stale_worker_cannot_touch_newer_attempt(ledger):
    key = planned(ledger)
    submit(ledger, key)
    ledger.mark_failed(key, 1, error_type="t", error_message="first", retryable=True)
    submit(ledger, key, owner="run-2")
    submitted(ledger, key, 2, rid="rid-2")
    with pytest.raises(LedgerConflict):
        ledger.mark_failed(key, 1, error_type="t", error_message="stale", retryable=False)
    with pytest.raises(LedgerConflict) as exc:  # a late paid result of attempt 1 is kept in its history
        ledger.mark_completed(key, 1, output={"late": True})
    assert exc.value.recorded
    e = ledger.get(key)
    assert e.attempt == 2 and e.state is S.SUBMITTED and e.request_id == "rid-2" and e.output is None
    assert ledger.history(key)[0].output == {"late": True}


def test_completed_after_cancel_or_failure_is_kept(ledger):
    key = planned(ledger)
    submit(ledger, key)
    submitted(ledger, key, 1)
    ledger.mark_cancelled(key, 1, reason="terminated")
    ledger.mark_completed(key, 1, output={"v": 1})  # cancel answered ALREADY_COMPLETED: the paid result wins
    assert ledger.get(key).state is S.COMPLETED


def test_spent_per_day(ledger):
    t = datetime(2026, 3, 4, 23, 59, tzinfo=timezone.utc)
    keys = [planned(ledger, i, cost=1.5, day="2026-03-01") for i in range(4)]
    other = planned(ledger, 9, cost=7.0, day="2026-03-02")
    for k in keys:
        submit(ledger, k, now=t)
    submitted(ledger, keys[0], 1)
    ledger.mark_failed(keys[1], 1, error_type="validation", error_message="422", retryable=False)  # never sent
    ledger.mark_unknown(keys[2], 1, error_message="timeout")  # may be billed
    assert ledger.spent("2026-03-01") == pytest.approx(4.5)  # keys[3] is SUBMITTING: counted
    assert ledger.spent("2026-03-02") == 0.0
    assert ledger.spent("2026-03-04", by="claimed_utc") == pytest.approx(4.5)
    assert ledger.spent("2026-03-05", by="claimed_utc") == 0.0
    submit(ledger, keys[2], policy=ResubmitPolicy(resubmit_unknown=True), now=t + timedelta(minutes=2))
    submit(ledger, other, now=t + timedelta(minutes=2))
    assert ledger.spent("2026-03-01") == pytest.approx(6.0) and ledger.spent("2026-03-02") == pytest.approx(7.0)
    assert ledger.spent("2026-03-05", by="claimed_utc") == pytest.approx(8.5)
    with pytest.raises(ValueError):
        ledger.spent("2026-03-05", by="week")
