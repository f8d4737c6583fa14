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
from tests.support.fixtures import DAY, make_project, materialize_day, resources
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
    from sora_pipeline.definitions import build_resources
    from sora_pipeline.defs.settings import PipelineSettings

    settings = PipelineSettings(catalog_uri=project["catalog"], warehouse_uri=project["warehouse"])
    url = build_resources(settings)["database"].resolved_url()
    return Ledger.open(url)


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


def test_demo_names_rows_without_a_day_and_lists_at_most_20_rejections(tmp_path):
    """A catalog with 25 rejected rows and rows whose scheduled_date is null or not a date: the demo lists 20
    rejections and says how many more, and names the undated rows (nothing disappears without a trace)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.support.fixtures import catalog_rows, write_images

    root = tmp_path / "data"
    write_images(str(root))
    (root / "catalog").mkdir()
    rows = [dict(r, scheduled_date=r["scheduled_date"].isoformat()) for r in catalog_rows(n=1)]
    rows += [dict(r, scheduled_date=r["scheduled_date"].isoformat(), duration=5)
             for r in catalog_rows(n=25, prefix="bad")]
    rows += [dict(catalog_rows(n=1, prefix="nodate")[0], scheduled_date=None),
             dict(catalog_rows(n=1, prefix="usdate")[0], scheduled_date="12/01/2026")]
    pq.write_table(pa.Table.from_pylist(rows), root / "catalog" / "part-0.parquet")
    (tmp_path / "home").mkdir()
    project = {"catalog": str(root / "catalog"), "warehouse": str(tmp_path / "warehouse"),
               "home": str(tmp_path / "home"), "tmp": str(tmp_path)}
    code, out = _run(DEMO, _env(project), timeout=300)
    assert code == 0, out[-3000:]
    assert "2026-11-20: ok — 1 items: 1 submitted" in out, out
    assert len([x for x in out.splitlines() if x.startswith("  rejected 2026-11-20:")]) == 20, out
    assert "… and 5 more in rejected_items" in out, out
    assert "2 of 28 catalog rows belong to no day" in out, out
    assert "item_id=nodate0" in out and "item_id=usdate0" in out and "'12/01/2026' is not a date" in out, out


def test_selecting_half_of_the_catalog_step_is_one_line(project):
    code, out = _run([_tool("dagster"), "asset", "materialize", "-m", "sora_pipeline.definitions", "--select",
                      "catalog_items", "--partition", "2026-11-20"], _env(project))
    assert code != 0 and TRACEBACK not in out, out
    assert "error: catalog_items and rejected_items are written by one step: select both" in out, out


def test_a_platform_url_that_would_leak_the_key_fails_at_load_in_one_line(project):
    env = _env(project, FAL_KEY="k-0123456789abcdef", SORA_FAL_API_URL="http://platform.example.com/v1")
    code, out = _run([sys.executable, "-c", "import sora_pipeline.definitions"], env)
    assert code != 0 and TRACEBACK not in out, out
    assert "error: platform API URL 'http://platform.example.com/v1' is plain http on a non-loopback host" in out
    assert "SORA_FAL_API_URL" in out and "k-0123456789abcdef" not in out
