"""P1b: the sequential peer — the official `fal-client` package's `subscribe` in a loop, one request after the other,
against the same simulator settings as P1 (L = 2 s) — compared with sora_pipeline's P1 wall time for N = 200.

How fal-client reaches the simulator: it builds `https://{FAL_QUEUE_RUN_HOST}/{endpoint}` at import time (scheme
fixed to https), and follows the `status_url`/`response_url` the queue answers with. So the simulator is served
behind TLS on 127.0.0.1 with a throwaway self-signed certificate (`benchmarks/_tls_sim.py`), and fal-client runs
in a child process with `FAL_QUEUE_RUN_HOST=127.0.0.1:<port>`, `FAL_KEY=<simulator key>` and
`SSL_CERT_FILE=<that certificate>` (httpx trusts it). Nothing is patched. fal-client polls at its default
interval (0.1 s). The project's own blocking client (`FalQueueClient.subscribe`, plain http, poll 0.1 s) runs the
same loop as a second peer. The peers only subscribe (no download/probe/archive/tables, which the pipeline does).

To keep `make bench` short the peers run a subset (quick: 10 and 5 requests, full: 20 and 20) and the time for
200 is extrapolated linearly (each request is independent and takes ≈ L + polling, so this is exact up to noise).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    CACHE, REPO, Result, SimProcess, parse_mode, queue_calls, rnd, same_run_result, write_image,
)
from benchmarks import p1_day

NAME = "p1b_sequential"
ENDPOINT = "fal-ai/sora-2/image-to-video/pro"


def _arguments(i: int) -> dict:
    from sora_pipeline.fal.inputs import load_image_input

    image = load_image_input(str(write_image(CACHE / "images")))
    return {"prompt": f"sequential peer {i}: a calm lake at dawn", "image_url": image.url, "resolution": "720p",
            "aspect_ratio": "16:9", "duration": 4}


def _fal_client_child(n: int) -> None:
    """Runs in a child process whose environment points fal-client at the TLS simulator."""
    os.environ["FAL_KEY"] = os.environ.pop("BENCH_SIM_FAL_KEY")  # benchmarks.common drops FAL_KEY on import
    import fal_client
    import fal_client.client as fc

    expected = f"https://{os.environ['FAL_QUEUE_RUN_HOST']}/"
    assert fc.QUEUE_URL_FORMAT == expected, (fc.QUEUE_URL_FORMAT, expected)
    times, urls = [], []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        out = fal_client.subscribe(ENDPOINT, arguments=_arguments(i))
        times.append(time.perf_counter() - t)
        urls.append(out["video"]["url"])
    total = time.perf_counter() - t0
    print(json.dumps({"n": n, "total_s": total, "per_request_s": times, "video_urls_ok": all(urls),
                      "queue_url_format": fc.QUEUE_URL_FORMAT,
                      "default_poll_interval_s": fc.DEFAULT_QUEUE_POLL_INTERVAL}), flush=True)


def fal_client_peer(n: int, latency: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as certs, \
            SimProcess(run_latency=latency, tls_cert_dir=Path(certs)) as sim:
        host = sim.base_url.removeprefix("https://")
        env = dict(os.environ, FAL_QUEUE_RUN_HOST=host, BENCH_SIM_FAL_KEY="simulator-local-key",
                   SSL_CERT_FILE=sim.cert_file, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        env.pop("FAL_RUN_HOST", None)
        proc = subprocess.run([sys.executable, "-m", "benchmarks.p1b_sequential", "--fal-client-child", str(n)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"fal-client peer failed:\n{proc.stderr[-3000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["calls"] = queue_calls(sim.stats())
        out["how"] = (f"fal-client {_version('fal-client')} in a child process with FAL_QUEUE_RUN_HOST={host}, "
                      "SSL_CERT_FILE=<self-signed cert of the TLS simulator>")
    return out


def own_client_peer(n: int, latency: float, poll: float) -> dict:
    from sora_pipeline.fal import FalQueueClient, PollPolicy
    from sora_pipeline.defs.resources import SIMULATOR_KEY

    with SimProcess(run_latency=latency) as sim:
        times = []
        with FalQueueClient(key=SIMULATOR_KEY, base_url=sim.base_url, poll=PollPolicy(interval=poll)) as client:
            t0 = time.perf_counter()
            for i in range(n):
                t = time.perf_counter()
                out = client.subscribe(_arguments(i))
                times.append(time.perf_counter() - t)
                assert out.video.url
            total = time.perf_counter() - t0
        return {"n": n, "total_s": total, "per_request_s": times, "calls": queue_calls(sim.stats()),
                "how": f"sora_pipeline.fal.FalQueueClient.subscribe, plain http, PollPolicy(interval={poll})"}


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def run(argv: list[str] | None = None) -> Result:
    mode, _ = parse_mode(argv)
    n_fal, n_own = (20, 20) if mode == "full" else (10, 5)
    n, latency = p1_day.N, p1_day.L
    res = Result(NAME, mode, parameters={
        "n_requests_pipeline": n, "run_latency_s": latency, "fal_client_subset": n_fal, "own_client_subset": n_own,
        "extrapolation": "mean seconds per request × N (linear; requests are independent)",
        "pipeline_figure": "P1 best wall time of the same `python -m benchmarks` run (re-measured if absent)"})
    p1 = same_run_result(p1_day.NAME, mode)
    if p1 is not None:
        pipeline_wall, source = p1["numbers"]["wall_s"], "P1 result of this run"
    else:
        pipeline_wall, source = p1_day.measure(repeats=1)["best"]["wall_s"], "measured here (P1 not in this run)"
    peers = {}
    try:
        peers["fal_client"] = fal_client_peer(n_fal, latency)
    except Exception as exc:  # reported, then the project's client stands in (as the issue allows)
        res.notes.append(f"fal-client could not run against the TLS simulator: {exc}")
    peers["own_client"] = own_client_peer(n_own, latency, p1_day.POLL)
    for peer in peers.values():
        per = peer["per_request_s"]
        peer["mean_per_request_s"] = statistics.fmean(per)
        peer["median_per_request_s"] = statistics.median(per)
        peer["extrapolated_n_s"] = peer["mean_per_request_s"] * n
        peer["queue_calls_per_request"] = peer["calls"]["queue_total"] / peer["n"]
        peer["speedup_of_pipeline"] = peer["extrapolated_n_s"] / pipeline_wall
    main_peer = "fal_client" if "fal_client" in peers else "own_client"
    speedup = peers[main_peer]["speedup_of_pipeline"]
    res.numbers = {"pipeline_wall_s": pipeline_wall, "pipeline_wall_source": source, "peers": peers,
                   "peer_used_for_target": main_peer, "speedup": rnd(speedup)}
    peer = peers[main_peer]
    res.check("P1b", f"sequential {main_peer.replace('_', '-')} (×{n}, extrapolated) / pipeline wall", rnd(speedup),
              "≥ 40", speedup >= 40, "×",
              f"{peer['mean_per_request_s']:.3f} s/request × {n} = {peer['extrapolated_n_s']:.0f} s vs "
              f"{pipeline_wall:.2f} s; physical max {n * latency / (latency * -(-n // p1_day.C)):.0f}×")
    own = peers["own_client"]
    res.save(f"pipeline {pipeline_wall:.2f} s for {n} vs sequential {main_peer} {peer['extrapolated_n_s']:.0f} s "
             f"(×{speedup:.1f}; own client sequential ×{own['speedup_of_pipeline']:.1f})")
    return res


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--fal-client-child"]:
        _fal_client_child(int(argv[1]))
        return
    run(argv)


if __name__ == "__main__":
    main()
