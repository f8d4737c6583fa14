"""The first hour of a new user, through the real commands in subprocesses: a configuration mistake reads as one
line (not a traceback) in `make demo`, `dagster asset materialize`, `dg launch` and the run's failure message;
`dg list defs` / `dg check defs` / `dg launch` work; a day prints no Beta/Preview warnings; the demo says what it
did (a second run reuses everything); the simulator explains itself; column lineage as Markdown metadata.

Every command runs with the catalog, warehouse, ledger and DAGSTER_HOME in `tmp_path` (the repo's dagster.yaml
copied there), on the embedded simulator."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAY = "2026-11-20"
TRACEBACK = "Traceback (most recent call last)"
IN_PROCESS = json.dumps({"execution": {"config": {"in_process": {}}}})  # one process: a day in ~10 s, not ~40 s


@pytest.fixture
def project(tmp_path) -> dict[str, str]:
    """A copy of the sample catalog and its images, a warehouse and a Dagster home, all under tmp_path."""
    shutil.copytree(ROOT / "data" / "catalog", tmp_path / "catalog")
    shutil.copytree(ROOT / "data" / "images", tmp_path / "images")
    (tmp_path / "home").mkdir()
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "home" / "dagster.yaml")
    return {"catalog": str(tmp_path / "catalog"), "warehouse": str(tmp_path / "warehouse"),
            "home": str(tmp_path / "home"), "tmp": str(tmp_path)}


def _env(project: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORA_", "FAL_", "DAGSTER_HOME", "PYTEST_"))}
    env.update(DAGSTER_HOME=project["home"], SORA_CATALOG_URI=project["catalog"],
               SORA_WAREHOUSE_URI=project["warehouse"], SORA_POLL_INTERVAL="0.1", COLUMNS="200", NO_COLOR="1")
    env.update(extra)
    return env


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: install the project (`make install`, or "
                    f"`uv pip install -p .venv/bin/python -e '.[test,postgres]'`)")
    return str(path)


def _run(args: list[str], env: dict[str, str], timeout: float = 180) -> tuple[int, str]:
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def _materialize(day: str, *extra: str) -> list[str]:
    return [_tool("dagster"), "asset", "materialize", "-m", "sora_pipeline.definitions", "--select",
            "+video_metadata", "--partition", day, *extra]


def _launch(day: str, *extra: str) -> list[str]:
    return [_tool("dg"), "launch", "--assets", "+video_metadata", "--partition", day, *extra]


DEMO = [sys.executable, "-m", "sora_pipeline.demo"]
COMMANDS = {"materialize": _materialize, "dg launch": _launch, "demo": lambda day, *extra: DEMO}


def _error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error: ")]


# -- 1. configuration mistakes: one line ------------------------------------------------------------------------------

LOAD_MISTAKES = {
    "bad SORA_MAX_CONCURRENCY": ({"SORA_MAX_CONCURRENCY": "abc"},
                                 "error: SORA_MAX_CONCURRENCY='abc' is not an integer; set it to a value ≥ 1"),
    "missing catalog": ({"SORA_CATALOG_URI": "{tmp}/no-such-catalog"},
                        "error: SORA_CATALOG_URI='{tmp}/no-such-catalog': no such file or folder; set "
                        "SORA_CATALOG_URI to the catalog's Parquet file or folder"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("mistake", list(LOAD_MISTAKES))
def test_a_bad_setting_is_one_line_when_the_code_location_loads(project, mistake, command):
    settings, expected = LOAD_MISTAKES[mistake]
    env = _env(project, **{k: v.format(**project) for k, v in settings.items()})
    code, out = _run(COMMANDS[command](DAY), env)
    expected = expected.format(**project)
    assert code != 0, out
    assert TRACEBACK not in out and "Stack Trace" not in out, out
    assert [line[:len(expected)] for line in _error_lines(out)] == [expected], out
    # nothing but Dagster's own SupersessionWarning for `dagster asset materialize` (printed before our code loads)
    rest = [line for line in out.splitlines() if line.strip() and not line.startswith("error: ")
            and "SupersessionWarning" not in line and "return callback(*args, **kwargs)" not in line]
    assert rest == [], out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_day_outside_the_partitions_names_the_range_and_the_variable(project, command):
    if command == "demo":  # the demo's days come from the catalog: move the first day out of the partitions
        env, day = _env(project, SORA_PARTITIONS_START="2026-11-21"), DAY
        expected = ("error: catalog day partition 2026-11-20 is before the first day 2026-11-21: the days run from "
                    "SORA_PARTITIONS_START (2026-11-21) to today (")
    else:
        env, day = _env(project), "2019-01-01"
        expected = ("error: partition 2019-01-01 is before the first day 2026-01-01: the days run from "
                    "SORA_PARTITIONS_START (2026-01-01) to today (")
    code, out = _run(COMMANDS[command](day), env)
    assert code != 0 and TRACEBACK not in out and "Stack Trace" not in out, out
    lines = _error_lines(out)
    assert len(lines) == 1 and lines[0].startswith(expected), out
    assert lines[0].endswith("(or earlier)"), out
    assert not (Path(project["warehouse"]) / "generations").exists()  # nothing ran


def _not_parquet(project) -> str:
    path = Path(project["tmp"]) / "catalog.csv"
    path.write_text("item_id,prompt\ncity,a city\n")
    return str(path)


NOT_PARQUET = ("catalog '{path}' is not a readable Parquet dataset (Parquet magic bytes not found in footer. Either "
               "the file is corrupted or this is not a parquet file.); set SORA_CATALOG_URI to a Parquet file or "
               "folder")


def test_a_catalog_that_is_not_parquet_is_one_line_in_the_demo(project):
    path = _not_parquet(project)
    code, out = _run(DEMO, _env(project, SORA_CATALOG_URI=path))
    assert code == 2 and TRACEBACK not in out, out
    lines = _error_lines(out)
    assert len(lines) == 1 and lines[0].startswith("error: " + NOT_PARQUET.format(path=path)), out
    assert out.strip().count("\n") == 0, out


@pytest.mark.parametrize("command", ["materialize", "dg launch"])
def test_a_catalog_that_is_not_parquet_fails_the_run_with_one_line(project, command):
    """The step fails with a dagster.Failure whose description is the line: the CLI prints it (Dagster's console
    log adds its own `Stack Trace:` of the step, not a Python traceback), and the run's failure in the instance —
    what the UI shows — carries the same line. (In one process: the step processes of the default executor are
    covered by the whole day below.)"""
    import dagster as dg

    path = _not_parquet(project)
    code, out = _run(COMMANDS[command](DAY, "--config-json", IN_PROCESS), _env(project, SORA_CATALOG_URI=path))
    line = NOT_PARQUET.format(path=path)
    assert code != 0 and TRACEBACK not in out, out
    assert f"Failure: {line}" in out, out
    assert "Error: Materialization failed." in out
    assert "BetaWarning" not in out and "PreviewWarning" not in out, out
    with dg.DagsterInstance.from_config(project["home"]) as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.FAILURE
        events = [e.dagster_event for e in instance.all_logs(run.run_id) if e.dagster_event]
    [step_failure] = [e for e in events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert step_failure.step_key == "catalog_slice"
    assert step_failure.event_specific_data.user_failure_data.description.startswith(line)
    [run_failure] = [e for e in events if e.event_type == dg.DagsterEventType.RUN_FAILURE]
    error = run_failure.event_specific_data.error
    assert error is not None and line in error.message, error


def test_dg_check_defs_reports_a_bad_setting_in_its_first_lines(project):
    """`dg check defs` (and `dg dev`'s code server, which prints the same) loads the code location in a subprocess
    and formats the error itself: the message, then Dagster's `Stack Trace:` of two lines of ours."""
    code, out = _run([_tool("dg"), "check", "defs"], _env(project, SORA_MAX_CONCURRENCY="abc"))
    assert code != 0 and TRACEBACK not in out, out
    assert "ConfigError: SORA_MAX_CONCURRENCY='abc' is not an integer; set it to a value ≥ 1" in out, out
    assert len([line for line in out.splitlines() if line.strip().startswith("File ")]) <= 2, out


# -- 2. dg ------------------------------------------------------------------------------------------------------------

def test_dg_list_defs_and_check_defs(project):
    code, out = _run([_tool("dg"), "list", "defs", "--json"], _env(project))
    assert code == 0, out
    listed = json.loads(out[out.index("{"):])
    keys = {a["key"] if "key" in a else a["asset_key"] for a in listed["assets"]}
    assert {"catalog_items", "generations", "video_metadata", "generation_summary"} <= keys, keys
    assert "daily_generation_job" in {j.get("name") or j.get("key") for j in listed["jobs"]}, listed["jobs"]
    code, out = _run([_tool("dg"), "check", "defs"], _env(project))
    assert code == 0 and "All definitions loaded successfully." in out, out
    assert "warning" not in out.lower(), out


def test_dg_launch_a_day_on_the_embedded_simulator(project):
    code, out = _run(_launch(DAY, "--config-json", IN_PROCESS), _env(project))
    assert code == 0 and "RUN_SUCCESS" in out, out[-3000:]
    assert "BetaWarning" not in out and "PreviewWarning" not in out, out
    assert list((Path(project["warehouse"]) / "video_metadata").glob(f"date={DAY}/*.parquet"))


# -- 3. quiet output; 6. column lineage in a real materialization ---------------------------------------------------

def test_dagster_asset_materialize_a_day_prints_no_beta_or_preview_warning(project):
    import dagster as dg

    code, out = _run(_materialize(DAY), _env(project), timeout=300)
    assert code == 0 and "RUN_SUCCESS" in out, out[-3000:]
    assert "BetaWarning" not in out and "PreviewWarning" not in out, out
    assert [line for line in out.splitlines() if "Warning:" in line] == [
        line for line in out.splitlines() if "SupersessionWarning" in line], out  # Dagster's own, about the CLI
    with dg.DagsterInstance.from_config(project["home"]) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("generations"))
    md = event.asset_materialization.metadata["column_lineage_md"].value
    assert "| column | derives from |" in md and "| `requested_duration` | `catalog_items.duration` |" in md


# -- 4. the demo says what it did -------------------------------------------------------------------------------------

def test_demo_says_what_it_did_and_a_second_run_reuses_everything(project):
    env = _env(project)
    code, first = _run(DEMO, env, timeout=300)
    assert code == 0, first[-3000:]
    assert re.search(rf"  {DAY}: ok — 4 items: 4 submitted, 0 reused, 0 resumed, 0 failed in [\d.]+s; would-be cost \$7\.60;",
                     first), first
    assert re.search(r"  all days: 11 items: 11 submitted, 0 reused, 0 resumed, 0 failed in [\d.]+s; would-be cost \$19\.20",
                     first), first
    code, second = _run(DEMO, env, timeout=300)
    assert code == 0, second[-3000:]
    assert re.search(rf"  {DAY}: ok — 4 items: 0 submitted, 4 reused, 0 resumed, 0 failed in [\d.]+s; would-be cost \$0\.00;",
                     second), second
    assert re.search(r"  all days: 11 items: 0 submitted, 11 reused, 0 resumed, 0 failed in [\d.]+s; would-be cost \$0\.00",
                     second), second
    assert "nothing was submitted: the request ledger reused the videos of an earlier run" in second
    for out in (first, second):  # the embedded simulator says nothing; no warnings, no tracebacks
        assert not re.search(r"^\s*submit ", out, re.M) and "Warning" not in out and TRACEBACK not in out, out


# -- 5. the simulator explains itself ---------------------------------------------------------------------------------

def test_simulator_help_describes_every_option_and_the_fault_kinds():
    from sora_pipeline.simulator.config import FAULT_KINDS

    code, out = _run([sys.executable, "-m", "sora_pipeline.simulator", "--help"], dict(os.environ, COLUMNS="200"))
    assert code == 0, out
    options = out[out.index("options:"):out.index("fault kinds")]
    entries = re.findall(r"^  (-[-\w]+(?:, --[-\w]+)?)(?: [A-Z=_]+)?(.*)$", options, re.M)
    assert len(entries) > 25
    undocumented = [flag for flag, text in entries if not text.strip()
                    and not re.search(rf"^  {re.escape(flag)}.*\n {{20,}}\S", options, re.M)]
    assert undocumented == [], options
    for kind in FAULT_KINDS:
        assert re.search(rf"^  {kind} +\S", out, re.M), kind


def test_simulator_logs_one_line_per_request_in_the_foreground(tmp_path, png_data_uri):
    proc = subprocess.Popen([sys.executable, "-m", "sora_pipeline.simulator", "--run-latency", "0.2",
                             "--video-cache-dir", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        base = proc.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:"), base
        endpoint, headers = f"{base}/fal-ai/sora-2/image-to-video/pro", {"Authorization": "Key any"}
        prompt = "A lighthouse in a storm at night, waves crashing on the rocks"
        with httpx.Client(headers=headers, timeout=30) as client:
            done = client.post(endpoint, json={"prompt": prompt, "image_url": png_data_uri}).json()
            cancelled = client.post(endpoint, json={"prompt": "short", "image_url": png_data_uri}).json()
            assert client.put(cancelled["cancel_url"]).json() == {"status": "CANCELLATION_REQUESTED"}
            deadline = time.monotonic() + 30
            while client.get(done["status_url"]).json()["status"] != "COMPLETED":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert client.get(done["response_url"]).status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [line.split(" ", 1)[1] for line in err.strip().splitlines()]
    assert lines[0] == (f"submit {done['request_id']} fal-ai/sora-2/image-to-video/pro prompt='{prompt[:40]}…' "
                        "duration=4s resolution=auto aspect_ratio=auto"), err
    assert lines[1].startswith(f"submit {cancelled['request_id']} fal-ai/sora-2/image-to-video/pro prompt='short'")
    assert lines[2] == f"cancel {cancelled['request_id']} CANCELLATION_REQUESTED", err
    assert re.fullmatch(rf"done {done['request_id']} \d+\.\ds", lines[3]), err
    assert len(lines) == 4, err  # one line per request: polling and the result fetch add none


def test_embedded_simulator_is_quiet(simulator, png_data_uri, capfd):
    endpoint = f"{simulator.base_url}/fal-ai/sora-2/image-to-video/pro"
    with httpx.Client(headers={"Authorization": "Key any"}, timeout=30) as client:
        handle = client.post(endpoint, json={"prompt": "quiet please", "image_url": png_data_uri}).json()
        client.put(handle["cancel_url"])
    out, err = capfd.readouterr()
    assert "submit " not in out + err and "cancel " not in out + err


# -- 6. column lineage people can see ---------------------------------------------------------------------------------

def test_column_lineage_markdown_in_the_definitions_and_the_materialization_metadata():
    from sora_pipeline.definitions import defs
    from sora_pipeline.defs.assets.lineage import table_metadata
    from sora_pipeline.warehouse.schemas import VIDEO_METADATA

    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    md = specs["catalog_items"].metadata["column_lineage_md"].value
    assert "| column | derives from |\n|---|---|\n| `item_id` | `catalog.item_id` |" in md
    assert "| `image_ref` | `catalog.image_uri` |" in md
    assert "| `request_key` | `catalog_items.item_id`, `catalog_items.prompt`" in \
        specs["generations"].metadata["column_lineage_md"].value
    metadata = table_metadata(VIDEO_METADATA, "file:///x", 1)
    md = metadata["column_lineage_md"].value
    lineage = metadata["dagster/column_lineage"]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+) \|$", md, re.M))
    assert set(rows) == set(lineage.deps_by_column)  # the table says what dagster/column_lineage says
    for column, deps in lineage.deps_by_column.items():
        assert set(rows[column].split(", ")) == {f"`{d.asset_key.to_user_string()}.{d.column_name}`" for d in deps}
    assert "No recorded source (computed by this step): `request_id`" in md
