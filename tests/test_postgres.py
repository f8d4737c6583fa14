"""Scale-out on a real PostgreSQL: the production instance config (deploy/dagster.yaml), a shared request ledger, two
processes on one day, and the daemon path (backfill → queued runs → code server) under the `fal_sora` pool limit.

Each test creates its own databases with `CREATE DATABASE` on the admin URL (`SORA_TEST_POSTGRES_URL`, default
postgresql+psycopg2://postgres@127.0.0.1:5432/postgres) and drops them at the end. Without a reachable server the
PostgreSQL tests skip with a message naming that variable, or fail when `CI` is set (conftest's `pg_admin`). The
config checks that need no server: tests/test_deploy_config.py; helpers: tests/pg_helpers.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from sora_pipeline.ledger import Ledger, RequestSpec, RequestState, ResubmitPolicy
from sora_pipeline.warehouse.tables import read_day_partition
from tests.pg_helpers import (
    DEPLOY,
    REPO,
    base_env,
    dagster_home,
    free_port,
    instance_env,
    overlaps,
    start_process,
    step_intervals,
    stop_process,
    storage_file,
    url_string,
    wait_for_code_server,
)
from tests.support.fixtures import DAY, catalog_rows, make_project, materialize_day, resources

BIN = Path(sys.executable).parent
#: run config: steps in the run's own process (a subprocess per step costs ~3 s each on a 2-core machine)
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}


# ---------------------------------------------------------------- PostgreSQL fixtures (pg_admin: conftest.py)
@pytest.fixture
def pg_instance(tmp_path, new_database, monkeypatch):
    """`pg_instance(**overrides)` → (DagsterInstance on a fresh PostgreSQL database from deploy/dagster.yaml, env)."""
    made: list[DagsterInstance] = []

    def make(**overrides) -> tuple[DagsterInstance, dict[str, str]]:
        db = new_database("dagster")
        env = instance_env(db)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        home = dagster_home(tmp_path, **overrides)
        env["DAGSTER_HOME"] = str(home)
        instance = DagsterInstance.from_config(str(home))
        made.append(instance)
        return instance, env

    yield make
    for instance in made:
        instance.dispose()


# ---------------------------------------------------------------- (0) URL forms: the ledger, the Dagster instance
@pytest.mark.parametrize("scheme, driver", [("postgresql", "psycopg2"), ("postgresql+psycopg2", "psycopg2"),
                                            ("postgresql+psycopg", "psycopg")])
def test_ledger_on_each_postgresql_url_form(new_database, scheme, driver):
    """A plain postgresql:// means psycopg2 (as for Dagster's storage); a URL naming psycopg 3 gets it."""
    url = url_string(new_database("ledger").set(drivername=scheme))
    spec = RequestSpec.create("fal-ai/sora-2/image-to-video/pro", item_id="u0", day=DAY, prompt="p", resolution="720p",
                              aspect_ratio="16:9", duration=4, image_sha256="ab" * 32, used_openai_key=False,
                              estimated_cost=1.0)
    with Ledger.open(url) as ledger:
        assert ledger._engine.dialect.driver == driver
        ledger.plan([spec])
        decision, entry = ledger.claim(spec.request_key, owner="o", policy=ResubmitPolicy())
        assert decision.name == "SUBMIT" and entry.attempt == 1
    with Ledger.open(url) as again:  # a second process on the same database: the schema is there, the claim too
        assert again.counts_by_state(DAY)[RequestState.SUBMITTING.value] == 1


#: Dagster's storage as its deployment docs write it: the postgres_db fields (no scheme), or a plain postgres_url
DOCUMENTED_FORMS = ("postgres_db", "postgres_url")


def documented_storage(db, form: str) -> dict:
    if form == "postgres_url":
        return {"postgres_url": url_string(db.set(drivername="postgresql"))}
    return {"postgres_db": {"username": db.username or "postgres", "password": db.password or "",
                            "hostname": db.host or "127.0.0.1", "db_name": db.database, "port": db.port or 5432}}


@pytest.mark.parametrize("form", [*DOCUMENTED_FORMS, "postgres_url+psycopg2"])
def test_dagster_instance_on_each_documented_form(tmp_path, new_database, monkeypatch, form):
    """DAGSTER_HOME with `storage.postgres` written as Dagster's docs show it (and with the driver named): a run,
    its events (NOTIFY run_events) and an asset materialization."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    db = new_database("dagster")
    storage = ({"postgres_url": url_string(db.set(drivername="postgresql+psycopg2"))} if "+" in form
               else documented_storage(db, form))
    storage_file(home / "dagster.yaml", storage)
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    @dg.asset
    def one() -> int:
        return 1

    instance = DagsterInstance.get()
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = dg.materialize([one], instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id).status == DagsterRunStatus.SUCCESS
        assert instance.get_latest_materialization_event(dg.AssetKey("one")) is not None
    finally:
        instance.dispose()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("form", DOCUMENTED_FORMS)
def test_daemon_two_runs_of_one_day_on_documented_storage(tmp_path, new_database, monkeypatch, make_simulator, form):
    """deploy/dagster.yaml with its storage written as Dagster's docs show it, the daemon and a code server, and two
    runs of one day queued at once (the one-run-per-day limit lifted, two fal_sora slots): both succeed, and the
    shared ledger lets each item be submitted once."""
    from sora_pipeline.definitions import defs

    sim = make_simulator(run_latency=3.0)
    db = new_database("dagster")
    home = dagster_home(tmp_path, **{"storage.postgres": documented_storage(db, form),
                                     "concurrency.runs.tag_concurrency_limits": [],
                                     "run_coordinator.config.dequeue_interval_seconds": 1})
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = DagsterInstance.get()
    ledger_db = new_database("ledger")
    project = make_project(tmp_path)
    port = free_port()
    penv = base_env(DAGSTER_HOME=str(home), SORA_FAL_QUEUE_URL=sim.base_url,
                    SORA_LEDGER_URL=url_string(ledger_db.set(drivername="postgresql")),
                    SORA_CATALOG_URI=project["catalog_uri"], SORA_WAREHOUSE_URI=project["warehouse_uri"],
                    SORA_POLL_INTERVAL="0.1", SORA_CODE_SERVER_HOST="127.0.0.1", SORA_CODE_SERVER_PORT=str(port))
    try:
        instance.event_log_storage.set_concurrency_slots("fal_sora", 2)  # both generation steps may run
        graph = defs.resolve_asset_graph()
        daily = sorted(k for k in graph.materializable_asset_keys if graph.get(k).partitions_def is not None)
        with code_server_and_daemon(tmp_path, penv, port) as daemon_log:
            ids = [queue_backfill(instance, graph, daily, [DAY], title=f"run {n}") for n in "ab"]
            runs = wait_for_backfill_runs(instance, ids, 2, daemon_log)
        assert all(r.status == DagsterRunStatus.SUCCESS for r in runs)
        spans = sorted((instance.get_run_record_by_id(r.run_id).start_time,
                        instance.get_run_record_by_id(r.run_id).end_time) for r in runs)
        assert overlaps(spans), f"the two runs did not run at the same time: the test proved nothing ({spans})"
        gen = step_intervals(instance, [r.run_id for r in runs])
    finally:
        instance.dispose()
    stats = sim.stats()
    assert stats["submits"] == 4 and set(stats["submits_by_prompt"].values()) == {1}, stats["submits_by_prompt"]
    with Ledger.open(url_string(ledger_db)) as ledger:
        assert ledger.dialect == "postgresql" and ledger._engine.dialect.driver == "psycopg2"
        entries = ledger.entries_for_day(DAY)
        assert len(entries) == 4 and all(e.state == RequestState.COMPLETED and e.attempt == 1 for e in entries)
    assert len(read_day_partition(project["warehouse_uri"], "video_metadata", DAY)) == 4
    print(f"\n[postgres {form}] two daemon runs of one day: generation steps {gen} (overlap: {overlaps(gen)})")


# ---------------------------------------------------------------- (1) a sample day on a PostgreSQL instance
def test_sample_day_on_postgres_instance_and_ledger(tmp_path, pg_instance, new_database, simulator):
    instance, _env = pg_instance()
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    ledger_db = new_database("ledger")
    project = dict(make_project(tmp_path), ledger_url=url_string(ledger_db))
    started = time.monotonic()
    result = materialize_day(resources(simulator.base_url, project), instance=instance)
    elapsed = time.monotonic() - started
    assert result.success
    rows = read_day_partition(project["warehouse_uri"], "video_metadata", DAY).to_pylist()
    assert sorted(r["item_id"] for r in rows) == ["it0", "it1", "it2", "it3"]
    # the run, its events and the asset's partition live in PostgreSQL
    run_id = result.run_id
    engine = create_engine(url_string(make_url(f"postgresql+psycopg2://{_env['DAGSTER_PG_USERNAME']}@"
                                               f"{_env['DAGSTER_PG_HOST']}:{_env['DAGSTER_PG_PORT']}/"
                                               f"{_env['DAGSTER_PG_DB']}")))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs WHERE run_id = :r"), {"r": run_id}).scalar() == 1
        n_events = conn.execute(text("SELECT count(*) FROM event_logs WHERE run_id = :r"), {"r": run_id}).scalar()
    engine.dispose()
    assert n_events > 20
    latest = instance.get_latest_materialization_event(dg.AssetKey("video_metadata"))
    assert latest is not None and latest.dagster_event.partition == DAY
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.SUCCESS
    # ... and so does the request ledger
    with Ledger.open(url_string(ledger_db)) as ledger:
        assert ledger.dialect == "postgresql"
        assert ledger.counts_by_state(DAY)[RequestState.COMPLETED.value] == 4
        assert all(len(ledger.history(e.request_key)) == 1 for e in ledger.entries_for_day(DAY))
    assert simulator.stats()["submits"] == 4
    print(f"\n[capacity] one 4-item day on the PostgreSQL instance: {elapsed:.1f} s, {n_events} event-log rows")


# ---------------------------------------------------------------- (2) two processes, one day, one ledger
def test_two_processes_same_day_submit_each_item_once(tmp_path, pg_instance, new_database, make_simulator):
    sim = make_simulator(run_latency=3.0)  # long enough that both generation steps are in flight together
    instance, env = pg_instance()
    instance.event_log_storage.set_concurrency_slots("fal_sora", 2)  # let both steps run; only the ledger guards
    ledger_db = new_database("ledger")
    project = make_project(tmp_path)
    cmd = [str(BIN / "dagster"), "asset", "materialize", "-m", "sora_pipeline.definitions",
           "--select", "+video_metadata", "--partition", DAY, "--config-json", json.dumps(IN_PROCESS)]
    procs = []
    for name in ("a", "b"):
        penv = base_env(**env, SORA_FAL_QUEUE_URL=sim.base_url, SORA_LEDGER_URL=url_string(ledger_db),
                        SORA_CATALOG_URI=project["catalog_uri"], SORA_WAREHOUSE_URI=str(tmp_path / f"wh-{name}"),
                        SORA_POLL_INTERVAL="0.1")
        procs.append(subprocess.Popen(cmd, env=penv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = [p.communicate(timeout=240) for p in procs]
    if os.environ.get("SORA_TEST_DUMP"):
        for _o, e in outputs:
            print(e[-20000:])
    for p, (_out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    stats = sim.stats()
    prompts = {r["prompt"] for r in catalog_rows()}
    assert stats["submits_by_prompt"] == {p: 1 for p in prompts}, stats["submits_by_prompt"]
    assert stats["submits"] == 4
    with Ledger.open(url_string(ledger_db)) as ledger:
        entries = ledger.entries_for_day(DAY)
        assert len(entries) == 4 and all(e.state == RequestState.COMPLETED and e.attempt == 1 for e in entries)
    a, b = (read_day_partition(str(tmp_path / f"wh-{n}"), "video_metadata", DAY).to_pylist() for n in "ab")
    assert {(r["item_id"], r["request_id"]) for r in a} == {(r["item_id"], r["request_id"]) for r in b}
    assert len(a) == 4
    runs = instance.get_run_records()
    assert len(runs) == 2 and all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in runs)
    assert overlaps(step_intervals(instance, [r.dagster_run.run_id for r in runs])), \
        "the two generation steps did not run at the same time: the test proved nothing"


# ---------------------------------------------------------------- (3) the daemon path with the pool limit
@pytest.mark.timeout(300)
def test_daemon_backfill_of_three_days_respects_the_pool(tmp_path, pg_instance, new_database, make_simulator):
    from dagster._core.execution.backfill import BulkActionStatus

    from sora_pipeline.definitions import defs

    # generation steps (~5 s) much longer than the launch stagger of the runs, so without the limit they overlap
    sim = make_simulator(run_latency=4.0)
    instance, env = pg_instance(**{"run_coordinator.config.dequeue_interval_seconds": 1})
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1  # from deploy/dagster.yaml
    days = ["2026-11-20", "2026-11-21", "2026-11-22"]
    rows = [r for i, d in enumerate(days) for r in catalog_rows(day=d, n=2, prefix=f"d{i}_")]
    project = make_project(tmp_path, rows)
    ledger_db = new_database("ledger")
    port = free_port()
    penv = base_env(**env, SORA_FAL_QUEUE_URL=sim.base_url, SORA_LEDGER_URL=url_string(ledger_db),
                    SORA_CATALOG_URI=project["catalog_uri"], SORA_WAREHOUSE_URI=project["warehouse_uri"],
                    SORA_POLL_INTERVAL="0.1", SORA_CODE_SERVER_HOST="127.0.0.1", SORA_CODE_SERVER_PORT=str(port))
    started = time.monotonic()
    graph = defs.resolve_asset_graph()
    daily = sorted(k for k in graph.materializable_asset_keys if graph.get(k).partitions_def is not None)
    with code_server_and_daemon(tmp_path, penv, port) as daemon_log:
        backfill_id = queue_backfill(instance, graph, daily, days, title="three days")
        wait_for_backfill_runs(instance, [backfill_id], 3, daemon_log)
        elapsed = time.monotonic() - started
    flt = RunsFilter(tags={"dagster/backfill": backfill_id})
    runs = instance.get_runs(filters=flt)
    # multi_run(1) backfill runs carry a one-day range
    assert sorted(r.tags["dagster/asset_partition_range_start"] for r in runs) == days
    assert all(r.tags["dagster/asset_partition_range_end"] == r.tags["dagster/asset_partition_range_start"]
               for r in runs)
    assert instance.get_backfill(backfill_id).status in (BulkActionStatus.REQUESTED, BulkActionStatus.COMPLETED,
                                                         BulkActionStatus.COMPLETED_SUCCESS)
    gen = step_intervals(instance, [r.run_id for r in runs])
    assert not overlaps(gen), f"generation steps overlapped despite the fal_sora limit of 1: {gen}"
    # the runs themselves were in progress together: the pool, not the run queue, serialized generation
    run_spans = sorted((instance.get_run_record_by_id(r.run_id).start_time,
                        instance.get_run_record_by_id(r.run_id).end_time) for r in runs)
    assert overlaps(run_spans), run_spans
    for d in days:
        assert len(read_day_partition(project["warehouse_uri"], "video_metadata", d)) == 2
    stats = sim.stats()
    assert stats["submits"] == 6 and set(stats["submits_by_prompt"].values()) == {1}
    print(f"\n[capacity] daemon backfill of 3 days × 2 items: {elapsed:.1f} s from code-server start; "
          f"generation steps {[round(b - a, 2) for a, b in gen]} s, serial")


# ---------------------------------------------------------------- webhook receivers sharing the PostgreSQL ledger
def test_webhook_replicas_on_a_shared_postgres_ledger(new_database, make_simulator):
    """Two receiver replicas on one PostgreSQL ledger get the same signed delivery at once: one hint each."""
    import asyncio
    import hashlib
    from datetime import UTC, datetime

    import httpx

    from sora_pipeline.ledger import RequestSpec, ResubmitPolicy
    from sora_pipeline.simulator.webhook_delivery import sign_headers, signing_key
    from sora_pipeline.webhooks.signatures import parse_public_key
    from sora_pipeline.webhooks.receiver import WebhookConfig, WebhookServer

    sim = make_simulator()  # only for its signing key
    key = signing_key(sim.config)
    config = WebhookConfig(public_keys=[parse_public_key(sim.webhook_public_key)])
    url = url_string(new_database("ledger"))
    with Ledger.open(url) as ledger, Ledger.open(url) as l1, Ledger.open(url) as l2, \
            WebhookServer(l1, config) as r1, WebhookServer(l2, config) as r2:
        specs = [RequestSpec.create("fal-ai/sora-2/image-to-video/pro", item_id=f"w{i}", day=DAY, prompt=f"p{i}",
                                    resolution="720p", aspect_ratio="16:9", duration=4,
                                    image_sha256=hashlib.sha256(b"img").hexdigest(), used_openai_key=False,
                                    estimated_cost=1.2) for i in range(20)]
        ledger.plan(specs)
        for s in specs:
            _, e = ledger.claim(s.request_key, owner="run", policy=ResubmitPolicy())
            ledger.mark_submitted(s.request_key, e.attempt, request_id=f"req-{s.item_id}", status_url=None,
                                  response_url=None, cancel_url=None, submitted_at=datetime.now(UTC))
        bodies = {s.request_key: json.dumps({
            "request_id": f"req-{s.item_id}", "gateway_request_id": "g", "status": "OK", "error": None,
            "payload": {"video": {"url": f"https://cdn.example/{s.item_id}.mp4", "duration": 4.0},
                        "video_id": f"v-{s.item_id}"}}).encode() for s in specs}

        async def deliver_everything_twice():
            async with httpx.AsyncClient(trust_env=False) as c:
                calls = []
                for s in specs:
                    body = bodies[s.request_key]
                    headers = sign_headers(key, f"req-{s.item_id}", "sim-user", body)
                    calls += [c.post(r.url, content=body, headers=headers) for r in (r1, r2)]
                return await asyncio.gather(*calls)

        answers = asyncio.run(deliver_everything_twice())
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
        for s in specs:  # webhooks are hints the generation step confirms with fal: never an outcome
            (attempt,) = ledger.history(s.request_key)
            assert attempt.state == RequestState.SUBMITTED and attempt.artifacts["webhook"]["status"] == "OK"
        counts = Counter(r1.stats()) + Counter(r2.stats())
        assert counts["received"] == 40 and counts["hint"] + counts["duplicate"] == 40


# ---------------------------------------------------------------- the daemon path: helpers
@contextlib.contextmanager
def code_server_and_daemon(tmp_path: Path, penv: dict[str, str], port: int):
    """A code server on `port` and `dagster-daemon run` (deploy/workspace.yaml), stopped on exit; yields the
    daemon's log file."""
    code_log, daemon_log = tmp_path / "code_server.log", tmp_path / "daemon.log"
    code = start_process([str(BIN / "dagster"), "api", "grpc", "-m", "sora_pipeline.definitions", "-h", "127.0.0.1",
                          "-p", str(port)], penv, code_log)
    daemon = None
    try:
        wait_for_code_server(port, code, code_log)
        daemon = start_process([str(BIN / "dagster-daemon"), "run", "-w", str(DEPLOY / "workspace.yaml")], penv,
                               daemon_log)
        yield daemon_log
        assert daemon.poll() is None, f"daemon exited:\n{daemon_log.read_text()[-3000:]}"
    finally:
        if daemon is not None:
            stop_process(daemon)
        stop_process(code)


def queue_backfill(instance: DagsterInstance, graph, assets, days: list[str], *, title: str) -> str:
    """A backfill of `assets` over `days` (the daemon turns it into one queued run per day); returns its id."""
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    backfill_id = make_new_backfill_id()
    instance.add_backfill(PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id, asset_graph=graph, partition_names=days, asset_selection=assets,
        backfill_timestamp=time.time(), tags={}, dynamic_partitions_store=instance, all_partitions=False,
        title=title, description=None, run_config=IN_PROCESS))
    return backfill_id


def wait_for_backfill_runs(instance: DagsterInstance, backfill_ids: list[str], n: int, daemon_log: Path,
                           timeout: float = 240) -> list:
    """The backfills' `n` runs once all succeeded; fails at the first failed run, naming it."""
    deadline = time.monotonic() + timeout
    runs: list = []
    while time.monotonic() < deadline:
        runs = [r for b in backfill_ids for r in instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": b}))]
        failed = [r for r in runs if r.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)]
        assert not failed, f"runs failed: {[r.run_id for r in failed]}\n{daemon_log.read_text()[-3000:]}"
        if len(runs) == n and all(r.status == DagsterRunStatus.SUCCESS for r in runs):
            return runs
        time.sleep(0.5)
    raise AssertionError(f"backfill did not finish: {[(r.run_id, r.status) for r in runs]}\n"
                         f"{daemon_log.read_text()[-4000:]}")
