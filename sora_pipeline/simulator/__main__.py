"""`python -m sora_pipeline.simulator --port 8765 --seed 1 --fault rate_limit=0.1` — run the simulator by hand.

Hostile modes for testing clients: e.g. `--fault foreign_urls=1 --foreign-base-url http://127.0.0.1:9000`,
`--fault huge_json=1 --hostile-bytes 100000000`, `--fault echo_key=1`. Every answer carries `x-sora-simulator: 1`
and `GET /.well-known/sora-simulator` answers {"simulator": true, "version": 1}."""

from __future__ import annotations

import argparse
import signal
import threading

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
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queue-latency", type=float, default=0.0)
    ap.add_argument("--run-latency", type=float, default=0.5)
    ap.add_argument("--max-running", type=int, default=None)
    ap.add_argument("--fps", type=int, default=24)
    ap.add_argument("--no-metadata", action="store_true", help="result video has only url + content_type")
    ap.add_argument("--fault", type=_fault, action="append", default=[], metavar="KIND=P",
                    help="inject a fault with probability P (repeatable; kinds below)")
    ap.add_argument("--fault-call", action="append", default=None, metavar="CALL",
                    help="calls the per-call kinds hit: submit/status/result/cancel/file (repeatable; default: "
                         "all but file)")
    ap.add_argument("--foreign-base-url", default=None,
                    help="where foreign_urls / redirect point (default http://127.0.0.2:<port>)")
    ap.add_argument("--hostile-bytes", type=int, default=1 << 32,
                    help="size of huge_* bodies, where endless ones stop (default 4 GiB)")
    ap.add_argument("--hostile-declare-length", action="store_true",
                    help="huge_json/huge_status_json/endless_video declare Content-Length up front")
    ap.add_argument("--impersonate-fal", action="store_true",
                    help="do not identify as a simulator (no x-sora-simulator header or /.well-known answer): "
                         "clients take it for fal and keep its results apart from a simulator's")
    ap.add_argument("--slow-seconds", type=float, default=2.0)
    ap.add_argument("--retry-after", type=float, default=0.2)
    ap.add_argument("--key", action="append", default=None, help="accepted key (repeatable; default: any)")
    ap.add_argument("--no-auth", action="store_true")
    ap.add_argument("--video-cache-dir", default=None)
    ap.add_argument("--webhook-signing-seed", default=None, help="Ed25519 seed (64 hex) or any text (hashed)")
    ap.add_argument("--webhook-delay", type=float, default=0.0, help="seconds before the first delivery")
    ap.add_argument("--webhook-duplicate", type=float, default=0.0, metavar="P", help="duplicate delivery odds")
    ap.add_argument("--webhook-drop", type=float, default=0.0, metavar="P", help="never-delivered odds")
    ap.add_argument("--webhook-allow-host", action="append", default=None, metavar="HOST",
                    help="host webhooks may be sent to (repeatable; default: loopback only)")
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
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with SimulatorServer(config, host=args.host, port=args.port) as server:
        print(server.base_url, flush=True)
        print(f"webhook public key: {server.webhook_public_key}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
