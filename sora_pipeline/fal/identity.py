"""Which backend answers a queue URL: fal itself (directly or through a proxy) or a simulator.

The simulator (embedded or `python -m sora_pipeline.simulator`) answers `GET /.well-known/sora-simulator` with
`{"simulator": true}`; fal (and a proxy in front of it) does not. The answer scopes the ledger's request keys,
so a simulator's video is never reused as a real one (nor a real one for the simulator). No key is sent."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

SIMULATOR_IDENTITY_PATH = "/.well-known/sora-simulator"
FAL_QUEUE_ORIGIN = "https://queue.fal.run"
MAX_IDENTITY_BYTES = 4096


class BackendProbeError(RuntimeError):
    """The queue URL did not answer at all, so what it is cannot be told."""


def queue_origin(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def identify_backend(base_url: str, *, timeout: float = 10.0,
                     transport: httpx.BaseTransport | None = None) -> str:
    """`"simulator"` or `"fal"`. fal's own queue is not asked; any other URL is asked once (unauthenticated)."""
    origin = queue_origin(base_url)
    if origin == FAL_QUEUE_ORIGIN:
        return "fal"
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, transport=transport) as http:
            with http.stream("GET", origin + SIMULATOR_IDENTITY_PATH) as response:
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_IDENTITY_BYTES:
                        return "fal"
                if response.status_code != 200:
                    return "fal"
    except httpx.HTTPError as exc:
        raise BackendProbeError(f"the queue at {origin} does not answer ({type(exc).__name__}); check "
                                "SORA_FAL_QUEUE_URL") from None
    try:
        import json

        answer = json.loads(body)
    except ValueError:
        return "fal"
    return "simulator" if isinstance(answer, dict) and answer.get("simulator") is True else "fal"
