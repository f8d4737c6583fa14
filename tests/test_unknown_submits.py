"""Submits whose answer was lost, resolved from fal's request history (the simulator's platform API over HTTP):
found → resumed, never paid again; provably absent → resubmitted under the policy; a dead submitter's claim is
resolved as soon as it stops being renewed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from sora_pipeline.ledger import Ledger, ResubmitPolicy
from tests.support.fixtures import DAY, catalog_rows, make_project, materialize_day, resources
from tests.pipeline_helpers import REPO, \
    subprocess_env
from sora_pipeline.warehouse.tables import read_day_partition

QUICK = {"submit_heartbeat_seconds": 0.5, "unknown_settle_seconds": 60.0}  # a dead claim lapses after 2 s


def states(project: dict) -> Counter:
    with Ledger.open(project["ledger_url"]) as ledger:
        return Counter(e.state.value for e in ledger.entries_for_day(DAY))


def history(project: dict) -> list:
    with Ledger.open(project["ledger_url"]) as ledger:
        (entry,) = ledger.entries_for_day(DAY)
        return ledger.history(entry.request_key)


def test_a_run_killed_between_fals_answer_and_the_ledger_write_is_resumed_not_paid_again(tmp_path, make_simulator):
    """SIGKILL from outside while the submit's answer is on its way (the simulator has created the job; the ledger
    holds only the claim): the next run finds the job in fal's request history and fetches its video. One submit."""
    sim = make_simulator(faults={"slow": 1.0}, fault_calls={"submit"}, slow_seconds=60.0)
    project = make_project(tmp_path, catalog_rows(n=1))
    env = subprocess_env(project, sim, PYTHONUNBUFFERED="1")
    env = {k: v for k, v in env.items() if not k.startswith("DAGSTER_")}
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/run_day.py"), DAY, '{"submit_heartbeat_seconds": 0.5}'],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while sim.stats()["submits"] < 1:  # the job exists at "fal"; its answer is held back 60 s
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its submit"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL  # the planned kill happened, in the window
    assert states(project) == Counter({"submitting": 1})  # claimed, no request id recorded
    time.sleep(2.5)  # the dead run's claim is no longer renewed: its 2 s lease lapses
    result = materialize_day(resources(sim.base_url, project), run_config=QUICK)
    assert result.success
    assert sim.stats()["submits"] == 1 and states(project) == Counter({"completed": 1})
    assert len(read_day_partition(project["warehouse_uri"], "video_metadata", DAY)) == 1
    (attempt,) = history(project)  # the decision is on the attempt's row: found, recorded, resumed
    assert attempt.request_id and attempt.state.value == "completed"


def test_a_lost_answer_without_a_kill_is_found_in_the_history(tmp_path, make_simulator):
    """The submit's connection drops after the simulator created the job (`drop`): the run records `unknown`; the
    next run finds it in the history and resumes it. One submit in all."""
    sim = make_simulator(faults={"drop": 1.0}, fault_calls={"submit"})
    project = make_project(tmp_path, catalog_rows(n=1))
    first = materialize_day(resources(sim.base_url, project, retry_max_attempts=1), run_config=QUICK)
    assert first.success and states(project) == Counter({"unknown": 1}) and sim.stats()["submits"] == 1
    result = materialize_day(resources(sim.base_url, project), run_config=QUICK)
    assert result.success
    assert sim.stats()["submits"] == 1 and states(project) == Counter({"completed": 1})


def test_a_claim_fal_never_received_becomes_resubmittable_once_the_history_proves_it(tmp_path, simulator):
    """A submit claimed an hour ago by a run that died before sending it: fal's history (every page of the window)
    has no such request, so the attempt is failed-retryable and this run submits it once."""
    project = make_project(tmp_path, catalog_rows(n=2))
    assert materialize_day(resources(simulator.base_url, project), run_config={"dry_run": True}).success
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with Ledger.open(project["ledger_url"]) as ledger:
        for e in ledger.entries_for_day(DAY):  # claimed by a run that is gone, with what it meant to send
            ledger.claim(e.request_key, owner="dead-run", policy=ResubmitPolicy(), now=an_hour_ago,
                         payload_sha256="0" * 64)
    assert states(project) == Counter({"submitting": 2})
    result = materialize_day(resources(simulator.base_url, project), run_config=QUICK)
    assert result.success
    assert simulator.stats()["submits"] == 2 and states(project) == Counter({"completed": 2})
    with Ledger.open(project["ledger_url"]) as ledger:
        for e in ledger.entries_for_day(DAY):
            first, second = ledger.history(e.request_key)
            assert first.state.value == "failed" and first.error_type == "not_at_fal"
            assert "has no request with this payload" in first.error_message
            assert second.state.value == "completed"


def test_without_a_history_the_unknown_stays_unknown_with_the_reason(tmp_path, make_simulator):
    sim = make_simulator(faults={"drop": 1.0}, fault_calls={"submit", "platform"})  # the history answers nothing
    project = make_project(tmp_path, catalog_rows(n=1))
    assert materialize_day(resources(sim.base_url, project, retry_max_attempts=1), run_config=QUICK).success
    assert materialize_day(resources(sim.base_url, project, retry_max_attempts=1), run_config=QUICK).success
    assert states(project) == Counter({"unknown": 1}) and sim.stats()["submits"] == 1
    (attempt,) = history(project)
    assert "still unknown: fal's request history could not be read" in attempt.error_message
