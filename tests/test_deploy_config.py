"""The deploy/ configs, checked without a server: every instance file validates (deploy/check_config.py), the
checker catches mistakes and refuses dagster-postgres on psycopg 3, the workspace points at a code server, and a
ledger URL without a driver picks an installed one. The PostgreSQL tests themselves: tests/test_postgres.py."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from sora_pipeline.coordination.engine import make_engine
from tests.pg_helpers import DEPLOY, storage_file

sys.path.insert(0, str(DEPLOY))
from check_config import check_instance_file

INSTANCE_FILES = ["dagster.yaml", "dagster.docker.yaml", "dagster.k8s.yaml", "dagster.celery.yaml"]


@pytest.mark.parametrize("name", INSTANCE_FILES)
def test_deploy_instance_configs_validate(name):
    report = check_instance_file(str(DEPLOY / name))
    assert report.ok, report.errors
    assert "instance schema" in report.checked and "storage.postgres: dagster_postgres.DagsterPostgresStorage" in \
        report.checked  # launcher packages (dagster-k8s, …) are checked too where installed
    doc = yaml.safe_load((DEPLOY / name).read_text())
    assert doc["telemetry"] == {"enabled": False}
    assert doc["concurrency"]["runs"]["max_concurrent_runs"] >= 1 and doc["concurrency"]["pools"]["default_limit"]
    assert doc["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert doc["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    assert {"DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD"} <= set(report.env_vars)
    assert not re.search(r"FAL_KEY\s*[:=]", (DEPLOY / name).read_text())  # a name at most, never a value


def test_deploy_config_checker_catches_mistakes(tmp_path):
    bad = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    bad["concurrency"]["pools"]["granularity_typo"] = "op"
    bad["storage"]["postgres"]["postgres_db"]["hostnme"] = "x"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    report = check_instance_file(str(tmp_path / "bad.yaml"))
    assert not report.ok and len(report.errors) == 2
    (tmp_path / "broken.yaml").write_text("storage: [unclosed")
    assert not check_instance_file(str(tmp_path / "broken.yaml")).ok


def test_deploy_workspace_points_at_a_code_server(monkeypatch):
    from dagster._core.workspace.config_schema import ensure_workspace_config

    monkeypatch.setenv("SORA_CODE_SERVER_HOST", "sora-code")
    monkeypatch.setenv("SORA_CODE_SERVER_PORT", "4000")
    doc = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    ensure_workspace_config(doc, str(DEPLOY / "workspace.yaml"))
    (entry,) = doc["load_from"]
    assert entry["grpc_server"]["location_name"] == "sora_pipeline"


def test_deploy_config_checker_requires_psycopg2_for_dagster_postgres(tmp_path, monkeypatch):
    """dagster-postgres works on psycopg2 only (test_dagster_instance_on_each_documented_form): a URL or scheme
    naming psycopg 3 is an error, Dagster's documented forms (a plain postgresql: psycopg2 under the pinned
    SQLAlchemy 2.0) pass; a URL the checker cannot see is a warning."""
    db = {"hostname": "h", "username": "u", "db_name": "d"}
    for postgres in ({"postgres_url": "postgresql+psycopg://u@h/d"},
                     {"postgres_db": dict(db, scheme="postgresql+psycopg")}):
        report = check_instance_file(str(storage_file(tmp_path / "bad.yaml", postgres)))
        assert not report.ok and len(report.errors) == 1, (postgres, report.errors)
        assert "psycopg driver" in report.errors[0] and "postgresql+psycopg2" in report.errors[0]
    for postgres in ({"postgres_url": "postgresql+psycopg2://u@h:5432/d"},
                     {"postgres_db": dict(db, scheme="postgresql+psycopg2")},
                     {"postgres_url": "postgresql://u@h:5432/d"}, {"postgres_db": db}):  # Dagster's documented forms
        report = check_instance_file(str(storage_file(tmp_path / "good.yaml", postgres)))
        assert report.ok and not report.warnings, report.errors
        assert any(c.startswith("storage.postgres: driver psycopg2") for c in report.checked)
    monkeypatch.delenv("SORA_TEST_INSTANCE_URL", raising=False)
    from_env = storage_file(tmp_path / "env.yaml", {"postgres_url": {"env": "SORA_TEST_INSTANCE_URL"}})
    report = check_instance_file(str(from_env))
    assert report.ok and "SORA_TEST_INSTANCE_URL" in report.warnings[0]
    monkeypatch.setenv("SORA_TEST_INSTANCE_URL", "postgresql+psycopg://u@h/d")
    assert not check_instance_file(str(from_env)).ok


def test_ledger_url_without_a_driver_uses_an_installed_one(monkeypatch):
    """`postgresql://` → psycopg2 (as for Dagster), else psycopg 3; a missing driver says which extra to install."""
    url = "postgresql://u:secret@127.0.0.1:5432/d"
    assert make_engine(url).dialect.driver == "psycopg2"  # both are in the `postgres` extra
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # find_spec → None, import → ImportError
    assert make_engine(url).dialect.driver == "psycopg"
    with pytest.raises(ImportError, match=r"needs the psycopg2 module.*install sora_pipeline\[postgres\]"):
        make_engine("postgresql+psycopg2://u@127.0.0.1/d")
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ImportError, match=r"neither is installed: install sora_pipeline\[postgres\]") as err:
        make_engine(url)
    assert "secret" not in str(err.value)
