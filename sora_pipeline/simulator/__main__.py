"""`python -m sora_pipeline.simulator --port 8765 --seed 1 --fault rate_limit=0.1` — run the simulator by hand.

A fal-compatible queue (submit, status, status stream, result, cancel) that returns real MP4 files: point the
pipeline at it with SORA_FAL_QUEUE_URL=<the URL printed on the first line> and any FAL_KEY. One line per request
goes to stderr (--quiet turns them off).

Hostile modes for testing clients: e.g. `--fault foreign_urls=1 --foreign-base-url http://127.0.0.1:9000`,
`--fault huge_json=1 --hostile-bytes 100000000`, `--fault echo_key=1`. Every answer carries `x-sora-simulator: 1`
and `GET /.well-known/sora-simulator` answers {"simulator": true, "version": 1}."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from sora_pipeline.simulator.app import request_log
from sora_pipeline.simulator.config import FAULT_DOCS, FAULT_KINDS, SimulatorConfig
from sora_pipeline.simulator.server import SimulatorServer


def _fault(text: str) -> tuple[str, float]:
    kind, sep, p = text.partition("=")
    if not sep or kind not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(f"expected KIND=PROBABILITY with KIND in {', '.join(FAULT_KINDS)}")
    return kind, float(p)


def main(argv: list[str] | None = None) -> None:
    kinds = "\n".join(f"  {kind:<25} {doc}" for kind, doc in FAULT_DOCS.items())
    ap = argparse.ArgumentParser(prog="python -m sora_pipeline.simulator", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=f"fault kinds (--fault KIND=PROBABILITY):\n{kinds}")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=0, help="port to listen on; 0 = pick a free port (default); the "
                                                         "base URL is printed on the first line")
    ap.add_argument("--seed", type=int, default=0,
                    help="seeds everything random (request ids, fault draws, clips): same seed, same run (default 0)")
    ap.add_argument("--queue-latency", type=float, default=0.0, metavar="S",
                    help="seconds a request waits IN_QUEUE before it may start (default 0)")
    ap.add_argument("--run-latency", type=float, default=0.5, metavar="S",
                    help="seconds a request runs IN_PROGRESS before it completes (default 0.5)")
    ap.add_argument("--max-running", type=int, default=None, metavar="N",
                    help="requests running at once, like a fal account's concurrency; the rest wait in the queue "
                         "(default: no limit)")
    ap.add_argument("--fps", type=int, default=24, help="frame rate of the generated MP4s (1–120, default 24)")
    ap.add_argument("--no-metadata", action="store_true",
                    help="result video has only url + content_type (no width/height/fps/frames/duration), so "
                         "clients must probe the file")
    ap.add_argument("--fault", type=_fault, action="append", default=[], metavar="KIND=P",
                    help="inject a fault with probability P in [0, 1] (repeatable; the kinds are listed below)")
    ap.add_argument("--fault-call", action="append", default=None, metavar="CALL",
                    help="calls the per-call kinds hit: submit/status/result/cancel/file (repeatable; default: "
                         "all but file)")
    ap.add_argument("--foreign-base-url", default=None, metavar="URL",
                    help="where foreign_urls / redirect point (default http://127.0.0.2:<port>)")
    ap.add_argument("--hostile-bytes", type=int, default=1 << 32, metavar="N",
                    help="size of huge_* bodies, where endless ones stop (default 4 GiB)")
    ap.add_argument("--hostile-declare-length", action="store_true",
                    help="huge_json/huge_status_json/endless_video declare Content-Length up front")
    ap.add_argument("--impersonate-fal", action="store_true",
                    help="do not identify as a simulator (no x-sora-simulator header or /.well-known answer): "
                         "clients take it for fal and keep its results apart from a simulator's")
    ap.add_argument("--slow-seconds", type=float, default=2.0, metavar="S",
                    help="how long the `slow` fault sleeps before answering (default 2)")
    ap.add_argument("--retry-after", type=float, default=0.2, metavar="S",
                    help="Retry-After seconds sent with `rate_limit` (429) answers (default 0.2)")
    ap.add_argument("--key", action="append", default=None,
                    help="accepted key, sent as `Authorization: Key <KEY>` (repeatable; default: any non-empty key)")
    ap.add_argument("--no-auth", action="store_true", help="accept requests without an Authorization header")
    ap.add_argument("--video-cache-dir", default=None, metavar="DIR",
                    help="folder for the generated MP4s, reused across runs (default: a temporary folder)")
    ap.add_argument("--webhook-signing-seed", default=None, metavar="SEED",
                    help="Ed25519 seed (64 hex) or any text (hashed) that signs webhooks (default: from --seed); "
                         "the public key is printed on the second line")
    ap.add_argument("--webhook-delay", type=float, default=0.0, metavar="S",
                    help="seconds between a request's completion and its first webhook delivery (default 0)")
    ap.add_argument("--webhook-duplicate", type=float, default=0.0, metavar="P",
                    help="probability that a webhook is delivered twice, as fal may do (default 0)")
    ap.add_argument("--webhook-drop", type=float, default=0.0, metavar="P",
                    help="probability that a webhook is never delivered (default 0)")
    ap.add_argument("--webhook-allow-host", action="append", default=None, metavar="HOST",
                    help="host webhooks may be sent to (repeatable; default: loopback only)")
    ap.add_argument("--quiet", action="store_true",
                    help="no per-request lines on stderr (by default one line per submit, finished request "
                         "and cancel: `submit <id> <endpoint> prompt=…`, `done <id> 4.0s`, `cancel <id> …`)")
    args = ap.parse_args(argv)
    config = SimulatorConfig(
        seed=args.seed, queue_latency=args.queue_latency, run_latency=args.run_latency,
        max_running=args.max_running, fps=args.fps, include_metadata=not args.no_metadata,
        faults=dict(args.fault), slow_seconds=args.slow_seconds, foreign_base_url=args.foreign_base_url,
        hostile_bytes=args.hostile_bytes, hostile_declare_length=args.hostile_declare_length,
        impersonate_fal=args.impersonate_fal,
        retry_after_seconds=args.retry_after,
        **({"fault_calls": frozenset(args.fault_call)} if args.fault_call else {}),
        accepted_keys=args.key, auth_required=not args.no_auth, video_cache_dir=args.video_cache_dir,
        webhook_signing_seed=args.webhook_signing_seed, webhook_delay=args.webhook_delay,
        webhook_duplicate_probability=args.webhook_duplicate, webhook_drop_probability=args.webhook_drop,
        **({"webhook_allowed_hosts": tuple(args.webhook_allow_host)} if args.webhook_allow_host else {}),
    )
    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        request_log.addHandler(handler)
        request_log.setLevel(logging.INFO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with SimulatorServer(config, host=args.host, port=args.port) as server:
        print(server.base_url, flush=True)
        print(f"webhook public key: {server.webhook_public_key}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
