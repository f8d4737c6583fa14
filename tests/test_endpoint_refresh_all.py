"""`refresh --all` over HTTP against the simulator's platform API (model registry with OpenAPI documents, pricing):
every shipped profile up to date; a changed price in the registry's answer shows its diff and is written to
--profiles-dir; an endpoint the registry no longer lists is reported and kept (exit 1); the key never printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sora_pipeline.endpoints import known_endpoints
from sora_pipeline.endpoints.registry import PROFILES_DIR, file_name

KEY = "sim-key-4b9e21"
KLING = "fal-ai/kling-video/v2.1/standard/image-to-video"


def run_all(url: str, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORA_", "FAL_"))} | {"FAL_KEY": KEY}
    return subprocess.run([sys.executable, "-m", "sora_pipeline.endpoint_tools", "refresh", "--all", "--api-url", url,
                           *args], env=env | (env_extra or {}), capture_output=True, text=True, timeout=120)


def test_every_shipped_profile_is_up_to_date_against_the_simulator(make_simulator, tmp_path):
    sim = make_simulator()
    done = run_all(sim.base_url, "--dry-run", "--profiles-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    for endpoint in known_endpoints():
        assert f"{endpoint}: up to date" in done.stdout
    assert KEY not in done.stdout + done.stderr and list(tmp_path.iterdir()) == []


def test_a_changed_price_is_shown_and_written_and_a_retired_endpoint_is_kept(make_simulator, tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    profile = json.loads((PROFILES_DIR / file_name(KLING)).read_text(encoding="utf-8"))
    profile["pricing"]["per_second"] = {"*": 0.07}  # fal now charges more
    (served / file_name(KLING)).write_text(json.dumps(profile), encoding="utf-8")
    retired = "fal-ai/sora-2/image-to-video"
    monkeypatch.setenv("SORA_ENDPOINT_PROFILES", str(served))  # what the simulator (fal) now answers
    sim = make_simulator(retired_endpoints=(retired,))
    out = tmp_path / "out"
    done = run_all(sim.base_url, "--profiles-dir", str(out))
    assert done.returncode == 1, done.stdout + done.stderr  # the retired one
    assert f"{retired}: not listed by fal's model registry" in done.stdout
    assert "price: $0.056/s → $0.07/s" in done.stdout and "+    \"per_second\": {\"*\": 0.07}" in done.stdout
    written = json.loads((out / file_name(KLING)).read_text(encoding="utf-8"))
    assert written["pricing"]["per_second"] == {"*": 0.07}
    assert not (out / file_name(retired)).exists() and KEY not in done.stdout + done.stderr
