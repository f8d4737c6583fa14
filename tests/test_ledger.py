"""Ledger tests on real SQLite files and a throwaway PostgreSQL database (skipped when the server is unreachable)."""

from __future__ import annotations

import inspect
import multiprocessing as mp
import os
import random
import threading
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from sora_pipeline.ledger import (
    UNCONFIRMED_SUBMIT, Decision, Ledger, LedgerConflict, RequestNotPlanned, RequestSpec, RequestState,
    ResubmitPolicy, default_ledger_url, request_key,
)
from sora_pipeline.ledger.schema import LATEST_VERSION

EP = "fal-ai/sora-2/image-to-video/pro"
SHA = "ab" * 32
DAY = "2026-01-02"
POLICY = ResubmitPolicy()
S = RequestState


# ---------------------------------------------------------------- fixtures / helpers
@pytest.fixture(scope="session")
def pg_url(pg_admin):
    """A throwaway database on conftest's `pg_admin` (skipped without PostgreSQL, a failure when CI is set)."""
    engine, admin_url = pg_admin
    name = f"sora_ledger_test_{uuid.uuid4().hex[:12]}"
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fresh_pg(pg_url: str) -> str:
    with Ledger(pg_url) as lg, lg._engine.begin() as conn:
        conn.execute(text("DELETE FROM attempts"))
        conn.execute(text("DELETE FROM requests"))
    return pg_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    return _fresh_pg(request.getfixturevalue("pg_url"))


@pytest.fixture
def ledger(db_url):
    with Ledger(db_url) as lg:
        yield lg


def spec(i: int | str = 0, *, cost: float = 2.0, day: str = DAY, **over) -> RequestSpec:
    fields = dict(item_id=f"item-{i}", day=day, prompt=f"a cat number {i}", resolution="1080p",
                  aspect_ratio="16:9", duration=4, image_sha256=SHA, used_openai_key=False, estimated_cost=cost)
    fields.update(over)
    return RequestSpec.create(EP, **fields)


def planned(lg: Ledger, i: int | str = 0, **kw) -> str:
    s = spec(i, **kw)
    lg.plan([s])
    return s.request_key


def submit(lg: Ledger, key: str, owner: str = "run-1", policy: ResubmitPolicy = POLICY, **kw) -> int:
    decision, entry = lg.claim(key, owner=owner, policy=policy, **kw)
    assert decision is Decision.SUBMIT, decision
    return entry.attempt


def submitted(lg: Ledger, key: str, attempt: int, rid: str = "rid-1") -> None:
    lg.mark_submitted(key, attempt, request_id=rid, status_url=f"https://q/{rid}/status",
                      response_url=f"https://q/{rid}", cancel_url=f"https://q/{rid}/cancel",
                      submitted_at=datetime.now(timezone.utc))


# ---------------------------------------------------------------- request_key
KEY_ARGS = dict(item_id="a", prompt="hello", resolution="720p", aspect_ratio="16:9", duration=8, image_sha256=SHA)


def test_request_key_deterministic_and_normalized():
    k = request_key(EP, **KEY_ARGS)
    assert len(k) == 64 and int(k, 16) >= 0
    assert k == request_key(EP, **KEY_ARGS)
    assert k == request_key(EP, **dict(reversed(list(KEY_ARGS.items()))))  # kwarg order does not matter
    from sora_pipeline.fal.models import AspectRatio, Duration, Resolution
    assert k == request_key(EP, **KEY_ARGS | dict(prompt="  hello\n", resolution=Resolution.P720,
                                                   aspect_ratio=AspectRatio.LANDSCAPE, duration=Duration.S8,
                                                   image_sha256=SHA.upper()))
    assert k == request_key(EP, **KEY_ARGS | dict(duration="8"))


@pytest.mark.parametrize("field,value", [
    ("item_id", "b"), ("prompt", "hello!"), ("resolution", "1080p"), ("aspect_ratio", "9:16"), ("duration", 12),
    ("image_sha256", "cd" * 32),
])
def test_request_key_changes_with_every_field(field, value):
    assert request_key(EP, **KEY_ARGS) != request_key(EP, **KEY_ARGS | {field: value})
    assert request_key(EP, **KEY_ARGS) != request_key(EP + "x", **KEY_ARGS)


def test_request_key_never_takes_a_secret(tmp_path):
    params = inspect.signature(request_key).parameters
    assert not any("key" in p and p != "endpoint_id" for p in params) and "api_key" not in params
    with pytest.raises(TypeError):
        request_key(EP, **KEY_ARGS, api_key="sk-secret")  # type: ignore[call-arg]
    s = spec(0, used_openai_key=True)
    assert s.spec_json()["used_openai_key"] is True and "api_key" not in s.spec_json()
    assert s.request_key == spec(0, used_openai_key=False).request_key  # same video either way
    with Ledger(f"sqlite:///{tmp_path / 'l.sqlite'}") as lg:
        lg.plan([s])
        assert "sk-" not in repr(lg.get(s.request_key))


@pytest.mark.parametrize("bad", [dict(prompt="  "), dict(resolution="4k"), dict(duration=5),
                                 dict(image_sha256="xyz"), dict(aspect_ratio="1:1")])
def test_request_key_validates(bad):
    with pytest.raises(ValueError):
        request_key(EP, **KEY_ARGS | bad)


def test_plan_refuses_mismatched_key(ledger):
    s = spec(0)
    forged = RequestSpec(**{**s.__dict__, "prompt": "another prompt"})
    with pytest.raises(ValueError, match="does not match"):
        ledger.plan([forged])


# ---------------------------------------------------------------- schema / setup
def test_schema_versioned_and_idempotent(db_url):
    with Ledger(db_url) as a, Ledger.from_url(db_url) as b:
        assert a.schema_version == b.schema_version == LATEST_VERSION
        with a._engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar() == LATEST_VERSION


def test_sqlite_uses_wal(tmp_path):
    with Ledger(f"sqlite:///{tmp_path / 'w.sqlite'}") as lg, lg._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar().lower() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_repr_hides_password(pg_url):
    url = make_url(pg_url).set(password="hunter2").render_as_string(hide_password=False)
    with Ledger(url) as lg:
        assert "hunter2" not in repr(lg) and "***" in repr(lg)


def test_default_ledger_url(tmp_path):
    wh = tmp_path / "wh"
    url = default_ledger_url(str(wh), None)
    assert url == f"sqlite:///{wh.resolve()}/_ledger/ledger.sqlite" and (wh / "_ledger").is_dir()
    assert default_ledger_url(wh.resolve().as_uri(), "/nowhere") == url
    home = tmp_path / "dh"
    assert default_ledger_url("s3://bucket/wh", str(home)) == f"sqlite:///{home.resolve()}/sora_ledger.sqlite"
    assert home.is_dir()
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert default_ledger_url("gs://b/wh", None) == f"sqlite:///{tmp_path.resolve()}/sora_ledger.sqlite"
    finally:
        os.chdir(cwd)


# ---------------------------------------------------------------- transitions and claim rules
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


# ---------------------------------------------------------------- concurrency
N_KEYS = 50


def _claim_all(url: str, keys: list[str], owner: str, barrier=None) -> list[str]:
    rng = random.Random(owner)
    order = keys[:]
    rng.shuffle(order)
    won = []
    with Ledger(url) as lg:
        if barrier is not None:
            barrier.wait(timeout=120)
        for k in order:
            decision, _ = lg.claim(k, owner=owner, policy=POLICY)
            if decision is Decision.SUBMIT:
                won.append(k)
            else:
                assert decision in (Decision.BUSY, Decision.RESUME), decision
    return won


def _process_worker(url, keys, owner, barrier, queue) -> None:
    try:
        queue.put((owner, _claim_all(url, keys, owner, barrier)))
    except BaseException as exc:  # report instead of hanging the parent
        queue.put((owner, repr(exc)))


def _plan_keys(url: str) -> list[str]:
    specs = [spec(f"c{i}") for i in range(N_KEYS)]
    with Ledger(url) as lg:
        lg.plan(specs)
    return [s.request_key for s in specs]


def test_threads_claim_each_key_once(db_url):
    keys = _plan_keys(db_url)
    barrier = threading.Barrier(8)
    results: dict[str, list[str]] = {}
    with Ledger(db_url) as lg:
        def run(owner: str) -> None:
            barrier.wait(timeout=60)
            won = []
            for k in random.Random(owner).sample(keys, len(keys)):
                if lg.claim(k, owner=owner, policy=POLICY)[0] is Decision.SUBMIT:
                    won.append(k)
            results[owner] = won
        threads = [threading.Thread(target=run, args=(f"thread-{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert len(results) == 8
        wins = Counter(k for won in results.values() for k in won)
        assert set(wins) == set(keys) and set(wins.values()) == {1}
        assert all(len(lg.history(k)) == 1 for k in keys)
        assert lg.counts_by_state(DAY)["submitting"] == N_KEYS


def test_processes_claim_each_key_once(db_url):
    keys = _plan_keys(db_url)
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(db_url, keys, f"proc-{i}", barrier, queue))
             for i in range(4)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=300) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
    errors = {o: r for o, r in results.items() if isinstance(r, str)}
    assert not errors
    wins = Counter(k for won in results.values() for k in won)
    assert set(wins) == set(keys) and set(wins.values()) == {1}
    with Ledger(db_url) as lg:
        assert all(len(lg.history(k)) == 1 for k in keys)
