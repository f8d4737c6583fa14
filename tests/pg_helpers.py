"""Helpers of the PostgreSQL tests (tests/test_postgres.py) and the deploy-config checks
(tests/test_deploy_config.py): deploy/ paths, instance files and env for a database, the environment of a
subprocess, step timings from Dagster's event log, and starting/stopping the code server and daemon."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import yaml
from dagster import DagsterEventType, DagsterInstance
from sqlalchemy.engine import URL

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def storage_file(path: Path, postgres: dict) -> Path:
    path.write_text(yaml.safe_dump({"storage": {"postgres": postgres}, "telemetry": {"enabled": False}}))
    return path


def url_string(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def instance_env(db: URL) -> dict[str, str]:
    """The variables deploy/dagster.yaml reads, for database `db`."""
    return {"DAGSTER_PG_HOST": db.host or "127.0.0.1", "DAGSTER_PG_PORT": str(db.port or 5432),
            "DAGSTER_PG_USERNAME": db.username or "postgres", "DAGSTER_PG_PASSWORD": db.password or "",
            "DAGSTER_PG_DB": str(db.database)}


def dagster_home(tmp_path: Path, **overrides) -> Path:
    """A DAGSTER_HOME holding deploy/dagster.yaml (with `concurrency.runs`/run_coordinator overrides for speed)."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    doc = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    for dotted, value in overrides.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    if overrides:
        (home / "dagster.yaml").write_text(yaml.safe_dump(doc))
    else:
        shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    return home


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORA_", "FAL_", "DAGSTER_"))}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


def step_intervals(instance: DagsterInstance, run_ids, step_key: str = "generations") -> list[tuple[float, float]]:
    """(start, end) of `step_key` in each run, from the event log (STEP_START → STEP_SUCCESS/FAILURE)."""
    out = []
    for run_id in run_ids:
        records = instance.all_logs(run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS,
                                                     DagsterEventType.STEP_FAILURE})
        times = {r.dagster_event.event_type: r.timestamp for r in records if r.step_key == step_key}
        end = times.get(DagsterEventType.STEP_SUCCESS) or times.get(DagsterEventType.STEP_FAILURE)
        assert DagsterEventType.STEP_START in times and end, f"run {run_id}: no complete {step_key} step"
        out.append((times[DagsterEventType.STEP_START], end))
    return sorted(out)


def overlaps(intervals: list[tuple[float, float]]) -> bool:
    return any(b[0] < a[1] for a, b in zip(intervals, intervals[1:]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # SIGINT reset to default so SIGTERM (mapped to the SIGINT handler by Dagster) stops the process cleanly
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_for_code_server(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    from dagster._grpc.client import DagsterGrpcClient

    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"code server exited:\n{log.read_text()[-3000:]}"
        try:
            client.ping("ready")
            return
        except Exception:
            time.sleep(0.25)
    raise AssertionError(f"code server not ready:\n{log.read_text()[-3000:]}")
