"""The Dagster UI in a real headless Chromium (`scripts/ui_check.py`, what `make ui-check` runs): the asset graph,
`video_metadata` with its columns, a partition's materialization metadata, its checks, and the summary's chart.

Needs Debian's `/usr/bin/chromium` (`.ci/run` and `make ui-check` install it with apt-get) and playwright (the test
extra). Without them the test is skipped — and fails when CI is set, so CI never silently loses it. On failure the
message holds what each failing page displayed (its visible text) and the path of its screenshot."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ("asset-graph.png", "ui-video-metadata.png", "ui-video-metadata-partitions.png",
               "ui-video-metadata-checks.png", "ui-generation-summary.png")


def _missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} not installed (`apt-get install -y chromium`; .ci/run and make ui-check install it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not importable ({exc}); install the test extra"
    return None


def _require_browser() -> None:
    why = _missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and the UI test cannot run: {why}", pytrace=False)
        pytest.skip(why)


def _failure_report(stdout: str, stderr: str) -> str:
    """The part of ui_check's output that says what went wrong: the failures with each page's visible text and
    screenshot (printed after `ui-check: FAILED`), else the tail of the output."""
    at = stdout.find("ui-check: FAILED")
    shown = stdout[at:] if at >= 0 else stdout[-6000:]
    return f"{shown[-12000:]}\n--- stderr (tail) ---\n{stderr[-3000:]}"


@pytest.mark.timeout(600)
def test_ui_shows_graph_columns_partition_metadata_checks_and_chart(tmp_path):
    _require_browser()  # in the test, not a fixture: a CI failure counts as failed, not as an error
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "SORA_"))}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "ui_check.py"), "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0 and "ui-check: PASSED" in proc.stdout, (
        f"ui_check exited {proc.returncode} after {elapsed:.0f}s; screenshots in {tmp_path}\n"
        + _failure_report(proc.stdout, proc.stderr))
    for line in ("asset graph shows video_metadata", "overview lists its", "shows its materialization metadata",
                 "checks tab shows Checks (4)", "Markdown renders its chart"):
        assert line in proc.stdout, f"ui_check did not check {line!r}:\n{proc.stdout[-4000:]}"
    for name in SCREENSHOTS:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not list(tmp_path.glob("failure-*.png")), proc.stdout[-4000:]
