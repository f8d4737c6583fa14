"""Shared pieces of the webhook tests: the item spec, a fal client, the receiver CLI's environment, a raw POST."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import select
import socket
import time

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sora_pipeline.fal.client import AsyncFalQueueClient
from sora_pipeline.fal.policies import PollPolicy, RetryPolicy
from sora_pipeline.webhooks.signatures import parse_public_key
from sora_pipeline.webhooks.receiver import WebhookConfig
from sora_pipeline.ledger import RequestSpec
from sora_pipeline.simulator.webhook_delivery import jwks_document
from tests.conftest import png_bytes

EP = "fal-ai/sora-2/image-to-video/pro"
DAY = "2026-11-20"
IMAGE = "data:image/png;base64," + base64.b64encode(png_bytes(64, 36)).decode()


def spec(item_id: str, prompt: str | None = None) -> RequestSpec:
    return RequestSpec.create(EP, item_id=item_id, day=DAY, prompt=prompt or f"prompt {item_id}",
                              resolution="720p", aspect_ratio="16:9", duration=4,
                              image_sha256=hashlib.sha256(IMAGE.encode()).hexdigest(), used_openai_key=False,
                              estimated_cost=1.2)


def client(base_url: str, webhook_url: str | None) -> AsyncFalQueueClient:
    return AsyncFalQueueClient(key="k", base_url=base_url, endpoint_id=EP, webhook_url=webhook_url,
                               retry=RetryPolicy(max_attempts=3, total_timeout=10),
                               poll=PollPolicy(interval=0.05, max_interval=0.2, backoff_after=5))


def until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def sim_key_config(sim) -> WebhookConfig:
    return WebhookConfig(public_keys=[parse_public_key(sim.webhook_public_key)])


def get_ok(url: str) -> bool:
    try:
        return httpx.get(url, trust_env=False, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def receiver_env(tmp_path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SORA_")}
    env.update(SORA_LEDGER_URL=f"sqlite:///{tmp_path / 'ledger.sqlite'}", **extra)
    return env


def jwks_file(tmp_path, key: Ed25519PrivateKey):
    """A JWKS file holding `key`'s public half (what `SORA_WEBHOOK_JWKS_FILE` names)."""
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_document(key)))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chunked_post(port: int, *, limit: int, chunk: int = 1 << 20, declare: int | None = None, on_chunk=None):
    """POST up to `limit` bytes in `chunk`-sized pieces (chunked, or with `Content-Length: declare`), stopping as
    soon as an answer is readable; returns (status line, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    framing = f"Content-Length: {declare}" if declare is not None else "Transfer-Encoding: chunked"
    sock.sendall(f"POST /fal/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"{framing}\r\n\r\n".encode())
    piece = b"x" * chunk
    frame = piece if declare is not None else b"%x\r\n" % chunk + piece + b"\r\n"
    sent = 0
    try:
        while sent < limit:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += chunk
            if on_chunk is not None:
                on_chunk()
        if declare is None and sent >= limit:
            sock.sendall(b"0\r\n\r\n")
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    finally:
        sock.close()
    return answer.split(b"\r\n", 1)[0].decode(), sent
