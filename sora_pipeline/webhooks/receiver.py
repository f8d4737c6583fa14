"""The receiver: an ASGI app (Starlette) with `POST /fal/webhook` (`create_webhook_app`) and `WebhookServer`, that
app under uvicorn in a thread. Reads the body up to `WebhookConfig.max_body_bytes`, verifies the signature
(`signatures`), records the hint (`hints.record_webhook`)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sora_pipeline.ledger import Ledger
from sora_pipeline.serving import BackgroundServer
from sora_pipeline.wire import is_loopback
from sora_pipeline.webhooks.hints import WebhookEvent, record_webhook
from sora_pipeline.webhooks.signatures import (INSECURE_ENV, INSECURE_FLAG, NO_KEYS_MESSAGE, WebhookKeyError,
                                               WebhookSignatureError, keys_from_env, verify_signature)

log = logging.getLogger("sora_pipeline.webhooks")

WEBHOOK_PATH = "/fal/webhook"
MAX_BODY_BYTES = 1 << 20  # fal's webhook bodies are a few KiB (URLs, an error detail)
MAX_BODY_ENV, MAX_SKEW_ENV = "SORA_WEBHOOK_MAX_BODY_BYTES", "SORA_WEBHOOK_MAX_SKEW"
MAX_CONNECTIONS = 128  # uvicorn answers 503 beyond it (fal retries): bodies in memory stay ≤ 128 × the cap
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


# ----------------------------------------------------------------------------------------- the ASGI app
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
        if not self.public_keys and not is_loopback(host):
            raise WebhookKeyError(f"{INSECURE_FLAG} listens on loopback only, not {host}: give fal's keys "
                                  "(SORA_WEBHOOK_JWKS_FILE) to serve other hosts")

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, insecure_test_mode: bool = False) -> WebhookConfig:
        """Settings from `SORA_WEBHOOK_*` in `env` (the service's environment, given by `python -m
        sora_pipeline.webhooks`); `WebhookKeyError` (one line) for a value that cannot be used."""
        env = dict(env)
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
