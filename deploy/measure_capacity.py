"""Measure the per-call costs behind docs/capacity.md on this machine (loopback only, nothing leaves it).

    .venv/bin/python deploy/measure_capacity.py [--pg postgresql+psycopg2://postgres@127.0.0.1:5432/postgres]

Prints JSON: client CPU per status poll (simulator in a separate process), download+sha256+probe throughput of
a simulator MP4, ledger transaction latency (SQLite, and PostgreSQL when --pg is reachable: a scratch database is
created and dropped), and webhook receiver throughput into that ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime

import httpx
from PIL import Image

from sora_pipeline.media.download import download_video
from sora_pipeline.fal.client import AsyncFalQueueClient
from sora_pipeline.fal.models import ImageToVideoInput
from sora_pipeline.fal.policies import PollPolicy
from sora_pipeline.ledger import Ledger, RequestSpec, ResubmitPolicy
from sora_pipeline.media.probe import probe_video

EP = "fal-ai/sora-2/image-to-video/pro"


def _image() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (640, 360), (30, 90, 200)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def start_simulator(run_latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "sora_pipeline.simulator", "--run-latency", str(run_latency)],
                            stdout=subprocess.PIPE, text=True)
    base = proc.stdout.readline().strip()
    return proc, base


async def poll_cost(base: str, polls: int = 3000, concurrency: int = 50) -> dict:
    """Client-side CPU seconds per status call (the simulator runs in another process)."""
    image = _image()
    async with AsyncFalQueueClient(key="k", base_url=base, endpoint_id=EP, max_connections=concurrency,
                                   poll=PollPolicy(interval=0.01)) as c:
        handles = [await c.submit(ImageToVideoInput(prompt=f"poll {i}", image_url=image))
                   for i in range(concurrency)]
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await c.status(handles[i % concurrency])

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(polls)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return {"status_calls": polls, "client_cpu_ms_per_call": round(1000 * cpu / polls, 3),
            "calls_per_s_one_process": round(polls / wall, 1)}


async def download_cost(base: str, duration: int = 12, resolution: str = "1080p", n: int = 10) -> dict:
    image = _image()
    async with AsyncFalQueueClient(key="k", base_url=base, endpoint_id=EP, poll=PollPolicy(interval=0.05)) as c:
        h = await c.submit(ImageToVideoInput(prompt="download", image_url=image, duration=duration,
                                             resolution=resolution, aspect_ratio="16:9"))
        await c.wait(h, timeout=300)
        out = await c.result(h)
    times, cpu, size = [], [], 0
    async with httpx.AsyncClient(trust_env=False) as http:
        for _ in range(n):
            c0, t0 = time.process_time(), time.perf_counter()
            f = await download_video(http, out.video.url, queue_base_url=base)
            probe_video(f.path)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            size = f.size
            os.unlink(f.path)
    mb = size / 1e6
    return {"video": f"{duration}s {resolution} (simulator, {mb:.2f} MB)",
            "download_hash_probe_s": round(statistics.median(times), 4),
            "cpu_ms_per_MB": round(1000 * statistics.median(cpu) / mb, 2),
            "MB_per_s": round(mb / statistics.median(times), 1)}


def ledger_cost(url: str, n: int = 300) -> dict:
    with Ledger.open(url) as lg:
        specs = [RequestSpec.create(EP, item_id=f"m{i}", day="2026-11-20", prompt=f"p {i} {uuid.uuid4()}",
                                    resolution="720p", aspect_ratio="16:9", duration=4,
                                    image_sha256=hashlib.sha256(str(i).encode()).hexdigest(),
                                    used_openai_key=False, estimated_cost=1.2) for i in range(n)]
        t0 = time.perf_counter()
        lg.plan(specs)
        plan_s = time.perf_counter() - t0
        lat = {"claim": [], "mark_submitted": [], "mark_completed": [], "get": []}
        for s in specs:
            t = time.perf_counter()
            _, e = lg.claim(s.request_key, owner="bench", policy=ResubmitPolicy())
            lat["claim"].append(time.perf_counter() - t)
            t = time.perf_counter()
            lg.mark_submitted(s.request_key, e.attempt, request_id=f"rid-{s.request_key[:16]}", status_url=None,
                              response_url=None, cancel_url=None)
            lat["mark_submitted"].append(time.perf_counter() - t)
            t = time.perf_counter()
            lg.get(s.request_key)
            lat["get"].append(time.perf_counter() - t)
        for s in specs[: n // 2]:
            t = time.perf_counter()
            lg.mark_completed(s.request_key, 1, output={"video": {"url": "https://x/y.mp4"}, "video_id": "v"},
                              completed_at=datetime.now(UTC), seconds_generated=4.0, actual_cost=1.2)
            lat["mark_completed"].append(time.perf_counter() - t)
        return {"dialect": lg.dialect, "plan_ms_per_item": round(1000 * plan_s / n, 3),
                **{f"{k}_ms": round(1000 * statistics.median(v), 3) for k, v in lat.items()}}, specs[n // 2:]


def webhook_throughput(url: str, specs: list[RequestSpec]) -> dict:
    from sora_pipeline.webhooks.receiver import WebhookConfig, WebhookServer

    with Ledger.open(url) as lg, WebhookServer(lg, WebhookConfig(insecure_test_mode=True)) as hooks:  # unsigned: a test
        bodies = [json.dumps({"request_id": f"rid-{s.request_key[:16]}", "status": "OK", "error": None,
                              "payload": {"video": {"url": "https://x/y.mp4", "duration": 4.0},
                                          "video_id": "v"}}).encode() for s in specs]

        async def post_all() -> float:
            async with httpx.AsyncClient(trust_env=False) as c:
                sem = asyncio.Semaphore(20)

                async def one(b: bytes) -> None:
                    async with sem:
                        r = await c.post(hooks.url, content=b)
                        assert r.status_code == 200, r.text

                t0 = time.perf_counter()
                await asyncio.gather(*(one(b) for b in bodies))
                return time.perf_counter() - t0

        wall = asyncio.run(post_all())
        return {"webhooks": len(bodies), "webhooks_per_s": round(len(bodies) / wall, 1), "counts": hooks.stats()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", default=os.environ.get("SORA_TEST_POSTGRES_URL",
                                                   "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"))
    args = ap.parse_args()
    results: dict = {"cpus": os.cpu_count()}
    proc, base = start_simulator(run_latency=0.05)
    try:
        results["polling"] = asyncio.run(poll_cost(base))
        results["download"] = asyncio.run(download_cost(base))
    finally:
        proc.terminate()
        proc.wait(10)
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_url = f"sqlite:///{tmp}/ledger.sqlite"
        results["ledger_sqlite"], rest = ledger_cost(sqlite_url)
        results["webhooks_sqlite"] = webhook_throughput(sqlite_url, rest)
    try:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        admin = make_url(args.pg)
        engine = create_engine(admin, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        name = f"sora_measure_{uuid.uuid4().hex[:8]}"
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            url = admin.set(database=name).render_as_string(hide_password=False)
            results["ledger_postgresql"], rest = ledger_cost(url)
            results["webhooks_postgresql"] = webhook_throughput(url, rest)
        finally:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            engine.dispose()
    except Exception as exc:  # no server: report what we have
        results["ledger_postgresql"] = f"skipped: {type(exc).__name__}: {exc}"
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
