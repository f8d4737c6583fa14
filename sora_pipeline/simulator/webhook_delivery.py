"""Webhook delivery of the simulator, as fal does it for a submit with `?fal_webhook=<url>`.

When such a job finishes, its outcome is POSTed to the URL as fal's webhook payload
`{"request_id", "gateway_request_id", "status": "OK"|"ERROR", "payload", "error"}` (`payload` is the result body:
the model output, or the error body of a failed request), signed with Ed25519 over
`"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256hex(body)}"` in the headers `X-Fal-Webhook-Request-Id`,
`-User-Id`, `-Timestamp` and `-Signature` (hex). Non-2xx answers and network errors are retried with exponential
backoff up to `webhook_max_attempts`; seeded knobs delay, drop or duplicate deliveries. Cancelled jobs send no
webhook. Only hosts in `webhook_allowed_hosts` are called (loopback by default).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sora_pipeline.simulator.config import SimulatorConfig
from sora_pipeline.simulator.jobs import Job, JobBook
from sora_pipeline.wire import signed_message

log = logging.getLogger("sora_pipeline.simulator.webhook_delivery")
_HEX_SEED = re.compile(r"^[0-9a-fA-F]{64}$")

#: (status code, body, headers) of a finished job's result, as `GET …/requests/{id}` would answer it
ResultFor = Callable[[Job, str], tuple[int, Any, dict[str, str]]]


def signing_key(config: SimulatorConfig) -> Ed25519PrivateKey:
    """The simulator's Ed25519 key: from `webhook_signing_seed` (hex seed or hashed text), else from `seed`."""
    text = config.webhook_signing_seed
    if text is None:
        text = f"sora-sim-webhook:{config.seed}"
    seed = bytes.fromhex(text) if _HEX_SEED.match(text) else hashlib.sha256(text.encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def jwks_document(key: Ed25519PrivateKey) -> dict[str, Any]:
    """The public half of `key` as a JWKS document, the form fal publishes its webhook keys in (for
    `SORA_WEBHOOK_JWKS_FILE` of a receiver that takes this simulator's webhooks)."""
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": raw.hex()[:16],
                      "x": base64.urlsafe_b64encode(raw).decode().rstrip("=")}]}


def sign_headers(key: Ed25519PrivateKey, request_id: str, user_id: str, body: bytes,
                 timestamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time() if timestamp is None else timestamp))
    signature = key.sign(signed_message(request_id, user_id, ts, body)).hex()
    return {"X-Fal-Webhook-Request-Id": request_id, "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": ts, "X-Fal-Webhook-Signature": signature,
            "Content-Type": "application/json"}


def webhook_body(job: Job, code: int, body: Any) -> dict[str, Any]:
    """fal's webhook payload for a finished job whose result answers `code` with `body`."""
    ok = 200 <= code < 300
    return {"request_id": job.id, "gateway_request_id": job.gateway_id, "status": "OK" if ok else "ERROR",
            "payload": body, "error": None if ok else f"Invalid status code: {code}"}


class WebhookDeliverer:
    """Background task of the simulator's event loop: watches jobs that asked for a webhook and delivers them."""

    def __init__(self, config: SimulatorConfig, book: JobBook, result_for: ResultFor) -> None:
        self.config = config
        self.book = book
        self.result_for = result_for
        self.key = signing_key(config)
        self.public_key = public_key_hex(self.key)
        self._pending: list[Job] = []
        self._tasks: set[asyncio.Task] = set()
        self._wake: asyncio.Event | None = None
        self._main: asyncio.Task | None = None
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle (called from the app's lifespan) ---------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._http = httpx.AsyncClient(trust_env=False, timeout=self.config.webhook_timeout)
        self._main = asyncio.create_task(self._watch(), name="sora-sim-webhooks")

    async def stop(self) -> None:
        tasks = [t for t in (self._main, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            await self._http.aclose()

    def add(self, job: Job) -> None:
        """Called by the submit handler (on the event loop) for a job with a webhook URL."""
        self._pending.append(job)
        if self._wake is not None:
            self._wake.set()

    def reset(self) -> None:
        """Forget pending deliveries (safe from any thread)."""
        def forget() -> None:
            self._pending.clear()
            for task in list(self._tasks):
                task.cancel()

        loop = self._loop
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if loop is None or current is loop:
            forget()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(forget)

    # -- internals ----------------------------------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            if not self._pending:
                assert self._wake is not None
                self._wake.clear()
                await self._wake.wait()
                continue
            self.book.advance(time.monotonic())
            still = []
            for job in self._pending:
                if job.state == "COMPLETED":
                    task = asyncio.create_task(self._deliver(job))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif job.state == "CANCELLED":
                    self.book.count_webhook("refused", job.id, state="not_sent_cancelled")
                else:
                    still.append(job)
            self._pending = still
            await asyncio.sleep(0.02)

    def _allowed(self, url: str) -> bool:
        hosts = self.config.webhook_allowed_hosts
        try:
            parts = urlsplit(url)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        return hosts is None or parts.hostname in hosts

    async def _deliver(self, job: Job) -> None:
        cfg, book = self.config, self.book
        url = job.webhook or ""
        rng = random.Random(f"sora-sim-webhook-faults:{cfg.seed}:{job.id}")
        drop = rng.random() < cfg.webhook_drop_probability
        duplicate = rng.random() < cfg.webhook_duplicate_probability
        if not self._allowed(url):
            log.warning("simulator: not sending the webhook of %s to %s (host not allowed)", job.id, url)
            book.count_webhook("refused", job.id, state="refused_host")
            return
        if drop:
            book.count_webhook("dropped", job.id, state="dropped")
            return
        if cfg.webhook_delay:
            await asyncio.sleep(cfg.webhook_delay)
        code, body, _headers = self.result_for(job, job.base_url or "")
        raw = json.dumps(webhook_body(job, code, body), separators=(",", ":")).encode()
        if await self._send(job, url, raw, rng, counter="delivered") and duplicate:
            await asyncio.sleep(max(0.01, cfg.webhook_retry_base))
            await self._send(job, url, raw, rng, counter="duplicates")

    async def _send(self, job: Job, url: str, raw: bytes, rng: random.Random, *, counter: str) -> bool:
        cfg, book = self.config, self.book
        assert self._http is not None
        for n in range(1, cfg.webhook_max_attempts + 1):
            book.count_webhook("attempts", job.id)
            status: int | str
            try:
                headers = sign_headers(self.key, job.id, cfg.webhook_user_id, raw)
                resp = await self._http.post(url, content=raw, headers=headers)
                status = resp.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            if isinstance(status, int) and 200 <= status < 300:
                book.count_webhook(counter, job.id, state="delivered", last_status=status)
                return True
            book.count_webhook("failed_attempts", job.id, last_status=status)
            if n < cfg.webhook_max_attempts:
                delay = min(cfg.webhook_retry_base * 2 ** (n - 1), cfg.webhook_retry_max)
                await asyncio.sleep(delay * rng.uniform(0.5, 1.5))
        book.count_webhook("gave_up", job.id, state="gave_up")
        return False
