"""Which backend answers a queue URL: fal itself (directly or through a proxy) or a simulator.

The simulator (embedded or `python -m sora_pipeline.simulator`) answers `GET /.well-known/sora-simulator` with
`{"simulator": true}`; fal (and a proxy in front of it) does not. The answer scopes the ledger's request keys,
so a simulator's video is never reused as a real one (nor a real one for the simulator). No key is sent."""

from __future__ import annotations

import httpx

from sora_pipeline.fal.limits import AnswerRefused, read_capped
from sora_pipeline.fal.urls import origin_url

SIMULATOR_IDENTITY_PATH = "/.well-known/sora-simulator"
FAL_QUEUE_ORIGIN = "https://queue.fal.run"
MAX_IDENTITY_BYTES = 4096


class BackendProbeError(RuntimeError):
    """The queue URL did not answer at all, so what it is cannot be told."""


def identify_backend(base_url: str, *, timeout: float = 10.0,
                     transport: httpx.BaseTransport | None = None) -> str:
    """`"simulator"` or `"fal"`. fal's own queue is not asked; any other URL is asked once (unauthenticated)."""
    origin = origin_url(base_url)
    if origin is None:
        raise BackendProbeError(f"the queue URL {base_url[:80]!r} is not an http(s) URL; check SORA_FAL_QUEUE_URL")
    if origin == FAL_QUEUE_ORIGIN:
        return "fal"
    try:
        with httpx.Client(timeout=timeout, transport=transport) as http:
            answer = read_capped(http, "GET", origin + SIMULATOR_IDENTITY_PATH, max_bytes=MAX_IDENTITY_BYTES)
    except AnswerRefused:
        return "fal"
    except httpx.HTTPError as exc:
        raise BackendProbeError(f"the queue at {origin} does not answer ({type(exc).__name__}); check "
                                "SORA_FAL_QUEUE_URL") from None
    if answer.status_code != 200:
        return "fal"
    try:
        doc = answer.json()
    except ValueError:
        return "fal"
    return "simulator" if isinstance(doc, dict) and doc.get("simulator") is True else "fal"
