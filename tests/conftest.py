"""Shared fixtures: a real simulator on loopback, small real images, temp Dagster homes."""

from __future__ import annotations

import base64
import io
import os

import pytest
from PIL import Image

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
