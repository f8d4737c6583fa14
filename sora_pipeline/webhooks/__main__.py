"""`python -m sora_pipeline.webhooks`: the webhook receiver as a service (see the package docstring). A process of
its own (no code location): this entry module reads its environment (`SORA_LEDGER_URL`, `SORA_WEBHOOK_*`) and
passes it down."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable

from sora_pipeline.ledger import Ledger
from sora_pipeline.webhooks.receiver import WebhookConfig, WebhookServer
from sora_pipeline.webhooks.signatures import INSECURE_ENV, INSECURE_FLAG, WebhookKeyError

log = logging.getLogger("sora_pipeline.webhooks")


def main(argv: Iterable[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sora_pipeline.webhooks",
                                 description="fal webhook receiver: records callbacks as hints in the request "
                                             "ledger (the generation step confirms them with fal)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; put an HTTPS ingress in front, or give "
                         "0.0.0.0 to take connections from other hosts)")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--ledger-url", default=os.environ.get("SORA_LEDGER_URL"))
    ap.add_argument(INSECURE_FLAG, action="store_true",
                    help=f"TEST ONLY: start without fal's keys and take unsigned webhooks (loopback only; same as "
                         f"{INSECURE_ENV}=1)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    if not args.ledger_url:
        sys.exit("webhook receiver: set SORA_LEDGER_URL (or --ledger-url) to the shared ledger, "
                 "e.g. postgresql+psycopg2://…")
    try:
        config = WebhookConfig.from_env(os.environ, insecure_test_mode=args.insecure_test_mode)
        config.check(args.host)
    except WebhookKeyError as exc:
        sys.exit(f"webhook receiver: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not config.verifies:
        log.warning("INSECURE TEST MODE: unsigned webhooks are taken (as hints only); never expose this receiver")
    ledger = Ledger.open(args.ledger_url)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with WebhookServer(ledger, config, host=args.host, port=args.port) as server:
        log.info("receiving fal webhooks at %s (ledger %r)", server.url, ledger)
        stop.wait()
    ledger.close()


if __name__ == "__main__":
    main()
