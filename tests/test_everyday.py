"""Everyday use: `make demo` never bills, says what is going on while a day generates, and a Ctrl-C says in one line
what became of the requests; archived videos are readable like the tables; `dg check defs` into a pipe is plain
text."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from sora_pipeline.ledger import Ledger
from tests.pipeline_helpers import DAY, make_project, materialize_day, resources
from tests.test_first_hour import DEMO, ROOT, TRACEBACK, _env, _run, _tool, project  # noqa: F401 — the fixture


def test_demo_ignores_a_real_key_and_queue_and_names_its_backend(project, make_simulator):
    """With FAL_KEY and SORA_FAL_QUEUE_URL set (here: to a simulator that would count submits), the demo runs
    on its own embedded simulator: the configured queue sees nothing."""
    outside = make_simulator(accepted_keys=["a-real-looking-key"])
    env = _env(project, FAL_KEY="a-real-looking-key", SORA_FAL_QUEUE_URL=outside.base_url)
    code, out = _run(DEMO, env, timeout=300)
    assert code == 0, out[-3000:]
    assert outside.stats()["submits"] == 0
    assert "ignored FAL_KEY, SORA_FAL_QUEUE_URL: the demo always runs on the embedded simulator" in out
    assert "backend: simulator (embedded, on loopback)" in out and "backend: fal" not in out
    assert "a-real-looking-key" not in out


def test_demo_prints_progress_and_ctrl_c_says_what_became_of_the_requests(project):
    env = _env(project)
    proc = subprocess.Popen([*DEMO, "--simulator-latency", "30", "--progress-every", "1"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the first day's requests are all at the simulator
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            if re.search(r"progress: 0/4 done, submitted 4, in queue 0, in progress 4", line):
                break
        else:
            raise AssertionError("".join(lines))
        ticks = len([x for x in lines if "progress:" in x])
        time.sleep(2.5)  # nothing changes for 2.5 s: the progress line still comes at its cadence
        os.kill(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    assert len(re.findall(r"progress: 0/4 done, submitted 4", out)) >= 2, out
    assert ticks >= 1
    assert ("run interrupted: 4 request(s) cancelled at fal (not billed), 0 completed anyway (fetched by the next "
            "run), 0 without an answer (resumed by the next run)") in out
    assert re.search(r"2026-11-20: interrupted after [\d.]+s; run `make demo` again to resume", out), out
    assert TRACEBACK not in out and "KeyboardInterrupt" not in out, out
    with _ledger(project) as ledger:
        assert {e.state.value for e in ledger.entries_for_day("2026-11-20")} == {"cancelled"}
        assert ledger.spent("2026-11-20") == 0.0  # fal confirmed every cancel: nothing counted as spent


def _ledger(project) -> Ledger:
    from sora_pipeline.defs.warehouse_resource import WarehouseResource

    url = WarehouseResource(catalog_uri=project["catalog"], warehouse_uri=project["warehouse"]).resolved_ledger_url()
    return Ledger(url)


def test_archived_videos_are_readable_like_the_tables(tmp_path, simulator):
    project = make_project(tmp_path)
    old = os.umask(0o022)
    try:
        assert materialize_day(resources(simulator.base_url, project)).success
    finally:
        os.umask(old)
    videos = list((tmp_path / "warehouse" / "videos").rglob("*.mp4"))
    tables = list((tmp_path / "warehouse" / "video_metadata").rglob("*.parquet"))
    assert len(videos) == 4 and tables
    assert {oct(v.stat().st_mode & 0o777) for v in videos} == {oct(tables[0].stat().st_mode & 0o777)} == {"0o644"}


def test_dg_check_defs_into_a_pipe_has_no_colour_codes(project):
    env = {k: v for k, v in _env(project, SORA_MAX_CONCURRENCY="abc").items() if k != "NO_COLOR"}
    code, out = _run([_tool("dg"), "check", "defs"], env)
    assert code != 0 and "SORA_MAX_CONCURRENCY='abc' is not an integer" in out, out
    assert "\x1b[" not in out, out
