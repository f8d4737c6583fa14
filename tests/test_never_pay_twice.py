"""The backfill promise: never pay twice, never lose a finished video (issue 4).

Crash and termination tests run the materialization in a subprocess against a simulator owned by the test, so
the simulator (standing in for fal) outlives the killed worker, exactly like the real service would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sora_pipeline.generation.failpoints import POINTS
from sora_pipeline.ledger import Ledger
from sora_pipeline.warehouse.tables import read_day_partition
from tests.support.fixtures import DAY, catalog_rows, make_project, materialize_day, resources
from tests.pipeline_helpers import materializations, subprocess_env

REPO = Path(__file__).resolve().parents[1]


def run_day(env: dict, run_config: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    args = [sys.executable, str(REPO / "tests/run_day.py"), DAY] + ([json.dumps(run_config)] if run_config else [])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def ledger_states(project: dict) -> Counter:
    with Ledger.open(project["ledger_url"]) as ledger:
        return Counter(e.state.value for e in ledger.entries_for_day(DAY))


def submits_per_prompt(sim) -> Counter:
    return Counter(sim.stats()["submits_by_prompt"])


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_then_rerun_submits_each_item_exactly_once(tmp_path, make_simulator, point):
    sim = make_simulator(run_latency=0.3)
    project = make_project(tmp_path)
    env = subprocess_env(project, sim)
    crashed = run_day({**env, "SORA_FAILPOINT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    before = sum(submits_per_prompt(sim).values())
    rerun = run_day(env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    per_prompt = submits_per_prompt(sim)
    assert len(per_prompt) == 4 and set(per_prompt.values()) == {1}, (point, before, per_prompt)
    assert ledger_states(project) == Counter({"completed": 4})
    rows = read_day_partition(project["warehouse_uri"], "video_metadata", DAY).to_pylist()
    assert sorted(r["item_id"] for r in rows) == ["it0", "it1", "it2", "it3"]
    assert all(os.path.getsize(r["archive_uri"]) == r["file_size"] for r in rows)


def test_sigterm_cancels_in_flight_requests_and_the_ledger_says_so(tmp_path, make_simulator):
    sim = make_simulator(run_latency=60.0)
    project = make_project(tmp_path)
    env = subprocess_env(project, sim)
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/run_day.py"), DAY], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while sim.stats()["submits"] < 4 or ledger_states(project).get("submitted", 0) < 4:
        assert time.monotonic() < deadline and proc.poll() is None, "never got 4 requests in flight"
        time.sleep(0.1)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert time.monotonic() - started < 30, "cancellation is bounded in time"
    assert sim.stats()["cancels"] == 4, stderr[-2000:]
    assert ledger_states(project) == Counter({"cancelled": 4})
    # a cancelled request is generated again by the next run (a new attempt; history is kept)
    fresh = make_simulator(run_latency=0.2)
    assert run_day(subprocess_env(project, fresh)).returncode == 0
    assert ledger_states(project) == Counter({"completed": 4}) and fresh.stats()["submits"] == 4
    with Ledger.open(project["ledger_url"]) as ledger:
        for entry in ledger.entries_for_day(DAY):
            assert [a.state.value for a in ledger.history(entry.request_key)] == ["cancelled", "completed"]


#: tests/run_day.py as it is, but on a persistent SQLite instance in argv[1] (not an ephemeral one), so the test can
#: read when each run's `generations` step started and ended
_RUN_DAY_RECORDED = """
import runpy, sys
import dagster as dg
home, sys.argv = sys.argv[1], sys.argv[2:]
dg.DagsterInstance.ephemeral = staticmethod(lambda *args, **kwargs: dg.DagsterInstance.from_config(home))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _generation_step_window(home: Path) -> tuple[float, float]:
    """(start, end) of the `generations` step of the one run recorded in `home` (STEP_START → SUCCESS/FAILURE)."""
    from dagster import DagsterEventType, DagsterInstance

    instance = DagsterInstance.from_config(str(home))
    try:
        (run,) = instance.get_runs()
        ends = {DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}
        records = instance.all_logs(run.run_id, of_type={DagsterEventType.STEP_START, *ends})
        times = {r.dagster_event.event_type: r.timestamp for r in records if r.step_key == "generations"}
    finally:
        instance.dispose()
    end = next((times[t] for t in ends if t in times), None)
    assert DagsterEventType.STEP_START in times and end is not None, f"{home}: no complete generations step"
    return times[DagsterEventType.STEP_START], end


def _run_outputs(procs: list[subprocess.Popen], outs: list[tuple[str, str]]) -> str:
    return "".join(f"\n===== run {i} (exit {p.returncode}): stdout =====\n{out}\n===== run {i}: stderr =====\n{err}"
                   for i, (p, (out, err)) in enumerate(zip(procs, outs)))


def test_two_concurrent_runs_of_the_same_day_submit_each_item_once(tmp_path, make_simulator):
    # generation (≥ run_latency) much longer than the start-up skew of two processes, so the runs overlap even
    # on a loaded machine; the test checks that they did (Dagster's event log of each run), as test_postgres does
    sim = make_simulator(run_latency=4.0)
    project = make_project(tmp_path, catalog_rows(n=8))
    env = subprocess_env(project, sim)
    homes = [tmp_path / f"dagster_home_{i}" for i in range(2)]
    procs = []
    for home in homes:
        home.mkdir()
        procs.append(subprocess.Popen([sys.executable, "-c", _RUN_DAY_RECORDED, str(home),
                                       str(REPO / "tests/run_day.py"), DAY], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=240))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            outs = [q.communicate() for q in procs]
            pytest.fail(f"a run did not finish in 240 s{_run_outputs(procs, outs)}")
    assert all(p.returncode == 0 for p in procs), _run_outputs(procs, outs)
    windows = sorted(_generation_step_window(home) for home in homes)
    assert windows[1][0] < windows[0][1], \
        f"the generation steps did not overlap ({windows}): the test proved nothing{_run_outputs(procs, outs)}"
    per_prompt = submits_per_prompt(sim)
    assert len(per_prompt) == 8 and set(per_prompt.values()) == {1}, f"{per_prompt}{_run_outputs(procs, outs)}"
    assert ledger_states(project) == Counter({"completed": 8}), _run_outputs(procs, outs)


def test_fault_injection_loses_nothing_and_pays_once(tmp_path, make_simulator):
    faults = {"rate_limit": 0.05, "server_error": 0.04, "unavailable": 0.04, "drop": 0.03, "slow": 0.02,
              "malformed": 0.02, "result_404_once": 0.1}
    sim = make_simulator(run_latency=0.3, faults=faults, seed=7, slow_seconds=0.5, retry_after_seconds=0.05)
    project = make_project(tmp_path, catalog_rows(n=24))
    res = resources(sim.base_url, project, retry_max_attempts=10, request_timeout=5.0)
    result = materialize_day(res)
    assert result.success
    generations = read_day_partition(project["warehouse_uri"], "generations", DAY).to_pylist()
    assert len(generations) == 24, "no item lost"
    by_status = Counter(g["status"] for g in generations)
    assert set(by_status) <= {"completed", "failed", "unknown", "pending"}
    for g in generations:
        if g["status"] != "completed":
            assert g["error_message"] and g["error_type"], g
    assert by_status["completed"] >= 12
    faults_served = sim.stats()["faults"]
    assert sum(faults_served.values()) >= 10, faults_served
    per_prompt = submits_per_prompt(sim)
    assert max(per_prompt.values()) == 1, "no duplicate submits"
    # a second run resumes/reuses; an unknown submit the simulator did receive (a dropped answer) is found in fal's
    # request history and resumed; one it never received (a 500 before recording) stays unknown: none is resubmitted
    unknown = {g["item_id"] for g in generations if g["status"] == "unknown"}
    at_fal = {i for i in unknown if per_prompt.get(f"prompt {i} {DAY}")}
    assert materialize_day(res).success
    again = {g["item_id"]: g for g in read_day_partition(project["warehouse_uri"], "generations", DAY).to_pylist()}
    assert max(submits_per_prompt(sim).values()) == 1
    assert all(again[i]["status"] == "completed" and again[i]["decision"] == "resumed" for i in at_fal)
    assert all(again[i]["status"] == "unknown" and again[i]["decision"] == "skipped" for i in unknown - at_fal)
    failed = read_day_partition(project["warehouse_uri"], "failed_generations", DAY).to_pylist()
    assert {f["item_id"] for f in failed if f["status"] == "unknown"} == unknown - at_fal
    assert all(f["request_key"] in f["reason"] for f in failed if f["status"] == "unknown")


def test_unknown_submit_is_reported_and_resubmitted_only_on_request(tmp_path, make_simulator):
    """Without fal's request history to decide (here it answers nothing), an unknown submit stays unknown, reported
    with its request key, and is resubmitted only with `resubmit_unknown` (tests/test_unknown_submits.py: with the
    history, it is found and resumed)."""
    sim = make_simulator(run_latency=0.2, faults={"drop": 1.0}, fault_calls=frozenset({"submit", "platform"}))
    project = make_project(tmp_path, catalog_rows(n=2))
    res = resources(sim.base_url, project, retry_max_attempts=1)
    assert materialize_day(res).success
    assert ledger_states(project) == Counter({"unknown": 2})
    assert sim.stats()["submits"] == 2  # fal (the simulator) did accept them: resubmitting would pay twice
    assert materialize_day(res).success and sim.stats()["submits"] == 2
    assert ledger_states(project) == Counter({"unknown": 2})
    failed = read_day_partition(project["warehouse_uri"], "failed_generations", DAY).to_pylist()
    assert all(f["status"] == "unknown" and f["request_key"] in f["reason"] for f in failed) and len(failed) == 2
    healthy = make_simulator(run_latency=0.2)
    res = resources(healthy.base_url, project)
    assert materialize_day(res, run_config={"resubmit_unknown": True}).success
    assert ledger_states(project) == Counter({"completed": 2}) and healthy.stats()["submits"] == 2


def test_failed_items_are_retried_only_when_retryable_and_under_the_cap(tmp_path, simulator):
    rows = catalog_rows(n=1) + [dict(catalog_rows(n=1, prefix="bad")[0], prompt="no [simulate-failure]")]
    project = make_project(tmp_path, rows)
    res = resources(simulator.base_url, project)
    assert materialize_day(res).success
    assert ledger_states(project) == Counter({"completed": 1, "failed": 1})
    assert materialize_day(res).success
    assert simulator.stats()["submits"] == 2, "a non-retryable failure is not resubmitted"


def test_regenerate_forces_new_generations_and_keeps_history(tmp_path, simulator):
    project = make_project(tmp_path, catalog_rows(n=2))
    res = resources(simulator.base_url, project)
    assert materialize_day(res).success
    first = read_day_partition(project["warehouse_uri"], "video_metadata", DAY).to_pylist()
    assert materialize_day(res, run_config={"regenerate": True}).success
    assert simulator.stats()["submits"] == 4
    second = read_day_partition(project["warehouse_uri"], "video_metadata", DAY).to_pylist()
    assert {r["request_id"] for r in first}.isdisjoint({r["request_id"] for r in second})
    with Ledger.open(project["ledger_url"]) as ledger:
        for entry in ledger.entries_for_day(DAY):
            assert [a.state.value for a in ledger.history(entry.request_key)] == ["completed", "completed"]


def test_budget_cap_skips_items_with_reason_and_dry_run_submits_nothing(tmp_path, simulator):
    project = make_project(tmp_path)  # 720p 4 s ($1.20), auto 4 s ($2), auto 8 s ($4), 1080p 4 s ($2)
    res = resources(simulator.base_url, project)
    dry = materialize_day(res, run_config={"dry_run": True})
    assert dry.success and simulator.stats()["submits"] == 0
    obs = [e for e in dry.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert obs and obs[0].event_specific_data.asset_observation.metadata["estimated_cost_usd"].value == \
        pytest.approx(9.2)
    assert read_day_partition(project["warehouse_uri"], "video_metadata", DAY) is None
    result = materialize_day(res, run_config={"day_budget_usd": 5.0})
    assert result.success
    generations = read_day_partition(project["warehouse_uri"], "generations", DAY).to_pylist()
    skipped = [g for g in generations if g["status"] == "skipped"]
    assert skipped and all(g["error_type"] == "budget" and "budget" in g["error_message"] for g in skipped)
    spent = sum(g["estimated_cost"] for g in generations if g["status"] == "completed")
    assert spent <= 5.0 and simulator.stats()["submits"] == len(generations) - len(skipped)
    meta = materializations(result, "generations")[0].metadata
    assert meta["estimated_cost_usd"].value == pytest.approx(9.2)


def test_byo_openai_key_is_priced_zero_and_never_stored(tmp_path, simulator):
    secret = "sk-byo-openai-000111222"
    project = make_project(tmp_path, catalog_rows(n=2))
    res = resources(simulator.base_url, project, openai_api_key=secret)
    result = materialize_day(res)
    assert result.success
    generations = read_day_partition(project["warehouse_uri"], "generations", DAY).to_pylist()
    assert all(g["used_openai_key"] and g["estimated_cost"] == 0 and g["priced_cost"] == 0 for g in generations)
    blob = Path(project["ledger_url"].removeprefix("sqlite:///")).read_bytes()
    assert secret.encode() not in blob
    for path in Path(project["warehouse_uri"]).rglob("*.parquet"):
        assert secret.encode() not in path.read_bytes()
    assert secret not in repr(res["fal"]) and secret not in str(result.all_events)
