"""Configuration errors fail at load with what to set; progress lines read well; resources hide secrets."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sora_pipeline.generation.progress import Progress
from sora_pipeline.defs.resources import FalVideoResource
from sora_pipeline.defs.settings import ConfigError, PipelineSettings


@pytest.mark.parametrize("env, names", [
    ({"FAL_KEY": "k-secret-1", "SORA_FAL_QUEUE_URL": "queue.fal.run"}, "SORA_FAL_QUEUE_URL"),
    ({"SORA_MAX_CONCURRENCY": "many"}, "SORA_MAX_CONCURRENCY"),
    ({"SORA_MAX_CONCURRENCY": "0"}, "SORA_MAX_CONCURRENCY"),
    ({"SORA_POLL_INTERVAL": "-1"}, "SORA_POLL_INTERVAL"),
    ({"SORA_ENDPOINT_ID": "sora"}, "SORA_ENDPOINT_ID"),
    ({"SORA_PARTITIONS_START": "yesterday"}, "SORA_PARTITIONS_START"),
    ({"SORA_PRICE_TABLE": '{"720p": "cheap"}'}, "SORA_PRICE_TABLE"),  # at load, not when a day runs
])
def test_bad_settings_name_the_variable(env, names):
    with pytest.raises(ConfigError) as err:
        PipelineSettings.from_env(env)
    assert names in str(err.value) and "k-secret-1" not in str(err.value)


def test_settings_defaults_and_backend():
    s = PipelineSettings.from_env({})
    assert (s.catalog_uri, s.warehouse_uri, s.max_concurrency, s.backend) == ("data/catalog", "data/warehouse", 8,
                                                                               "simulator")
    s = PipelineSettings.from_env({"FAL_KEY": "x"})
    assert s.queue_url == "https://queue.fal.run" and s.backend == "fal"


def test_bad_config_fails_when_definitions_load():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORA_", "FAL_"))}
    env.update(FAL_KEY="k-secret-2", SORA_FAL_QUEUE_URL="ftp://nope")
    proc = subprocess.run([sys.executable, "-c", "import sora_pipeline.definitions"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "SORA_FAL_QUEUE_URL" in proc.stderr and "k-secret-2" not in proc.stderr


def test_resource_validates_and_hides_the_key():
    with pytest.raises(Exception, match="queue base URL"):
        FalVideoResource(fal_key="k", queue_url="not a url")
    with pytest.raises(Exception, match="normal"):
        FalVideoResource(queue_priority="urgent")
    res = FalVideoResource(fal_key="k-secret-3", queue_url="https://queue.fal.run")
    assert "k-secret-3" not in repr(res) and "k-secret-3" not in str(res) and res.backend == "fal"


def test_progress_line_counts_and_eta():
    now = [0.0]
    lines = []
    p = Progress(4, emit=lines.append, interval=5.0, clock=lambda: now[0])
    p.set("a", "in_queue", queue_position=3)
    p.set("b", "in_progress")
    now[0] = 10.0
    p.set("c", "completed")
    assert "1/4 done" in lines[-1] and "in queue 1 (positions 3–3)" in lines[-1] and "ETA 30s" in lines[-1]
    p.set("d", "failed")  # within the interval: no new line
    assert len(lines) == 2


@pytest.mark.parametrize("name", ["SORA_MAX_VIDEO_BYTES", "SORA_MAX_JSON_BYTES", "SORA_MAX_STREAM_EVENT_BYTES"])
def test_byte_caps_are_checked_at_load(name):
    with pytest.raises(ConfigError, match=name):
        PipelineSettings.from_env({name: "lots"})
    with pytest.raises(ConfigError, match=name):
        PipelineSettings.from_env({name: "0"})
    PipelineSettings.from_env({name: "1_000_000"})


# ---------------------------------------------------------------- issue 21.4: the ledger's database wrong or down
@pytest.mark.parametrize("url, says", [
    ("mysql://u:pw-secret@127.0.0.1/d", "runs on SQLite or PostgreSQL, not mysql"),
    ("postgresql+pg8000://u:pw-secret@127.0.0.1/d", "pg8000 driver cannot be loaded"),
    ("sqlite:////no/such/folder/ledger.sqlite", "the folder /no/such/folder does not exist"),
    ("sqlite:///:memory:", "needs a SQLite file"),
    ("not a url pw-secret", "not a database URL"),
])
def test_a_ledger_url_that_cannot_work_fails_at_load_in_one_line(url, says):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORA_", "FAL_"))}
    env.update(SORA_LEDGER_URL=url)
    proc = subprocess.run([sys.executable, "-c", "import sora_pipeline.definitions"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: SORA_LEDGER_URL") and says in line and "pw-secret" not in line


def test_a_ledger_database_that_does_not_answer_fails_the_step_in_one_line(tmp_path, simulator):
    """A closed port: the catalog step (its first ledger use) fails with one line naming SORA_LEDGER_URL, the host
    and the cause, the password hidden; nothing reaches fal."""
    import socket

    from tests.support.fixtures import make_project, materialize_day, resources

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    project = dict(make_project(tmp_path), ledger_url=f"postgresql://u:pw-secret@127.0.0.1:{port}/ledger")
    result = materialize_day(resources(simulator.base_url, project), raise_on_error=False)
    assert not result.success
    (failure, *_) = [e.event_specific_data.user_failure_data.description for e in result.all_events
                     if e.event_type_value == "STEP_FAILURE"]
    assert "\n" not in failure and failure.startswith("the request ledger does not answer: SORA_LEDGER_URL=")
    assert f"127.0.0.1:{port}" in failure and "refused" in failure.lower() and "pw-secret" not in failure
    assert simulator.stats()["submits"] == 0


# ---------------------------------------------------------------- issue 22.3: settings read once, passed down
def test_settings_are_read_once_and_reach_the_resources():
    from sora_pipeline.definitions import build_resources
    from sora_pipeline.defs.partitions import PARTITIONS_START, daily_partitions
    from sora_pipeline.defs.settings import load_settings

    assert load_settings() is load_settings()  # one read per process
    assert PARTITIONS_START == load_settings().partitions_start == daily_partitions.get_first_partition_key()
    s = PipelineSettings.from_env({"SORA_MAX_VIDEO_BYTES": "1_000", "SORA_MAX_JSON_BYTES": "2000",
                                   "SORA_UPLOAD_THRESHOLD_BYTES": "30", "SORA_FAL_STORAGE_URL": "https://s.example",
                                   "SORA_FAILPOINT": "mid_poll", "SORA_PARTITIONS_START": "2026-02-03"})
    res = build_resources(s)
    caps = res["fal"].caps.caps()
    assert (caps.max_video_bytes, caps.max_json_bytes, caps.uploads.threshold_bytes, caps.uploads.storage_url) == \
        (1000, 2000, 30, "https://s.example")
    assert res["fal_platform"].max_json_bytes == 2000
    assert (s.failpoint, s.partitions_start) == ("mid_poll", "2026-02-03")


def test_the_price_table_reaches_the_generations_step_s_prices():
    from sora_pipeline.defs.code_location import build_resources

    settings = PipelineSettings.from_env({"SORA_PRICE_TABLE": '{"720p": 0.25, "1080p": 0.6}'})
    prices = build_resources(settings)["fal"].prices()
    assert prices.per_second == {"720p": 0.25, "1080p": 0.6}
    assert build_resources(PipelineSettings.from_env({}))["fal"].prices().per_second == {"720p": 0.3, "1080p": 0.5}



def test_one_database_resource_whose_default_file_follows_the_warehouse(tmp_path):
    """SORA_LEDGER_URL reaches the `database` resource, which is also the warehouse's (its write leases); unset, the
    ledger is a SQLite file under a local warehouse, else under DAGSTER_HOME — nothing created until it is used."""
    from sora_pipeline.coordination import default_ledger_url
    from sora_pipeline.definitions import build_resources, defs

    assert defs.resources["warehouse"].database is defs.resources["database"]
    local = build_resources(PipelineSettings(warehouse_uri=str(tmp_path / "wh")))
    assert local["warehouse"].database is local["database"] and not (tmp_path / "wh").exists()
    assert local["database"].resolved_url() == f"sqlite:///{(tmp_path / 'wh').resolve()}/_ledger/ledger.sqlite" \
        == default_ledger_url(str(tmp_path / "wh"), None)
    home = tmp_path / "home"
    remote = build_resources(PipelineSettings(warehouse_uri="s3://bucket/wh", dagster_home=str(home)))["database"]
    assert remote.resolved_url() == f"sqlite:///{home.resolve()}/sora_ledger.sqlite" and home.is_dir()
    url = "postgresql://sora@db.example:5432/ledger"
    assert build_resources(PipelineSettings(ledger_url=url))["database"].resolved_url() == url
