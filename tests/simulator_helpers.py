"""Helpers of the simulator tests (tests/test_simulator.py, tests/test_simulator_faults.py): raw httpx calls
against a simulator on loopback, small images, and reading back the MP4s it serves."""

from __future__ import annotations

import base64
import contextlib
import io
import time

import av
import httpx
from PIL import Image

from sora_pipeline.simulator import SimulatorConfig, SimulatorServer

ENDPOINT = "/fal-ai/sora-2/image-to-video/pro"
AUTH = {"Authorization": "Key test-key"}
RED = (200, 40, 40)


def png(width: int, height: int, colour=RED) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


def data_uri(width: int = 640, height: int = 360, colour=RED) -> str:
    return "data:image/png;base64," + base64.b64encode(png(width, height, colour)).decode()


LANDSCAPE = data_uri(640, 360)
PORTRAIT = data_uri(360, 640)


def client(**kw) -> httpx.Client:
    return httpx.Client(trust_env=False, headers=AUTH, timeout=kw.pop("timeout", 30), **kw)


def submit(c: httpx.Client, base: str, prompt: str = "a cat", image_url: str = LANDSCAPE, **inp) -> httpx.Response:
    return c.post(base + ENDPOINT, json={"prompt": prompt, "image_url": image_url, **inp})


def wait_done(c: httpx.Client, status_url: str, timeout: float = 30) -> tuple[set[str], dict]:
    """Poll until COMPLETED; returns the set of states seen and the final body."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = c.get(status_url, params={"logs": 1})
        body = r.json()
        seen.add(body["status"])
        if body["status"] == "COMPLETED":
            assert r.status_code == 200
            return seen, body
        assert r.status_code == 202
        time.sleep(0.02)
    raise AssertionError("request did not complete in time")


@contextlib.contextmanager
def running(cache_dir, **config):
    with SimulatorServer(SimulatorConfig(video_cache_dir=str(cache_dir), **config)) as server:
        yield server


def probe(data: bytes) -> dict:
    with av.open(io.BytesIO(data)) as container:
        v = container.streams.video[0]
        audio = [a.codec_context.name for a in container.streams.audio]
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
        return {"width": v.width, "height": v.height, "frames": v.frames, "rate": v.average_rate,
                "duration": container.duration / 1e6, "codec": v.codec_context.name, "audio": audio,
                "first_mean": first.reshape(-1, 3).mean(axis=0)}
