"""Pacing inside one run: a place at fal (`Slot`, given back the moment fal is done with the request) and
"submits first" (`SubmitsFirst`: status streams and downloads hold back briefly while submits wait, because submits
gate what fal can start and the others can start a moment later at no cost)."""

from __future__ import annotations

import asyncio
import contextlib


class SubmitsFirst:
    """Counts the items waiting to submit; `wait()` lets them go first (bounded by `max_wait` seconds, so a
    submit stuck in retries holds nobody up long)."""

    def __init__(self, max_wait: float) -> None:
        self.max_wait = max_wait
        self._waiting = 0
        self._none_waiting = asyncio.Event()
        self._none_waiting.set()

    async def wait(self) -> None:
        if not self._none_waiting.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.max_wait):
                    await self._none_waiting.wait()

    @contextlib.asynccontextmanager
    async def waiting(self):
        """Mark an item as waiting to submit: downloads hold back meanwhile (a wave's submits go first)."""
        self._waiting += 1
        self._none_waiting.clear()
        try:
            yield
        finally:
            self._waiting -= 1
            if self._waiting == 0:
                self._none_waiting.set()


class Slot:
    """One of the `max_concurrency` places at fal; released as soon as the request is done there."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore, self._held = semaphore, False

    async def __aenter__(self) -> Slot:
        await self._semaphore.acquire()
        self._held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._semaphore.release()
