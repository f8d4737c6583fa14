"""The simulator's state and plumbing shared by the handlers of `app.py` and `hostile.py`: the job book, fault
injector, encoder pool and clip cache (`Simulator`), the shared status-stream clock (`_Ticker`), connection drops
and the Starlette subclass that marks every answer with `x-sora-simulator: 1`."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sora_pipeline.simulator.config import SimulatorConfig
from sora_pipeline.simulator.faults import FaultInjector
from sora_pipeline.simulator.jobs import ClipInfo, JobBook
from sora_pipeline.simulator.video import cached_clip, dimensions, image_size, load_image_bytes

if TYPE_CHECKING:
    from sora_pipeline.simulator.webhook_delivery import WebhookDeliverer

_RAW_SEND = "sora_sim.raw_send"
#: header on every answer of the simulator (and `GET /.well-known/sora-simulator` answers without auth)
SIMULATOR_HEADER = (b"x-sora-simulator", b"1")


def _clip_failed(fut: Future | None) -> bool:
    return fut is not None and fut.done() and (fut.cancelled() or fut.exception() is not None)


class Simulator:
    """State shared by the handlers: the job book, the fault injector, the encoder pool and the clip cache."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.book = JobBook(config)
        self.faults = FaultInjector(config)
        self._own_cache = config.video_cache_dir is None
        self.cache_dir = config.video_cache_dir or tempfile.mkdtemp(prefix="sora-sim-videos-")
        os.makedirs(self.cache_dir, exist_ok=True)
        workers = config.encode_workers or max(2, min(4, os.cpu_count() or 2))
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sora-sim-encode")
        self._clips: dict[tuple[Any, ...], Future] = {}
        self.deliverer: WebhookDeliverer | None = None  # set by create_app

    def stats(self) -> dict[str, Any]:
        return self.book.stats()

    def reset(self) -> None:
        with self.book.lock:
            if self.deliverer is not None:
                self.deliverer.reset()
            self.book.reset()
            self.faults.reset()
            self._clips.clear()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self._own_cache:
            shutil.rmtree(self.cache_dir, ignore_errors=True)

    def clip_for(self, shape: tuple[str, str, str, float]) -> Future:
        """The (shared) future of the clip of a shape (image_url, resolution, aspect_ratio, seconds: see
        `endpoint_inputs.video_shape`); identical shapes share one encode."""
        key = shape
        with self.book.lock:
            fut = self._clips.get(key)
            if fut is None or _clip_failed(fut):
                fut = self.executor.submit(self._render, *key)
                self._clips[key] = fut
            return fut

    def _render(self, image_url: str, resolution: str, aspect_ratio: str, duration: float) -> ClipInfo:
        image = load_image_bytes(image_url)
        size = image_size(image) or (None, None)
        width, height = dimensions(resolution, aspect_ratio, *size)
        fps, seed = self.config.fps, self.config.seed
        path = cached_clip(self.cache_dir, image, width, height, duration, fps, seed)
        return ClipInfo(name=path.name, path=str(path), width=width, height=height, fps=fps,
                        num_frames=int(round(duration * fps)), duration=float(duration),
                        file_size=path.stat().st_size)


def _detail(status: int, detail: Any, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _drop(request: Request) -> Response:
    """Close the connection without any response (uvicorn: abort the transport, mark the cycle disconnected)."""
    send = request.scope.get(_RAW_SEND)
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("simulated connection drop")
    cycle.disconnected = True  # uvicorn then discards whatever the app sends
    transport.abort()
    await asyncio.sleep(0)
    return Response(status_code=500)


class SimulatorApp(Starlette):
    """Starlette that remembers the server's raw `send` (needed to drop connections) and adds
    `x-sora-simulator: 1` to every answer, so a client (or a person with curl) can tell it is not fal."""

    sim: Simulator

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[override]
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope[_RAW_SEND] = send
        if self.sim.config.impersonate_fal:
            await super().__call__(scope, receive, send)
            return

        async def marked(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), SIMULATOR_HEADER]}
            await send(message)

        await super().__call__(scope, receive, marked)


class _Ticker:
    """A shared clock for status streams: one task advances the job book every `period` seconds while anyone
    waits, and wakes all waiters at once (instead of every stream polling the book on its own)."""

    def __init__(self, book: JobBook, period: float = 0.02) -> None:
        self.book, self.period = book, period
        self.waiters = 0
        self.event: asyncio.Event | None = None
        self.task: asyncio.Task | None = None

    async def wait(self) -> None:
        if self.task is None or self.task.done():
            self.event = asyncio.Event()
            self.task = asyncio.get_running_loop().create_task(self._run())
        event = self.event
        self.waiters += 1
        try:
            await event.wait()
        finally:
            self.waiters -= 1

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self.book.advance(time.monotonic())
            event, self.event = self.event, asyncio.Event()
            event.set()
            if self.waiters == 0:
                return


def auth_error(config: Any, request: Request, what: str = "application") -> Response | None:
    """fal's answer to a request without a usable key (401) or with one the simulator does not accept (403), or
    None when the request may go on. Every authenticated route of the simulator asks this one function."""
    if not config.auth_required:
        return None
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme != "Key" or not key.strip():
        return _detail(401, "Missing or invalid Authorization header; expected 'Authorization: Key <FAL_KEY>'")
    if config.accepted_keys is not None and key.strip() not in config.accepted_keys:
        return _detail(403, f"The provided key is not authorized to access this {what}")
    return None
