"""The Dagster UI in a real headless Chromium (scripts/ui_check.py); skipped without /usr/bin/chromium or
playwright. Screenshots go to a temp folder here (`make ui-check` writes them to docs/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def _skip_reason() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} not installed (make ui-check installs it with apt-get)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not importable ({exc}); install the test extra"
    return None


@pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
@pytest.mark.timeout(900)
def test_ui_check_in_headless_chromium(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "SORA_"))}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "ui_check.py"), "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert "ui-check: PASSED" in proc.stdout
    for name in ("asset-graph.png", "ui-video-metadata.png", "ui-video-metadata-partitions.png",
                 "ui-video-metadata-checks.png", "ui-generation-summary.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
