"""Webhook mode: fal calls us back with a request's outcome, so the generation step need not poll.

Pieces (no Dagster import):
- `create_webhook_app(ledger, config)` — an ASGI app (Starlette, like the simulator) with `POST /fal/webhook`. It
  verifies fal's Ed25519 signature when public keys are configured, finds the ledger attempt by `request_id`, and
  records the outcome (`mark_completed` / `mark_failed`). Duplicate deliveries are harmless: the ledger
  transitions are idempotent and a repeated outcome is answered `200 duplicate`. A webhook for a request id the
  ledger does not know (yet — fal can call back before the submitter has recorded the id) is answered 409 so fal
  retries it later.
- `WebhookServer` — runs that app with uvicorn in a background thread (tests, demos, a sidecar), like
  `sora_pipeline.simulator.server.SimulatorServer`; `python -m sora_pipeline.generation.webhooks` runs it as a service.
- `wait_for_webhook(ledger, request_key, attempt, timeout=…, poll_ledger_every=…)` — what the generation engine
  awaits instead of polling fal: the ledger entry once the attempt reached an outcome, or None on timeout (the
  caller then falls back to polling fal, so a webhook that never arrives costs latency, never a result).

Signature (fal's scheme): Ed25519 over `"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256hex(body)}"`, headers
`X-Fal-Webhook-Request-Id`, `-User-Id`, `-Timestamp` (unix seconds) and `-Signature` (hex). Public keys are given
as hex or base64(url) raw 32-byte keys, or as a JWKS document (`{"keys": [{"kty": "OKP", "crv": "Ed25519",
"x": …}]}` — fal publishes its keys that way).

Environment of `python -m sora_pipeline.generation.webhooks`: `SORA_LEDGER_URL` (required: the shared ledger),
`SORA_WEBHOOK_PUBLIC_KEYS` (comma-separated keys) and/or `SORA_WEBHOOK_JWKS_FILE`, `SORA_WEBHOOK_REQUIRE_SIGNATURE`
(default: true when keys are set), `SORA_WEBHOOK_MAX_SKEW` (seconds, default 300), `SORA_PRICE_*` (as elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sora_pipeline.endpoints import UnknownEndpoint, get_profile
from sora_pipeline.generation.costs import PRICE_TABLE_ENV, PriceTable, PriceTableError, priced_cost
from sora_pipeline.fal.models import ImageToVideoOutput
from sora_pipeline.ledger import (
    AttemptRef,
    Ledger,
    LedgerConflict,
    LedgerEntry,
    RequestState,
)
from sora_pipeline.serving import BackgroundServer

log = logging.getLogger("sora_pipeline.generation.webhooks")

WEBHOOK_PATH = "/fal/webhook"
MAX_BODY_BYTES = 16 * 1024 * 1024
TERMINAL_STATES = frozenset({RequestState.COMPLETED, RequestState.FAILED, RequestState.CANCELLED})
#: fal error types after which a new attempt may succeed (infrastructure, not the input or the model)
RETRYABLE_ERROR_TYPES = frozenset({
    "request_timeout", "startup_timeout", "runner_scheduling_failure", "runner_disconnected",
    "internal_server_error", "runner_connection_timeout", "runner_server_error", "runner_connection_error",
})
H_REQUEST_ID, H_USER_ID = "x-fal-webhook-request-id", "x-fal-webhook-user-id"
H_TIMESTAMP, H_SIGNATURE = "x-fal-webhook-timestamp", "x-fal-webhook-signature"


# ----------------------------------------------------------------------------------------- signatures
class WebhookSignatureError(ValueError):
    """The webhook's signature headers are missing, stale, or do not verify."""


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


def _b64(text: str) -> bytes:
    text = text.strip()
    return base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4))


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A raw 32-byte Ed25519 public key given as 64 hex characters or as (url-safe) base64."""
    text = text.strip()
    raw: bytes | None = None
    if len(text) == 64:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = _b64(text)
        except (binascii.Error, ValueError):
            raw = b""
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes: give 64 hex characters or base64")
    return Ed25519PublicKey.from_public_bytes(raw)


def keys_from_jwks(document: str | dict[str, Any]) -> list[Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS document (`kty` OKP, `crv` Ed25519, `x` base64url)."""
    doc = json.loads(document) if isinstance(document, str) else document
    keys = [Ed25519PublicKey.from_public_bytes(_b64(k["x"])) for k in doc.get("keys", [])
            if k.get("kty") == "OKP" and k.get("crv") == "Ed25519" and k.get("x")]
    if not keys:
        raise ValueError("the JWKS document holds no Ed25519 key")
    return keys


def verify_signature(public_keys: Sequence[Ed25519PublicKey], headers: Any, body: bytes, *,
                     max_skew: float = 300.0, now: float | None = None) -> str:
    """Check fal's webhook signature; returns the signed request id. Raises `WebhookSignatureError`."""
    request_id, user_id = headers.get(H_REQUEST_ID), headers.get(H_USER_ID)
    timestamp, signature = headers.get(H_TIMESTAMP), headers.get(H_SIGNATURE)
    if not (request_id and user_id and timestamp and signature):
        raise WebhookSignatureError("missing X-Fal-Webhook-* signature headers")
    try:
        ts = int(timestamp)
        sig = bytes.fromhex(signature)
    except ValueError:
        raise WebhookSignatureError("malformed timestamp or signature header") from None
    current = time.time() if now is None else now
    if abs(current - ts) > max_skew:
        raise WebhookSignatureError(f"timestamp is {current - ts:+.0f} s off (allowed ±{max_skew:.0f} s)")
    message = signed_message(request_id, user_id, timestamp, body)
    for key in public_keys:
        try:
            key.verify(sig, message)
            return request_id
        except InvalidSignature:
            continue
    raise WebhookSignatureError("signature does not verify with any configured key")


# ----------------------------------------------------------------------------------------- ledger side
def find_attempt(ledger: Ledger, request_id: str) -> AttemptRef | None:
    """The ledger attempt that recorded fal request id `request_id`."""
    return ledger.find_by_request_id(request_id)


@dataclass(frozen=True)
class WebhookEvent:
    """A parsed webhook body."""

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
        if not isinstance(rid, str) or not rid:
            raise ValueError("request_id is missing")
        if status not in ("OK", "ERROR"):
            raise ValueError(f"status must be OK or ERROR, not {status!r}")
        return cls(request_id=rid, status=status, payload=doc.get("payload"), error=doc.get("error"),
                   gateway_request_id=doc.get("gateway_request_id"), payload_error=doc.get("payload_error"))


def _error_info(event: WebhookEvent) -> tuple[str, str, bool]:
    """(error_type, message, retryable) of an ERROR webhook, mapped like a failed result fetch."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    detail = payload.get("detail")
    error_type = payload.get("error_type")
    if not error_type and isinstance(detail, list) and detail and isinstance(detail[0], dict):
        error_type = detail[0].get("type")
    if isinstance(detail, list):
        text = "; ".join(str(d.get("msg", d.get("type", "invalid"))) for d in detail if isinstance(d, dict))
    else:
        text = "" if detail is None else str(detail)
    code = None
    if event.error and event.error.rsplit(" ", 1)[-1].isdigit():
        code = int(event.error.rsplit(" ", 1)[-1])
    retryable = (error_type in RETRYABLE_ERROR_TYPES) or (code is not None and code >= 500
                                                           and error_type is None)
    label = f" ({error_type})" if error_type else ""
    message = f"request failed{label}: {text or event.error or 'fal reported an error'} [webhook]"
    return error_type or "request_failed", message[:2000], bool(retryable)


def record_webhook(ledger: Ledger, event: WebhookEvent, prices: PriceTable | None = None) -> str:
    """Write a webhook's outcome into the ledger; returns what happened.

    `completed` / `failed` (recorded), `duplicate` (that outcome was already recorded), `stale` (recorded on an
    attempt that is no longer current: history only), `ignored` (e.g. an ERROR for an attempt already completed or
    cancelled), `no_payload` (OK without a payload: the caller's fallback fetches the result), `unmatched` (no
    attempt has this request id — yet).
    """
    ref = find_attempt(ledger, event.request_id)
    if ref is None:
        return "unmatched"
    key, attempt = ref.request_key, ref.attempt
    if event.status == "OK":
        if ref.state == RequestState.COMPLETED:
            return "duplicate"
        if not isinstance(event.payload, dict):
            ledger.set_artifacts(key, attempt, {"webhook": {"status": "OK", "payload_error": event.payload_error
                                                            or "payload missing",
                                                            "received_at": datetime.now(UTC).isoformat()}})
            return "no_payload"
        try:
            output = ImageToVideoOutput.model_validate(event.payload)
        except ValidationError:
            ledger.set_artifacts(key, attempt, {"webhook": {"status": "OK", "payload_error": "invalid payload",
                                                            "received_at": datetime.now(UTC).isoformat()}})
            return "no_payload"
        entry = ledger.get(key)
        spec = entry.spec if entry is not None else {}
        if prices is None:  # the prices of the endpoint the request went to
            try:
                prices = PriceTable.from_env(profile=get_profile(spec.get("endpoint_id")))
            except (UnknownEndpoint, PriceTableError):
                prices = PriceTable()
        seconds = output.video.duration or float(spec.get("duration") or 0) or None
        cost = priced_cost(prices, resolution=spec.get("resolution"), height=output.video.height,
                           width=output.video.width, seconds_generated=seconds,
                           byo_openai_key=bool(spec.get("used_openai_key")))
        document = output.model_dump(mode="json", exclude_none=True)
        try:
            ledger.mark_completed(key, attempt, output=document, completed_at=datetime.now(UTC),
                                  seconds_generated=seconds, actual_cost=cost)
        except LedgerConflict as exc:
            return "stale" if exc.recorded else "ignored"
        return "completed"
    error_type, message, retryable = _error_info(event)
    if ref.state == RequestState.FAILED and ref.error_type == error_type:
        return "duplicate"
    if ref.state in (RequestState.COMPLETED, RequestState.CANCELLED):
        return "ignored"  # a result is never overwritten by an error; a cancelled attempt stays cancelled
    try:
        ledger.mark_failed(key, attempt, error_type=error_type, error_message=message, retryable=retryable)
    except LedgerConflict as exc:
        return "stale" if exc.recorded else "ignored"
    return "failed"


# ----------------------------------------------------------------------------------------- the ASGI app
@dataclass
class WebhookConfig:
    """Receiver settings. With `public_keys`, unsigned or badly signed webhooks are refused (401)."""

    public_keys: list[Ed25519PublicKey] = field(default_factory=list)
    require_signature: bool | None = None  # None: required iff keys are configured
    max_skew_seconds: float = 300.0
    prices: PriceTable | None = None
    path: str = WEBHOOK_PATH

    @property
    def verifies(self) -> bool:
        return bool(self.public_keys) if self.require_signature is None else self.require_signature

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> WebhookConfig:
        env = dict(os.environ if env is None else env)
        keys = [parse_public_key(k) for k in env.get("SORA_WEBHOOK_PUBLIC_KEYS", "").split(",") if k.strip()]
        jwks = env.get("SORA_WEBHOOK_JWKS_FILE", "").strip()
        if jwks:
            with open(jwks, encoding="utf-8") as fh:
                keys += keys_from_jwks(fh.read())
        require = env.get("SORA_WEBHOOK_REQUIRE_SIGNATURE", "").strip().lower()
        return cls(public_keys=keys,
                   require_signature=None if not require else require in ("1", "true", "yes"),
                   max_skew_seconds=float(env.get("SORA_WEBHOOK_MAX_SKEW", "300")),
                   prices=PriceTable.from_env(env) if env.get(PRICE_TABLE_ENV) else None)


class WebhookApp(Starlette):
    ledger: Ledger
    config: WebhookConfig
    counts: Counter


def create_webhook_app(ledger: Ledger, config: WebhookConfig | None = None) -> WebhookApp:
    """The receiver as an ASGI app: `POST {config.path}`, `GET /healthz`, `GET /stats` (counters)."""
    config = config or WebhookConfig()
    if config.require_signature and not config.public_keys:
        raise ValueError("require_signature is set but no public key is configured")
    counts: Counter = Counter()
    lock = threading.Lock()

    def count(name: str) -> None:
        with lock:
            counts[name] += 1

    async def receive(request: Request) -> JSONResponse:
        count("received")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            count("rejected_size")
            return JSONResponse({"detail": "body too large"}, status_code=413)
        if config.verifies:
            try:
                signed_id = verify_signature(config.public_keys, request.headers, body,
                                             max_skew=config.max_skew_seconds)
            except WebhookSignatureError as exc:
                count("rejected_signature")
                log.warning("webhook refused: %s", exc)
                return JSONResponse({"detail": f"invalid signature: {exc}"}, status_code=401)
        else:
            signed_id = None
        try:
            event = WebhookEvent.parse(body)
        except ValueError as exc:
            count("rejected_body")
            return JSONResponse({"detail": str(exc)}, status_code=400)
        if signed_id is not None and signed_id != event.request_id:
            count("rejected_signature")
            return JSONResponse({"detail": "signed request id does not match the body"}, status_code=401)
        try:
            outcome = await asyncio.to_thread(record_webhook, ledger, event, config.prices)
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
    uvicorn_options = {"lifespan": "off"}

    def __init__(self, ledger: Ledger, config: WebhookConfig | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        super().__init__(host, port)
        self.ledger, self.config = ledger, config or WebhookConfig()

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
    """Wait until attempt `attempt` of `request_key` has an outcome in the ledger (written by the receiver).

    Returns the entry when the attempt is COMPLETED / FAILED / CANCELLED, or when a webhook arrived without a
    usable payload (the entry is then still SUBMITTED, with `artifacts["webhook"]`: fetch the result now). Returns
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
                                 description="fal webhook receiver writing outcomes into the request ledger")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--ledger-url", default=os.environ.get("SORA_LEDGER_URL"))
    args = ap.parse_args(list(argv) if argv is not None else None)
    if not args.ledger_url:
        ap.error("set SORA_LEDGER_URL (or --ledger-url) to the shared ledger, e.g. postgresql+psycopg2://…")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = WebhookConfig.from_env()
    if not config.verifies:
        log.warning("no webhook public key configured: signatures are NOT verified")
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
