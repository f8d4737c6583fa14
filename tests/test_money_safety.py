"""Money safety (issue 12): a cancel never leads to paying twice, simulator videos never pass as real ones, a
ledger failure stops the run without losing what was paid for."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy.exc import OperationalError

from sora_pipeline.fal.client import AsyncFalQueueClient, FalQueueClient
from sora_pipeline.fal.policies import PollPolicy, RetryPolicy
from sora_pipeline.generation.config import GenerationConfig
from sora_pipeline.generation.records import WorkItem
from sora_pipeline.generation.runner import GenerationRunner
from sora_pipeline.coordination import LedgerUnavailable
from sora_pipeline.coordination.schema import LATEST_VERSION
from sora_pipeline.ledger import Ledger, RequestSpec, RequestState, ResubmitPolicy, request_key

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-11-20"
KEY = "simulator-local-key"


def work_items(png_data_uri: str, n: int = 3) -> list[WorkItem]:
    return [WorkItem(item_id=f"m{i}", prompt=f"money prompt {i}", image_ref=png_data_uri, resolution="720p",
                     aspect_ratio="16:9", duration=4, day=DAY) for i in range(n)]


def make_runner(sim_url: str, ledger: Ledger, owner: str = "run-a", backend: str = "simulator",
                cancel_url: str | None = None, **config) -> GenerationRunner:
    retry = RetryPolicy(max_attempts=2, initial_delay=0.05, total_timeout=3.0)
    cfg = GenerationConfig(endpoint_id="fal-ai/sora-2/image-to-video/pro", backend=backend,
                           queue_base_url=sim_url, owner=owner, day=DAY, **config)
    return GenerationRunner(
        cfg, lambda _profile: AsyncFalQueueClient(key=KEY, base_url=sim_url, poll=PollPolicy(interval=0.05), retry=retry),
        ledger, sync_client_factory=lambda _profile: FalQueueClient(key=KEY, base_url=cancel_url or sim_url, retry=retry))


def submitted_handles(runner: GenerationRunner, ledger: Ledger) -> None:
    """Put every SUBMITTED request of the day into the runner's in-flight map (as a run waiting on them)."""
    from sora_pipeline.fal.protocol import QueueHandle

    for e in ledger.entries_for_day(DAY):
        if e.state == RequestState.SUBMITTED:
            runner._in_flight[e.request_key] = (e.attempt, QueueHandle(e.request_id, e.status_url, e.response_url,
                                                                       e.cancel_url))


# ---------------------------------------------------------------- 2. cancel answered ALREADY_COMPLETED
def _submit_and_stop(sim, ledger: Ledger, items) -> None:
    """Submit every item, record the ids, and stop waiting (what an interrupted run leaves behind)."""
    runner = make_runner(sim.base_url, ledger, total_timeout=0.01)
    outcomes = runner.run(items)
    assert {o.status for o in outcomes} == {"pending"}, [(o.status, o.error_message) for o in outcomes]


def test_cancel_answered_already_completed_is_fetched_not_paid_again(tmp_path, make_simulator, png_data_uri):
    sim = make_simulator(run_latency=0.3)
    items = work_items(png_data_uri)
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        _submit_and_stop(sim, ledger, items)
        time.sleep(0.8)  # the jobs finish at "fal": a cancel now answers ALREADY_COMPLETED (billed)
        runner = make_runner(sim.base_url, ledger)
        submitted_handles(runner, ledger)
        assert runner.cancel_in_flight() == len(items)
        assert sim.stats()["calls"].get("cancel") == len(items) and sim.stats()["cancelled"] == 0
        states = Counter(e.state.value for e in ledger.entries_for_day(DAY))
        assert states == Counter({"submitted": len(items)}), "an unconfirmed cancel must stay resumable"
        # the next run fetches the results it paid for instead of submitting again
        outcomes = make_runner(sim.base_url, ledger, owner="run-b").run(items)
        assert [o.decision for o in outcomes] == ["resumed"] * len(items)
        assert all(o.status == "completed" for o in outcomes)
        assert sim.stats()["submits"] == len(items)


def test_cancel_without_an_answer_stays_resumable(tmp_path, make_simulator, png_data_uri):
    sim = make_simulator(run_latency=0.3)
    items = work_items(png_data_uri, 2)
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        _submit_and_stop(sim, ledger, items)
        import socket

        # a port bound but never listened on, held for the whole cancel (no other server can take it): every
        # connection is refused, the cancel never gets an answer
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}"
            runner = make_runner(sim.base_url, ledger, cancel_url=dead)
            submitted_handles(runner, ledger)
            runner._in_flight = {k: (a, dataclasses.replace(h, cancel_url=dead + urlsplit(h.cancel_url).path))
                                 for k, (a, h) in runner._in_flight.items()}
            runner.cancel_in_flight()
        assert Counter(e.state.value for e in ledger.entries_for_day(DAY)) == Counter({"submitted": 2})
        outcomes = make_runner(sim.base_url, ledger, owner="run-b").run(items)
        assert all(o.status == "completed" and o.decision == "resumed" for o in outcomes)
        assert sim.stats()["submits"] == 2


def test_confirmed_cancel_is_recorded_cancelled(tmp_path, make_simulator, png_data_uri):
    sim = make_simulator(run_latency=30.0)
    items = work_items(png_data_uri, 2)
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        _submit_and_stop(sim, ledger, items)
        runner = make_runner(sim.base_url, ledger)
        submitted_handles(runner, ledger)
        runner.cancel_in_flight()  # running jobs: CANCELLATION_REQUESTED
        assert Counter(e.state.value for e in ledger.entries_for_day(DAY)) == Counter({"cancelled": 2})


# ---------------------------------------------------------------- 7. the ledger fails mid-run
class _LedgerDiesAtSubmit(Ledger):
    """The database goes away right after fal accepted the submits (mark_submitted fails)."""

    def run_batch(self, calls):
        if any(name == "mark_submitted" for name, _, _ in calls):
            return [OperationalError("INSERT …", {}, sqlite3.OperationalError("disk I/O error"))] * len(calls)
        return super().run_batch(calls)


def test_ledger_failure_fails_the_run_and_the_paid_ids_are_resumed(tmp_path, make_simulator, png_data_uri):
    sim = make_simulator(run_latency=0.3)
    items = work_items(png_data_uri, 3)
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    with _LedgerDiesAtSubmit.open(url) as broken:
        with pytest.raises(LedgerUnavailable) as failure:
            make_runner(sim.base_url, broken).run(items)
    message = str(failure.value)
    assert "ledger" in message and "OperationalError" in message and "next run" in message
    assert sim.stats()["submits"] >= 1
    paid = sim.stats()["submits"]
    journal = tmp_path / "ledger.sqlite.rescued.jsonl"
    assert journal.exists() and len(journal.read_text().splitlines()) == paid
    for request_id in (line.split('"request_id": "')[1].split('"')[0] for line in journal.read_text().splitlines()):
        assert request_id in message  # a human can find them too
    with Ledger.open(url) as ledger:
        outcomes = make_runner(sim.base_url, ledger, owner="run-b").run(items)
        assert not journal.exists()
        assert all(o.status == "completed" for o in outcomes), [(o.status, o.error_message) for o in outcomes]
        assert Counter(o.decision for o in outcomes)["resumed"] == paid
    assert sim.stats()["submits"] == len(items), "every item paid for exactly once"
    assert sorted(Counter(sim.stats()["submits_by_prompt"]).values()) == [1] * len(items)


# ---------------------------------------------------------------- 3. backends never share results
def test_request_keys_separate_backends_but_keep_fals_keys():
    fields = dict(item_id="a", prompt="p", resolution="720p", aspect_ratio="16:9", duration=4,
                  image_sha256="0" * 64)
    fal, sim = (request_key("fal-ai/sora-2/image-to-video/pro", **fields, backend=b) for b in ("fal", "simulator"))
    assert fal != sim
    assert fal == request_key("fal-ai/sora-2/image-to-video/pro", **fields)  # keys of existing ledgers unchanged


def _spec(backend: str, item: str) -> RequestSpec:
    return RequestSpec.create("fal-ai/sora-2/image-to-video/pro", item_id=item, day=DAY, prompt=f"p {item}",
                              resolution="720p", aspect_ratio="16:9", duration=4, image_sha256="1" * 64,
                              used_openai_key=False, estimated_cost=1.2, backend=backend)


def test_budgets_count_only_real_spend(tmp_path):
    with Ledger.open(f"sqlite:///{tmp_path / 'l.sqlite'}") as ledger:
        specs = [_spec("simulator", "a"), _spec("fal", "b")]
        ledger.plan(specs)
        for spec in specs:
            ledger.claim(spec.request_key, owner="r", policy=ResubmitPolicy())
            ledger.mark_submitted(spec.request_key, 1, request_id=f"id-{spec.item_id}", status_url=None,
                                  response_url=None, cancel_url=None)
        assert ledger.spent(DAY, backend="fal") == pytest.approx(1.2)
        assert ledger.spent(DAY, backend="simulator") == pytest.approx(1.2)
        assert ledger.spent(DAY) == pytest.approx(2.4)


def test_old_ledgers_migrate_simulator_rows_to_their_own_keys(tmp_path):
    """A schema-1 ledger whose rows came from the simulator (plain-http queue and video URLs) is re-keyed; rows
    answered by fal (https) keep their keys, so nothing fal already delivered is paid for again."""
    path = tmp_path / "old.sqlite"
    old_sim, old_fal = _spec("fal", "from-sim"), _spec("fal", "from-fal")  # schema 1 had no backend in keys
    with Ledger.open(f"sqlite:///{path}") as ledger:
        ledger.plan([old_sim, old_fal])
        for spec, base in ((old_sim, "http://127.0.0.1:5000"), (old_fal, "https://queue.fal.run")):
            ledger.claim(spec.request_key, owner="r", policy=ResubmitPolicy())
            ledger.mark_submitted(spec.request_key, 1, request_id=f"id-{spec.item_id}",
                                  status_url=f"{base}/fal-ai/sora-2/requests/x/status", response_url=None,
                                  cancel_url=None)
            video = "http://127.0.0.1:5000/files/v.mp4" if base.startswith("http:") else "https://v3.fal.media/v.mp4"
            ledger.mark_completed(spec.request_key, 1, output={"video": {"url": video}, "video_id": "v"})
    with sqlite3.connect(path) as db:  # back to schema 1
        db.execute("ALTER TABLE requests DROP COLUMN backend")
        db.execute("DELETE FROM schema_version WHERE version >= 2")
    with Ledger.open(f"sqlite:///{path}") as ledger:
        assert ledger.schema_version == LATEST_VERSION
        by_item = {e.item_id: e for e in ledger.entries_for_day(DAY)}
        assert by_item["from-fal"].request_key == old_fal.request_key and by_item["from-fal"].backend == "fal"
        assert by_item["from-sim"].request_key == _spec("simulator", "from-sim").request_key
        assert by_item["from-sim"].backend == "simulator" and by_item["from-sim"].state == RequestState.COMPLETED
        assert [a.request_id for a in ledger.history(by_item["from-sim"].request_key)] == ["id-from-sim"]
        assert ledger.spent(DAY, backend="fal") == pytest.approx(1.2)


# ---------------------------------------------------------------- 7, for real: PostgreSQL goes away mid-run
@pytest.fixture
def pg_database(new_database):
    return new_database("outage")


def test_ledger_outage_mid_run_fails_the_run_and_the_next_run_resumes(tmp_path, make_simulator, pg_database):
    """The ledger's PostgreSQL goes away (a cut connection) while requests are in flight: the run exits non-zero
    saying so, and once the database is back the next run resumes every paid request: one submit per item."""
    from tests.support.fixtures import catalog_rows, make_project
    from tests.pipeline_helpers import subprocess_env
    from tests.tcp_proxy import TcpProxy

    sim = make_simulator(run_latency=4.0)
    proxy = TcpProxy((pg_database.host or "127.0.0.1", pg_database.port or 5432))
    try:
        project = make_project(tmp_path, catalog_rows(n=6))
        project["ledger_url"] = pg_database.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
        env = subprocess_env(project, sim)
        proc = subprocess.Popen([sys.executable, str(REPO / "tests/run_day.py"), DAY], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while sim.stats()["submits"] < 6:
            assert time.monotonic() < deadline and proc.poll() is None, "never got 6 requests in flight"
            time.sleep(0.05)
        time.sleep(0.5)  # the ids are recorded; the run is waiting on fal
        proxy.cut()
        out, err = proc.communicate(timeout=180)
        assert proc.returncode != 0, f"a run whose ledger failed must not succeed\n{out}\n{err}"
        assert "ledger" in err and "next run resumes" in err, err[-4000:]
        proxy.restore()
        rerun = subprocess.run([sys.executable, str(REPO / "tests/run_day.py"), DAY], env=env, cwd=REPO,
                               capture_output=True, text=True, timeout=240)
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-4000:]
        assert sim.stats()["submits"] == 6 and set(Counter(sim.stats()["submits_by_prompt"]).values()) == {1}
        with Ledger.open(project["ledger_url"]) as ledger:
            assert Counter(e.state.value for e in ledger.entries_for_day(DAY)) == Counter({"completed": 6})
    finally:
        proxy.close()


# ---------------------------------------------------------------- issue 20.1: a SQLite ledger deleted mid-run
def _remove_ledger_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _forget_ledger(project: dict) -> None:
    """What a new process does: open the ledger afresh (this process keeps one engine per URL)."""
    import sora_pipeline.defs.database_resource as dr

    opened = dr._OPENED.pop(project["ledger_url"], None)
    if opened is not None:
        opened.database.close()


def test_sqlite_ledger_deleted_mid_run_fails_the_run_and_the_next_run_pays_nothing(tmp_path, make_simulator):
    """rm of the ledger (and -wal/-shm) while the day's requests run at fal: the run fails naming the ledger file
    (and where its content was saved); with the saved copy put back, the next run resumes and submits nothing.
    Then, the ledger lost between runs: the next run recovers the day from the warehouse and submits nothing."""
    import threading

    from tests.support.fixtures import DAY as PDAY, make_project, materialize_day, resources

    sim = make_simulator(run_latency=1.5)
    project = make_project(tmp_path)
    ledger_file = Path(project["ledger_url"].removeprefix("sqlite:///"))
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(r=materialize_day(resources(sim.base_url, project),
                                                                          raise_on_error=False)))
    run.start()
    deadline = time.monotonic() + 60
    while sim.stats()["submits"] < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.stats()["submits"] == 4
    _remove_ledger_files(ledger_file)  # every request is running at fal: nothing recorded their end yet
    run.join(120)
    assert not result["r"].success
    failures = [e.event_specific_data for e in result["r"].all_events if e.event_type_value == "STEP_FAILURE"]
    (failure,) = [f.user_failure_data.description for f in failures if f.user_failure_data]
    assert f"the ledger file {ledger_file} was deleted" in failure and "\n" not in failure
    (saved,) = ledger_file.parent.glob(f"{ledger_file.name}.saved-*")
    assert str(saved) in failure
    _remove_ledger_files(ledger_file)  # the empty file a later connection may have left
    saved.rename(ledger_file)  # what the message says to do
    _forget_ledger(project)  # the next run is a new process: it opens the file afresh
    again = materialize_day(resources(sim.base_url, project))
    assert again.success and sim.stats()["submits"] == 4  # resumed, not paid again
    # the ledger lost between runs: the warehouse's generations table brings the day back
    _remove_ledger_files(ledger_file)
    _forget_ledger(project)
    third = materialize_day(resources(sim.base_url, project))
    assert third.success and sim.stats()["submits"] == 4  # nothing submitted again
    with Ledger.open(project["ledger_url"]) as ledger:
        assert [e.state for e in ledger.entries_for_day(PDAY)] == [RequestState.COMPLETED] * 4
