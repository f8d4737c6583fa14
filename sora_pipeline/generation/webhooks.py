"""Webhook mode: fal calls us back when a request is done, so the generation step need not poll while it waits.

A webhook is a hint, never an outcome: the receiver records `artifacts["webhook"] = {"status", "signed",
"received_at"}` on the attempt, and the generation step, which waits on the ledger, then asks fal itself (status and
result from the queue origin, with the fal client) and records what fal answers. So a forged or mistaken webhook can
make the step ask fal early, but can never mark a running request failed (and resubmittable) or store a video URL.

Pieces (no Dagster import):
- `create_webhook_app(ledger, config)` — an ASGI app (Starlette) with `POST /fal/webhook`: reads the body up to
  `config.max_body_bytes` (413 at the cap, chunked or not), verifies fal's Ed25519 signature (`webhook_auth`),
  finds the attempt by `request_id` and records the hint. A request id the ledger does not know (yet — fal can call
  back before the submitter recorded it) is answered 409 so fal retries it.
- `WebhookServer` — that app with uvicorn in a background thread (tests, demos, a sidecar).
- `wait_for_webhook(...)` — what the generation engine awaits instead of polling fal.
- `python -m sora_pipeline.generation.webhooks` — the service. It refuses to start without fal's keys
  (`SORA_WEBHOOK_JWKS_FILE` / `SORA_WEBHOOK_PUBLIC_KEYS`) unless `--insecure-test-mode` (or
  `SORA_WEBHOOK_INSECURE_TEST_MODE=1`) says it is a test, and listens on 127.0.0.1 unless `--host` says otherwise.
  Also read: `SORA_LEDGER_URL` (required), `SORA_WEBHOOK_MAX_SKEW` (seconds, default 300),
  `SORA_WEBHOOK_MAX_BODY_BYTES` (default 1 MiB).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sora_pipeline.generation.webhook_auth import (  # noqa: F401  (re-exported: the module's public names)
    INSECURE_ENV,
    INSECURE_FLAG,
    NO_KEYS_MESSAGE,
    WebhookKeyError,
    WebhookSignatureError,
    keys_from_env,
    keys_from_jwks,
    parse_public_key,
    signed_message,
    verify_signature,
)
from sora_pipeline.ledger import AttemptRef, Ledger, LedgerConflict, LedgerEntry, RequestState
from sora_pipeline.serving import BackgroundServer

log = logging.getLogger("sora_pipeline.generation.webhooks")

WEBHOOK_PATH = "/fal/webhook"
MAX_BODY_BYTES = 1 << 20  # fal's webhook bodies are a few KiB (URLs, an error detail)
MAX_BODY_ENV, MAX_SKEW_ENV = "SORA_WEBHOOK_MAX_BODY_BYTES", "SORA_WEBHOOK_MAX_SKEW"
MAX_CONNECTIONS = 128  # uvicorn answers 503 beyond it (fal retries): bodies in memory stay ≤ 128 × the cap
TERMINAL_STATES = frozenset({RequestState.COMPLETED, RequestState.FAILED, RequestState.CANCELLED})
_TRUE = ("1", "true", "yes", "on")


class BodyTooLarge(Exception):
    """The body (or its declared Content-Length) passed the receiver's cap."""


async def read_capped_body(request: Request, limit: int) -> bytes:
    """The request body, read as it streams in; `BodyTooLarge` as soon as it passes `limit` bytes (a declared
    Content-Length above the cap is refused before anything is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


# ----------------------------------------------------------------------------------------- ledger side
def find_attempt(ledger: Ledger, request_id: str) -> AttemptRef | None:
    """The ledger attempt that recorded fal request id `request_id`."""
    return ledger.find_by_request_id(request_id)


@dataclass(frozen=True)
class WebhookEvent:
    """A parsed webhook body (what it claims; nothing in it is trusted as an outcome)."""

    request_id: str
    status: str  # OK | ERROR
    payload: Any = None
    error: str | None = None
    gateway_request_id: str | None = None
    payload_error: str | None = None

    @classmethod
    def parse(cls, body: bytes) -> WebhookEvent:
        try:
            doc = json.loads(body)
        except ValueError:
            raise ValueError("body is not JSON") from None
        if not isinstance(doc, dict):
            raise ValueError("body is not a JSON object")
        rid, status = doc.get("request_id"), doc.get("status")
        if not isinstance(rid, str) or not rid or len(rid) > 200:
            raise ValueError("request_id is missing")
        if status not in ("OK", "ERROR"):
            raise ValueError(f"status must be OK or ERROR, not {str(status)[:40]!r}")
        return cls(request_id=rid, status=status, payload=doc.get("payload"), error=doc.get("error"),
                   gateway_request_id=doc.get("gateway_request_id"), payload_error=doc.get("payload_error"))


def record_webhook(ledger: Ledger, event: WebhookEvent, *, signed: bool = False) -> str:
    """Record a webhook as a hint on its attempt; returns what happened.

    `hint` (recorded: the waiting step now asks fal), `duplicate` (the same hint is already there), `ignored` (the
    attempt already has fal's own outcome), `stale` (the request id belongs to an attempt that is no longer
    current), `unmatched` (no attempt has this request id — yet). Never writes an outcome.
    """
    ref = find_attempt(ledger, event.request_id)
    if ref is None:
        return "unmatched"
    if not ref.current:
        return "stale"
    if ref.state in TERMINAL_STATES:
        return "ignored"
    entry = ledger.get(ref.request_key)
    hint = (entry.artifacts or {}).get("webhook") if entry is not None else None
    if isinstance(hint, dict) and hint.get("status") == event.status and bool(hint.get("signed")) == signed:
        return "duplicate"
    try:
        ledger.set_artifacts(ref.request_key, ref.attempt, {"webhook": {
            "status": event.status, "signed": signed, "received_at": datetime.now(UTC).isoformat()}})
    except LedgerConflict:
        return "stale"
    return "hint"


# ----------------------------------------------------------------------------------------- the ASGI app
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class WebhookConfig:
    """Receiver settings. Without `public_keys` the receiver refuses to start, unless `insecure_test_mode`."""

    public_keys: list[Ed25519PublicKey] = field(default_factory=list)
    insecure_test_mode: bool = False  # TEST ONLY: take unsigned webhooks (still only hints) when no key is set
    max_skew_seconds: float = 300.0
    max_body_bytes: int = MAX_BODY_BYTES
    path: str = WEBHOOK_PATH

    @property
    def verifies(self) -> bool:
        return bool(self.public_keys)

    def check(self, host: str = "127.0.0.1") -> None:
        """Raise `WebhookKeyError` (one line) unless this config may serve on `host`."""
        if not self.public_keys and not self.insecure_test_mode:
            raise WebhookKeyError(NO_KEYS_MESSAGE)
        if not self.public_keys and not _is_loopback(host):
            raise WebhookKeyError(f"{INSECURE_FLAG} listens on loopback only, not {host}: give fal's keys "
                                  "(SORA_WEBHOOK_JWKS_FILE) to serve other hosts")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, insecure_test_mode: bool = False) -> WebhookConfig:
        """Settings from `SORA_WEBHOOK_*`; `WebhookKeyError` (one line) for a value that cannot be used."""
        env = dict(os.environ if env is None else env)
        require = env.get("SORA_WEBHOOK_REQUIRE_SIGNATURE", "").strip().lower()
        if require and require not in _TRUE:
            raise WebhookKeyError(f"SORA_WEBHOOK_REQUIRE_SIGNATURE={require} is no longer read (signatures are "
                                  f"always required): unset it, and only for a test use {INSECURE_FLAG}")
        numbers: dict[str, float] = {}
        for name, default in ((MAX_SKEW_ENV, 300.0), (MAX_BODY_ENV, float(MAX_BODY_BYTES))):
            try:
                numbers[name] = float(env.get(name, "").strip() or default)
            except ValueError:
                raise WebhookKeyError(f"{name} must be a number, not {env[name][:40]!r}") from None
            if numbers[name] <= 0:
                raise WebhookKeyError(f"{name} must be above 0")
        insecure = insecure_test_mode or env.get(INSECURE_ENV, "").strip().lower() in _TRUE
        return cls(public_keys=keys_from_env(env), insecure_test_mode=insecure,
                   max_skew_seconds=numbers[MAX_SKEW_ENV], max_body_bytes=int(numbers[MAX_BODY_ENV]))


class WebhookApp(Starlette):
    ledger: Ledger
    config: WebhookConfig
    counts: Counter


def create_webhook_app(ledger: Ledger, config: WebhookConfig | None = None) -> WebhookApp:
    """The receiver as an ASGI app: `POST {config.path}`, `GET /healthz`, `GET /stats` (counters)."""
    config = config or WebhookConfig()
    config.check()
    counts: Counter = Counter()
    lock = threading.Lock()

    def count(name: str) -> None:
        with lock:
            counts[name] += 1

    async def receive(request: Request) -> JSONResponse:
        count("received")
        try:
            body = await read_capped_body(request, config.max_body_bytes)
        except BodyTooLarge:
            count("rejected_size")  # and close the connection: the rest of the body is never read
            return JSONResponse({"detail": f"body above {config.max_body_bytes} bytes"}, status_code=413,
                                headers={"Connection": "close"})
        except ClientDisconnect:
            count("client_disconnected")
            return JSONResponse({"detail": "the body was cut off"}, status_code=400)
        signed_id = None
        if config.verifies:
            try:
                signed_id = verify_signature(config.public_keys, request.headers, body,
                                             max_skew=config.max_skew_seconds)
            except WebhookSignatureError as exc:
                count("rejected_signature")
                log.warning("webhook refused: %s", exc)
                return JSONResponse({"detail": f"invalid signature: {exc}"}, status_code=401)
        try:
            event = WebhookEvent.parse(body)
        except ValueError as exc:
            count("rejected_body")
            return JSONResponse({"detail": str(exc)}, status_code=400)
        if signed_id is not None and signed_id != event.request_id:
            count("rejected_signature")
            return JSONResponse({"detail": "signed request id does not match the body"}, status_code=401)
        try:
            outcome = await asyncio.to_thread(record_webhook, ledger, event, signed=signed_id is not None)
        except SQLAlchemyError:
            log.exception("webhook %s: the ledger is unavailable", event.request_id)
            count("ledger_error")
            return JSONResponse({"detail": "ledger unavailable, retry later"}, status_code=503)
        count(outcome)
        if outcome == "unmatched":
            log.info("webhook for unknown request id %s (not recorded yet?): asking fal to retry", event.request_id)
            return JSONResponse({"detail": "unknown request id; retry later", "result": outcome}, status_code=409)
        return JSONResponse({"result": outcome, "request_id": event.request_id})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def stats(request: Request) -> JSONResponse:
        with lock:
            return JSONResponse(dict(counts))

    app = WebhookApp(routes=[Route(config.path, receive, methods=["POST"]),
                             Route("/healthz", healthz, methods=["GET"]),
                             Route("/stats", stats, methods=["GET"])])
    app.ledger, app.config, app.counts = ledger, config, counts
    return app


class WebhookServer(BackgroundServer):
    """`with WebhookServer(ledger, config) as hooks: submit(..., webhook_url=hooks.url)` (uvicorn in a thread)."""

    name = "webhook receiver"
    uvicorn_options = {"lifespan": "off", "limit_concurrency": MAX_CONNECTIONS}

    def __init__(self, ledger: Ledger, config: WebhookConfig | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        super().__init__(host, port)
        self.ledger, self.config = ledger, config or WebhookConfig()

    def start(self, timeout: float = 15.0):
        self.config.check(self.host)  # before anything is bound
        return super().start(timeout)

    def make_app(self) -> WebhookApp:
        return create_webhook_app(self.ledger, self.config)

    @property
    def url(self) -> str:
        """The URL to pass as `?fal_webhook=` (the client's `webhook_url`)."""
        return self.base_url + self.config.path

    def stats(self) -> dict[str, int]:
        return dict(self.app.counts) if self.app is not None else {}


# ----------------------------------------------------------------------------------------- the waiting side
async def wait_for_webhook(ledger: Ledger, request_key: str, attempt: int, *, timeout: float,
                           poll_ledger_every: float = 1.0) -> LedgerEntry | None:
    """Wait until attempt `attempt` of `request_key` has an outcome or a webhook hint in the ledger.

    Returns the entry when the attempt is COMPLETED / FAILED / CANCELLED (written from fal's own answers), or when
    a webhook hint arrived (the entry is then still SUBMITTED, with `artifacts["webhook"]`: ask fal now). Returns
    None after `timeout` seconds, or when the attempt is no longer the current one: the caller falls back to
    polling fal. Each check is one primary-key read of the ledger (no call to fal).
    """
    deadline = time.monotonic() + max(0.0, timeout)
    interval = max(0.01, poll_ledger_every)
    while True:
        entry = await asyncio.to_thread(ledger.get, request_key)
        if entry is None or entry.attempt != attempt:
            return None
        if entry.state in TERMINAL_STATES or (entry.artifacts or {}).get("webhook"):
            return entry
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        await asyncio.sleep(min(interval, remaining))


# ----------------------------------------------------------------------------------------- service entry point
def main(argv: Iterable[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sora_pipeline.generation.webhooks",
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
        config = WebhookConfig.from_env(insecure_test_mode=args.insecure_test_mode)
        config.check(args.host)
    except WebhookKeyError as exc:
        sys.exit(f"webhook receiver: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not config.verifies:
        log.warning("INSECURE TEST MODE: unsigned webhooks are taken (as hints only); never expose this receiver")
    ledger = Ledger(args.ledger_url)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with WebhookServer(ledger, config, host=args.host, port=args.port) as server:
        log.info("receiving fal webhooks at %s (ledger %r)", server.url, ledger)
        stop.wait()
    ledger.close()


if __name__ == "__main__":
    main()
