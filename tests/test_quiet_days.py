"""Quiet days: a day with no catalog rows, or only rejected rows, materializes successfully with empty tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sora_pipeline.warehouse.tables import read_day_partition
from tests.pipeline_helpers import check_results, materializations
from tests.support.fixtures import DAY, catalog_rows, make_project, materialize_day, resources

OTHER_DAY = "2026-11-19"


@pytest.mark.parametrize("kind", ["no_rows", "all_rejected"])
def test_a_quiet_day_materializes_with_empty_tables(tmp_path, simulator, kind):
    rows = catalog_rows(day=OTHER_DAY, n=2)  # the catalog has rows, but none on DAY
    if kind == "all_rejected":
        rows += [dict(r, duration=5) for r in catalog_rows(n=2, prefix="bad")]
    project = make_project(tmp_path, rows)
    result = materialize_day(resources(simulator.base_url, project))
    assert result.success
    assert simulator.stats()["submits"] == 0
    for table in ("catalog_items", "generations", "failed_generations", "video_metadata"):
        data = read_day_partition(project["warehouse_uri"], table, DAY)
        assert data.num_rows == 0, table
        assert "item_id" in data.schema.names, table
    rejected = read_day_partition(project["warehouse_uri"], "rejected_items", DAY)
    assert rejected.num_rows == (2 if kind == "all_rejected" else 0)
    (gen,) = materializations(result, "generations")
    assert gen.metadata["submitted"].value == 0
    (stats,) = materializations(result, "generation_daily_stats")
    checks = check_results(result)
    assert all(checks[name] for name in checks if name != "no_rejected_rows"), checks


@pytest.mark.timeout(400)
def test_daemon_backfill_over_a_calendar_with_gaps_succeeds_every_day(tmp_path, make_simulator):
    """7 days through `dagster job backfill` and `dagster-daemon run` on a local instance: 3 days with no rows,
    1 with only rejected rows, 3 with videos. Every run succeeds; only the valid items are submitted, once."""
    import datetime as dt
    import shutil
    import subprocess
    import time

    from dagster import DagsterRunStatus
    from tests.pg_helpers import REPO, base_env, start_process, stop_process

    bin_dir = Path(sys.executable).parent

    days = [(dt.date(2026, 11, 20) + dt.timedelta(days=i)).isoformat() for i in range(7)]
    rows = [r for i in (0, 3, 6) for r in catalog_rows(day=days[i], n=2, prefix=f"d{i}_")]
    rows += [dict(r, duration=5) for r in catalog_rows(day=days[4], n=2, prefix="bad")]  # only rejected rows
    project = make_project(tmp_path, rows)
    sim = make_simulator()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = base_env(DAGSTER_HOME=str(home), SORA_FAL_QUEUE_URL=sim.base_url, SORA_LEDGER_URL=project["ledger_url"],
                   SORA_CATALOG_URI=project["catalog_uri"], SORA_WAREHOUSE_URI=project["warehouse_uri"],
                   SORA_POLL_INTERVAL="0.05")
    with dg_instance(home) as instance:  # storage created once, before two processes race to create it
        instance.get_runs()
    daemon_log = tmp_path / "daemon.log"
    daemon = start_process([str(bin_dir / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")], env, daemon_log)
    try:
        launched = subprocess.run(
            [str(bin_dir / "dagster"), "job", "backfill", "-w", str(REPO / "workspace.yaml"), "-j",
             "daily_generation_job", "--from", days[0], "--to", days[-1], "--noprompt"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert launched.returncode == 0, launched.stdout + launched.stderr
        with dg_instance(home) as instance:
            deadline = time.monotonic() + 330
            while time.monotonic() < deadline:
                assert daemon.poll() is None, f"daemon exited:\n{daemon_log.read_text()[-3000:]}"
                runs = instance.get_runs()
                done = [r for r in runs if r.is_finished]
                if len(runs) == len(days) and len(done) == len(days):
                    break
                time.sleep(1)
            else:
                raise AssertionError(f"backfill did not finish: {[(r.run_id, r.status) for r in runs]}\n"
                                     f"{daemon_log.read_text()[-3000:]}")
            statuses = {r.tags.get("dagster/partition"): r.status for r in runs}
    finally:
        stop_process(daemon)
    assert statuses == {d: DagsterRunStatus.SUCCESS for d in days}, statuses
    for i, d in enumerate(days):
        videos = read_day_partition(project["warehouse_uri"], "video_metadata", d)
        assert videos.num_rows == (2 if i in (0, 3, 6) else 0), d
    assert sim.stats()["submits"] == 6 and set(sim.stats()["submits_by_prompt"].values()) == {1}


def dg_instance(home):
    import os
    from contextlib import contextmanager

    from dagster import DagsterInstance

    @contextmanager
    def opened():
        old = os.environ.get("DAGSTER_HOME")
        os.environ["DAGSTER_HOME"] = str(home)
        try:
            with DagsterInstance.get() as instance:
                yield instance
        finally:
            if old is None:
                os.environ.pop("DAGSTER_HOME", None)
            else:
                os.environ["DAGSTER_HOME"] = old
    return opened()
