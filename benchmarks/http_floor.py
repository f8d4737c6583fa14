"""The HTTP floor of one item: what fal's queue protocol alone costs this machine in CPU, measured on the same
simulator the pipeline runs against — a baseline for P8's pipeline CPU per item.

Per item, with bare httpx (no ledger, no retries, no Dagster, no file): submit (POST), the status stream until
COMPLETED, the result (GET), and the video streamed into a SHA-256 — the four calls every generated video needs.
Items cycle through `mix` (endpoint → durations) as P8's day does, so the videos are the same clips; the bodies
are built by the endpoints' profiles before the clock starts.
`concurrency` items in flight, on a `ShardedTransport` (httpx's own single pool costs several times more per
request at this concurrency: docs/performance.md). Run in a fresh interpreter:
`python -m benchmarks.http_floor BASE_URL N CONCURRENCY MIX_JSON` prints one JSON line."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import resource
import sys
import time

import httpx

from sora_pipeline.fal.pools import ShardedTransport


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _image_uri() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (320, 180), (20, 120, 220)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bodies(n: int, mix: dict[str, list[int]]) -> list[tuple[str, dict]]:
    """(endpoint, submit body) per item, cycling through the endpoints and each one's durations."""
    from sora_pipeline.endpoints import get_profile

    image, endpoints = _image_uri(), list(mix)
    out = []
    for i in range(n + 1):
        endpoint = endpoints[i % len(endpoints)]
        durations = mix[endpoint]
        out.append((endpoint, get_profile(endpoint).payload(prompt=f"floor clip {i}: a calm lake at dawn",
                                                            image_url=image,
                                                            duration=durations[(i // len(endpoints)) % len(durations)])))
    return out


async def _item(http: httpx.AsyncClient, base: str, endpoint: str, body: dict) -> int:
    submit = await http.post(f"{base}/{endpoint}", json=body)
    submit.raise_for_status()
    handle = submit.json()
    async with http.stream("GET", f"{handle['status_url']}/stream") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data:") and json.loads(line[5:]).get("status") == "COMPLETED":
                break
    result = await http.get(handle["response_url"])
    result.raise_for_status()
    digest, size = hashlib.sha256(), 0
    async with http.stream("GET", result.json()["video"]["url"]) as video:
        video.raise_for_status()
        async for chunk in video.aiter_bytes():
            digest.update(chunk)
            size += len(chunk)
    return size


async def measure(base: str, n: int, concurrency: int, mix: dict[str, list[int]]) -> dict:
    bodies = _bodies(n, mix)
    async with httpx.AsyncClient(transport=ShardedTransport(concurrency * 2), timeout=60.0,
                                 headers={"Authorization": "Key floor-benchmark"}) as http:
        queue = iter(bodies[1:])
        sizes: list[int] = []

        async def worker() -> None:
            for endpoint, body in queue:
                sizes.append(await _item(http, base, endpoint, body))

        await _item(http, base, *bodies[0])  # warm: imports, the first connection
        c0, t0 = _cpu(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = _cpu() - c0, time.perf_counter() - t0
    return {"n": n, "concurrency": concurrency, "cpu_s": cpu, "wall_s": wall, "cpu_ms_per_item": 1000 * cpu / n,
            "video_kb_per_item": sum(sizes) / n / 1024}


def run_floor(base: str, n: int, concurrency: int, mix: dict) -> dict:
    """`measure` in a fresh interpreter (as the pipeline's day runs in one)."""
    import subprocess

    from benchmarks.common import REPO

    out = subprocess.run([sys.executable, "-m", "benchmarks.http_floor", base, str(n), str(concurrency),
                          json.dumps({e: list(d) for e, d in mix.items()})], cwd=REPO,
                         stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])))),
          flush=True)
