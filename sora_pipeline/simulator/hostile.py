"""Hostile answers of the simulator: what a broken or malicious queue could send a client (see `faults.py`).

`echo_key` (401 echoing the Authorization header), `redirect` (302 to another origin), `foreign_urls` (URLs on
another origin in the answers), `bad_request_id` (a request id that is a path), `cancel_already_completed` (a
cancel refused although the job runs on), and bodies far larger than any client should hold: `huge_json`,
`huge_status_json` (JSON padded to `hostile_bytes`), `huge_stream_event` (an SSE line that never ends) and
`endless_video` (a video that never ends). The big bodies come from generators (a constant 64 KiB chunk sent again
and again), so the server never allocates them; they stop at `hostile_bytes` (a safety stop for tests), and the
bytes actually handed to the network are counted in `stats()["hostile_bytes_sent"]`. Also the simulator's
self-identification: `GET /.well-known/sora-simulator`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from sora_pipeline.simulator.config import SimulatorConfig
from sora_pipeline.simulator.jobs import JobBook

_CHUNK = b"A" * (64 * 1024)
_PAD = "__sora_simulator_padding__"
SIMULATOR_INFO = {"simulator": True, "version": 1}


async def well_known(request: Request) -> Response:
    """`GET /.well-known/sora-simulator` (no auth): tells a client it is talking to the simulator, not fal
    (404, as fal answers, when the simulator impersonates fal)."""
    if request.app.sim.config.impersonate_fal:
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    return JSONResponse(SIMULATOR_INFO)


def foreign_base(config: SimulatorConfig, request: Request) -> str:
    """The other origin `foreign_urls` and `redirect` point at (127.0.0.2 on this port unless configured)."""
    if config.foreign_base_url:
        return config.foreign_base_url.rstrip("/")
    return f"http://127.0.0.2:{request.url.port or 80}"


def bad_request_id(request_id: str) -> str:
    """The request id a `bad_request_id` submit answers (a relative path a careless client would follow)."""
    return f"../{request_id}"


def call_response(kind: str, request: Request, config: SimulatorConfig) -> Response | None:
    """The per-call hostile kinds (`echo_key`, `redirect`); None for any other kind."""
    if kind == "echo_key":
        # what a careless server does: repeat the credential it was sent in the error message
        echoed = request.headers.get("authorization", "")
        return JSONResponse({"detail": f"invalid key: {echoed}"}, status_code=401)
    if kind == "redirect":
        query = f"?{request.url.query}" if request.url.query else ""
        location = f"{foreign_base(config, request)}{request.url.path}{query}"
        return Response(status_code=302, headers={"Location": location})
    return None


def cancel_already_completed() -> Response:
    """A cancel refused as if the job had finished; the job is left running (it completes normally)."""
    return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)


async def _count(book: JobBook, parts: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for part in parts:
        yield part
        book.count_hostile_bytes(len(part))  # after the send returned: handed to the network
        # a send to a client that hung up returns at once: yield to the loop so the disconnect ends the stream
        await asyncio.sleep(0)


async def _padding(total: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(len(_CHUNK), total - sent)
        yield _CHUNK if n == len(_CHUNK) else _CHUNK[:n]
        sent += n


def padded_json(book: JobBook, config: SimulatorConfig, body: dict[str, Any], path: tuple[str | int, ...],
                status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`body` as JSON with the string at `path` padded so the whole answer is `hostile_bytes` long (valid JSON:
    a client that reads it all accepts it)."""
    node: Any = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = _PAD
    prefix, suffix = (part.encode() for part in json.dumps(body).split(_PAD, 1))
    total = max(config.hostile_bytes, len(prefix) + len(suffix))

    async def parts() -> AsyncIterator[bytes]:
        yield prefix
        async for chunk in _padding(total - len(prefix) - len(suffix)):
            yield chunk
        yield suffix

    headers = dict(headers or {})
    if config.hostile_declare_length:
        headers["Content-Length"] = str(total)
    return StreamingResponse(_count(book, parts()), status_code=status_code, headers=headers,
                             media_type="application/json")


def endless_video(book: JobBook, config: SimulatorConfig) -> Response:
    """A 200 video/mp4 whose body does not end (before `hostile_bytes`)."""
    headers = {"Content-Length": str(config.hostile_bytes)} if config.hostile_declare_length else None
    return StreamingResponse(_count(book, _padding(config.hostile_bytes)), media_type="video/mp4",
                             headers=headers)


def endless_event(book: JobBook, config: SimulatorConfig, first_event: bytes) -> Response:
    """A status stream: one proper event, then `data: ` and bytes with no newline (until `hostile_bytes`)."""

    async def parts() -> AsyncIterator[bytes]:
        yield first_event
        yield b"data: "
        async for chunk in _padding(config.hostile_bytes):
            yield chunk

    return StreamingResponse(_count(book, parts()), media_type="text/event-stream")
