"""Tests of the embedded fal queue simulator, over real HTTP on loopback (httpx → uvicorn): video synthesis,
the happy path, errors, scheduling, stats and self-identification. Fault and hostile modes:
tests/test_simulator_faults.py."""

from __future__ import annotations

import asyncio
import http.server
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from sora_pipeline.simulator import SimulatorConfig, SimulatorServer
from sora_pipeline.simulator.video import cached_clip, dimensions, synthesize_mp4
from tests.simulator_helpers import (
    AUTH,
    ENDPOINT,
    LANDSCAPE,
    PORTRAIT,
    RED,
    client,
    png,
    probe,
    running,
    submit,
    wait_done,
)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("sim-videos")


@pytest.fixture(scope="module")
def sim(cache_dir):
    with running(cache_dir, queue_latency=0.15, run_latency=0.3) as server:
        yield server


# -- video ---------------------------------------------------------------------------------------------------------

def test_dimensions():
    assert dimensions("720p", "16:9") == (1280, 720)
    assert dimensions("720p", "9:16") == (720, 1280)
    assert dimensions("1080p", "16:9") == (1920, 1080)
    assert dimensions("1080p", "9:16") == (1080, 1920)
    assert dimensions("auto", "auto", 360, 640) == (720, 1280)
    assert dimensions("auto", "auto", 640, 360) == (1280, 720)
    assert dimensions("1080p", "auto", None, None) == (1920, 1080)



@pytest.mark.parametrize("w,h,duration", [(1920, 1080, 12), (1280, 720, 4)])
def test_synthesize_timing_and_readback(w, h, duration, capsys):
    t0 = time.perf_counter()
    data = synthesize_mp4(png(800, 600), w, h, duration, 24, seed=0)
    elapsed = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n[simulator] encode {duration}s {w}x{h}: {elapsed:.2f}s, {len(data) / 1e6:.2f} MB")
    info = probe(data)
    assert (info["width"], info["height"], info["frames"]) == (w, h, duration * 24)
    assert info["rate"] == 24 and info["codec"] == "h264" and info["audio"] == ["aac"]
    assert info["duration"] == pytest.approx(duration, abs=0.05)
    assert np.allclose(info["first_mean"], RED, atol=6)
    assert elapsed < 20


def test_clip_cache_and_undecodable_image(tmp_path):
    p1 = cached_clip(tmp_path, b"not an image", 320, 180, 4, 24, seed=3)
    t0 = time.perf_counter()
    p2 = cached_clip(tmp_path, b"not an image", 320, 180, 4, 24, seed=3)
    assert p1 == p2 and time.perf_counter() - t0 < 0.05
    info = probe(p1.read_bytes())
    assert (info["width"], info["height"], info["frames"]) == (320, 180, 96)


# -- happy path ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image,inp,size,duration", [
    (LANDSCAPE, {"resolution": "720p", "aspect_ratio": "16:9", "duration": 4}, (1280, 720), 4),
    (PORTRAIT, {}, (720, 1280), 4),  # auto/auto follows the portrait image
    (LANDSCAPE, {"resolution": "1080p", "aspect_ratio": "9:16", "duration": "8"}, (1080, 1920), 8),
    (PORTRAIT, {"resolution": "1080p", "aspect_ratio": "16:9", "duration": 12}, (1920, 1080), 12),
])
def test_happy_path(sim, image, inp, size, duration):
    with client() as c:
        r = submit(c, sim.base_url, image_url=image, **inp)
        assert r.status_code == 200, r.text
        sub = r.json()
        rid = sub["request_id"]
        root = f"{sim.base_url}/fal-ai/sora-2/requests/{rid}"
        assert sub["status_url"] == root + "/status" and sub["response_url"] == root
        assert sub["cancel_url"] == root + "/cancel" and sub["queue_position"] == 0 and sub["gateway_request_id"]
        early = c.get(sub["status_url"])
        assert early.status_code == 202 and early.json()["status"] == "IN_QUEUE"
        assert early.json()["queue_position"] == 0
        assert c.get(sub["response_url"]).json() == {"detail": "Request is still in progress"}
        seen = set()
        while True:
            s = c.get(sub["status_url"], params={"logs": 1})
            body = s.json()
            seen.add(body["status"])
            if body["status"] == "IN_PROGRESS":
                assert s.status_code == 202 and isinstance(body["logs"], list) and body["logs"]
            if s.status_code == 200:
                break
            time.sleep(0.02)
        assert seen == {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
        assert body["status"] == "COMPLETED" and body["metrics"]["inference_time"] >= 0.3
        assert [e["message"] for e in body["logs"]][0] == "Request queued"
        assert set(body["logs"][-1]) == {"message", "level", "source", "timestamp"}
        res = c.get(sub["response_url"])
        assert res.status_code == 200
        out = res.json()
        video = out["video"]
        assert out["video_id"].startswith("video_") and video["content_type"] == "video/mp4"
        assert (video["width"], video["height"]) == size
        assert video["fps"] == 24 and video["num_frames"] == duration * 24 and video["duration"] == duration
        f = c.get(video["url"])
        assert f.status_code == 200 and f.headers["content-type"] == "video/mp4"
        assert int(f.headers["content-length"]) == len(f.content) == video["file_size"]
    info = probe(f.content)
    assert (info["width"], info["height"]) == size
    assert info["frames"] == duration * 24 and info["rate"] == 24 and info["audio"] == ["aac"]
    assert info["duration"] == pytest.approx(duration, abs=0.05)
    assert np.allclose(info["first_mean"], RED, atol=6)


def test_loopback_image_url_and_placeholder(sim):
    image = png(300, 500, (20, 200, 20))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(image)))
            self.end_headers()
            self.wfile.write(image)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with client() as c:
            url = f"http://127.0.0.1:{httpd.server_address[1]}/portrait.png"
            local = submit(c, sim.base_url, image_url=url).json()
            remote = submit(c, sim.base_url, image_url="https://example.invalid/cat.png").json()
            wait_done(c, local["status_url"])
            wait_done(c, remote["status_url"])
            v_local = c.get(local["response_url"]).json()["video"]
            v_remote = c.get(remote["response_url"]).json()["video"]
            frame = probe(c.get(v_local["url"]).content)["first_mean"]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert (v_local["width"], v_local["height"]) == (720, 1280)
    assert np.allclose(frame, (20, 200, 20), atol=6)
    assert (v_remote["width"], v_remote["height"]) == (1280, 720)  # placeholder image, landscape


# -- errors ----------------------------------------------------------------------------------------------------------

def test_auth(cache_dir):
    with running(cache_dir, accepted_keys=["good"], run_latency=0.0) as server, \
            httpx.Client(trust_env=False) as c:
        body = {"prompt": "x", "image_url": LANDSCAPE}
        r = c.post(server.base_url + ENDPOINT, json=body)
        assert r.status_code == 401 and isinstance(r.json()["detail"], str)
        r = c.post(server.base_url + ENDPOINT, json=body, headers={"Authorization": "Bearer good"})
        assert r.status_code == 401
        r = c.post(server.base_url + ENDPOINT, json=body, headers={"Authorization": "Key bad"})
        assert r.status_code == 403 and "detail" in r.json()
        ok = c.post(server.base_url + ENDPOINT, json=body, headers={"Authorization": "Key good"})
        assert ok.status_code == 200
        assert c.get(ok.json()["status_url"]).status_code == 401
        assert server.stats()["submits"] == 1


def test_validation_422_and_unknown(sim):
    with client() as c:
        r = c.post(sim.base_url + ENDPOINT, json={"image_url": LANDSCAPE})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "prompt"] and r.json()["detail"][0]["type"] == "missing"
        r = submit(c, sim.base_url, resolution="4k", duration=5, api_key="sk-very-secret")
        assert r.status_code == 422 and "sk-very-secret" not in r.text
        assert {tuple(e["loc"]) for e in r.json()["detail"]} == {("body", "resolution"), ("body", "duration")}
        assert all({"loc", "msg", "type"} <= set(e) for e in r.json()["detail"])
        r = c.post(sim.base_url + ENDPOINT, content=b"{nope", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"]
        assert c.post(sim.base_url + "/fal-ai/sora-2", json={"prompt": "x"}).status_code == 404
        assert c.post(sim.base_url + "/fal-ai/flux/dev", json={"prompt": "x"}).status_code == 404
        unknown = f"{sim.base_url}/fal-ai/sora-2/requests/00000000-0000-4000-8000-000000000000"
        assert c.get(unknown + "/status").status_code == 404
        assert c.get(unknown).status_code == 404
        r = c.put(unknown + "/cancel")
        assert r.status_code == 404 and r.json() == {"status": "NOT_FOUND"}
        assert c.get(sim.base_url + "/_simulator/files/" + "0" * 64 + ".mp4").status_code == 404


def test_simulated_failure_prompt(sim):
    with client() as c:
        sub = submit(c, sim.base_url, prompt="please [simulate-failure] now").json()
        _, body = wait_done(c, sub["status_url"])
        assert body["error_type"] == "simulated_model_error" and body["error"]
        r = c.get(sub["response_url"])
        assert r.status_code == 422 and r.headers["x-fal-retryable"] == "false"
        assert r.json()["detail"][0]["loc"] == ["body", "prompt"]


def test_cancel(cache_dir):
    with running(cache_dir, queue_latency=5.0, run_latency=0.0) as server, client() as c:
        sub = submit(c, server.base_url, prompt="to cancel").json()
        r = c.put(sub["cancel_url"])
        assert r.status_code == 202 and r.json() == {"status": "CANCELLATION_REQUESTED"}
        st = c.get(sub["status_url"])
        assert st.status_code == 200 and st.json()["error_type"] == "request_cancelled"
        assert c.get(sub["response_url"]).status_code == 400
        assert c.put(sub["cancel_url"]).json() == {"status": "ALREADY_COMPLETED"}
        stats = server.stats()
        assert stats["cancels"] == 1 and stats["cancelled"] == 1 and stats["completed"] == 0
        assert stats["in_queue"] == 0
    with running(cache_dir, run_latency=0.0) as server, client() as c:
        sub = submit(c, server.base_url, prompt="done [simulate-failure]").json()
        wait_done(c, sub["status_url"])
        r = c.put(sub["cancel_url"])
        assert r.status_code == 400 and r.json() == {"status": "ALREADY_COMPLETED"}


# -- scheduling, metadata, determinism, stats --------------------------------------------------------------------

def test_max_running_queue_positions(cache_dir):
    with running(cache_dir, max_running=1, run_latency=0.3) as server, client() as c:
        subs = [submit(c, server.base_url, prompt=f"q{i}").json() for i in range(4)]
        assert [s["queue_position"] for s in subs] == [0, 0, 1, 2]
        st = c.get(subs[3]["status_url"]).json()
        assert st["status"] == "IN_QUEUE" and st["queue_position"] == 2
        assert server.stats()["in_progress"] == 1 and server.stats()["in_queue"] == 3
        t0 = time.monotonic()
        for s in subs:
            wait_done(c, s["status_url"])
        assert time.monotonic() - t0 >= 0.8  # four runs of 0.3 s, one at a time
        stats = server.stats()
        assert stats["max_running_seen"] == 1 and stats["completed"] == 4


def test_without_metadata(cache_dir):
    with running(cache_dir, include_metadata=False, run_latency=0.0) as server, client() as c:
        sub = submit(c, server.base_url).json()
        wait_done(c, sub["status_url"])
        out = c.get(sub["response_url"]).json()
        assert set(out["video"]) == {"url", "content_type"} and out["video_id"].startswith("video_")


def _trace(cache_dir, seed: int) -> list:
    with running(cache_dir, seed=seed, faults={"rate_limit": 0.5}, run_latency=0.0) as server, client() as c:
        return [(r.status_code, r.json().get("request_id"))
                for r in (submit(c, server.base_url, prompt=f"d{i}") for i in range(12))]


def test_determinism_from_seed(cache_dir):
    a, b, other = _trace(cache_dir, 5), _trace(cache_dir, 5), _trace(cache_dir, 6)
    assert a == b
    assert {code for code, _ in a} == {200, 429}
    assert a != other


def test_stats_reset_and_webhook(cache_dir):
    with running(cache_dir, run_latency=0.0) as server, client() as c:
        base = server.base_url
        first = submit(c, base, prompt="same").json()
        submit(c, base, prompt="same", resolution="auto", api_key="sk-x")
        c.post(base + ENDPOINT, params={"fal_webhook": "http://127.0.0.1:9/hook"},
               json={"prompt": "other", "image_url": LANDSCAPE})
        wait_done(c, first["status_url"])
        stats = c.get(base + "/_simulator/stats").json()
        assert stats["submits"] == 3 and stats["submits_by_prompt"] == {"same": 2, "other": 1}
        assert sorted(stats["submits_by_input"].values()) == [1, 2]  # api_key/defaults do not change the hash
        assert stats["calls"]["submit"] == 3 and stats["calls"]["status"] >= 1
        assert stats["webhooks"][0]["url"] == "http://127.0.0.1:9/hook"
        assert set(stats) >= {"submits", "submits_by_input", "submits_by_prompt", "calls", "cancels", "faults",
                              "completed", "in_queue", "in_progress", "max_running_seen"}
        assert c.post(base + "/_simulator/reset").status_code == 200
        stats = server.stats()
        assert stats["submits"] == 0 and stats["completed"] == 0 and sum(stats["calls"].values()) == 0
        assert c.get(first["status_url"]).status_code == 404
        again = submit(c, base, prompt="same").json()
        assert again["request_id"] == first["request_id"]  # ids restart from the seed
        server.reset()
        assert server.stats()["submits"] == 0


def test_status_stream(sim):
    with client() as c:
        sub = submit(c, sim.base_url, prompt="stream").json()
        with c.stream("GET", sub["status_url"] + "/stream", params={"logs": 1}) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert '"COMPLETED"' in events[-1] and '"IN_QUEUE"' in events[0]


def test_hundreds_of_concurrent_clients(cache_dir):
    async def one(c: httpx.AsyncClient, base: str, i: int) -> int:
        r = await c.post(base + ENDPOINT, json={"prompt": f"c{i}", "image_url": LANDSCAPE, "duration": 4})
        sub = r.json()
        while True:
            s = await c.get(sub["status_url"])
            if s.status_code == 200:
                break
            await asyncio.sleep(0.05)
        return (await c.get(sub["response_url"])).status_code

    async def main(base: str) -> list[int]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(trust_env=False, headers=AUTH, timeout=30, limits=limits) as c:
            return await asyncio.gather(*(one(c, base, i) for i in range(200)))

    with running(cache_dir, run_latency=0.5, max_running=40) as server:
        t0 = time.monotonic()
        codes = asyncio.run(main(server.base_url))
        elapsed = time.monotonic() - t0
        stats = server.stats()
    assert codes == [200] * 200
    assert stats["completed"] == 200 and stats["max_running_seen"] == 40
    assert elapsed < 20


def test_no_dagster_import():
    code = "import sys, sora_pipeline.simulator; assert not any(m.startswith('dagster') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_server_stops_cleanly(cache_dir):
    before = {t.name for t in threading.enumerate()}
    server = SimulatorServer(SimulatorConfig(video_cache_dir=str(cache_dir))).start()
    with client() as c:
        sub = submit(c, server.base_url).json()
        wait_done(c, sub["status_url"])
    server.stop()
    leftover = {t.name for t in threading.enumerate()} - before
    assert not leftover


# -- self-identification -------------------------------------------------------------------------------------------

def test_self_identification(sim):
    with httpx.Client(trust_env=False) as anonymous:
        r = anonymous.get(sim.base_url + "/.well-known/sora-simulator")
        assert r.status_code == 200 and r.json() == {"simulator": True, "version": 1}
        assert r.headers["x-sora-simulator"] == "1"
        assert anonymous.post(sim.base_url + ENDPOINT, json={}).headers["x-sora-simulator"] == "1"  # 401 too
    with client() as c:
        sub = submit(c, sim.base_url)
        assert sub.headers["x-sora-simulator"] == "1"
        assert c.get(sub.json()["status_url"]).headers["x-sora-simulator"] == "1"
        assert c.get(sim.base_url + "/fal-ai/sora-2/requests/nope/status").headers["x-sora-simulator"] == "1"
