"""Shared fixtures: a real simulator on loopback, small real images, temp Dagster homes, the PostgreSQL server of
the PostgreSQL tests (`pg_admin`), and the one-line test count `make test` prints (`SORA_TEST_SUMMARY`)."""

from __future__ import annotations

import base64
import io
import os
import uuid

import pytest
from PIL import Image
from sqlalchemy import create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

from sora_pipeline.simulator import SimulatorConfig, SimulatorServer

# no test may reach the real service or read a developer's key
for _name in ("FAL_KEY", "SORA_FAL_QUEUE_URL", "SORA_OPENAI_API_KEY", "SORA_LEDGER_URL"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def video_cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("sim-video-cache"))


@pytest.fixture
def make_simulator(video_cache_dir):
    """Start simulators with custom configs; all are stopped at the end of the test."""
    started: list[SimulatorServer] = []

    def make(**config) -> SimulatorServer:
        config.setdefault("run_latency", 0.2)
        config.setdefault("video_cache_dir", video_cache_dir)
        server = SimulatorServer(SimulatorConfig(**config)).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def simulator(make_simulator) -> SimulatorServer:
    return make_simulator()


def png_bytes(width: int = 64, height: int = 36, color=(200, 80, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def png_data_uri() -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


# ---------------------------------------------------------------- PostgreSQL: skip locally, fail on CI
PG_ENV = "SORA_TEST_POSTGRES_URL"
PG_DEFAULT = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def postgres_unavailable(reason: str) -> None:
    """The one place that decides what a missing PostgreSQL means: a skip, or a failure when `CI` is set."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} — CI is set, so the PostgreSQL tests fail instead of skipping", pytrace=False)
    pytest.skip(f"{reason}; set {PG_ENV} to the admin URL of a reachable server (with CI set, this is a failure)")


@pytest.fixture(scope="session")
def pg_admin():
    """(AUTOCOMMIT engine, URL) on the admin database at $SORA_TEST_POSTGRES_URL; tests create their own databases.

    An unreachable or refusing server (connection refused, authentication failed, no driver) skips the test, or
    fails it when the `CI` variable is set, with the server's answer as the reason."""
    url = make_url(os.environ.get(PG_ENV, PG_DEFAULT))
    shown = url.render_as_string(hide_password=True)
    engine, problem = None, None
    try:
        engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        engine.connect().close()
    except (DBAPIError, ImportError) as exc:
        cause = getattr(exc, "orig", None) or exc
        problem = " ".join(str(cause).split()) or type(cause).__name__
    if problem is not None:  # outside `except`: the reason alone, without the chained traceback
        if engine is not None:
            engine.dispose()
        postgres_unavailable(f"PostgreSQL at {shown} is unavailable ({problem})")
    yield engine, url
    engine.dispose()


@pytest.fixture
def new_database(pg_admin):
    """`new_database("label")` → URL of a fresh database; every one is dropped at the end of the test."""
    engine, url = pg_admin
    created: list[str] = []

    def make(label: str) -> URL:
        name = f"sora_test_{label}_{uuid.uuid4().hex[:10]}"
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        return url.set(database=name)

    yield make
    with engine.connect() as conn:
        for name in created:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    """A ledger URL on each backend: a SQLite file, and a fresh PostgreSQL database (`new_database`)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    url = request.getfixturevalue("new_database")("ledger")
    return url.render_as_string(hide_password=False)


# ---------------------------------------------------------------- `make test: N passed, M skipped, K failed`
def pytest_unconfigure(config):
    """With SORA_TEST_SUMMARY set (the Makefile sets "make test"), print the counts as the very last line."""
    label = os.environ.get("SORA_TEST_SUMMARY")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if not label or reporter is None:
        return
    counts = {k: len(reporter.stats.get(k, [])) for k in ("passed", "skipped", "failed", "error", "xfailed",
                                                          "xpassed")}
    parts = [f"{counts['passed']} passed", f"{counts['skipped']} skipped", f"{counts['failed']} failed"]
    parts += [f"{n} {k if k != 'error' else 'errors'}" for k, n in counts.items()
              if n and k in ("error", "xfailed", "xpassed")]
    reporter.write_line(f"{label}: {', '.join(parts)}", bold=True, yellow=bool(counts["skipped"]),
                        red=bool(counts["failed"] or counts["error"]))
