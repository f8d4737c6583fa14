"""Pacing inside one run: a place at fal (`Slot`, given back the moment fal is done with the request) and
"submits first" (`SubmitsFirst`: status streams and downloads hold back briefly while submits wait, because submits
gate what fal can start and the others can start a moment later at no cost)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


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
    """One of the run's `max_concurrency` places and, with account admission, one of the fal account's places
    (`AccountAdmission`); both are given back as soon as the request is done at fal (the account's place in the
    broker's next ledger write, batched with other releases and grants). `needed=False` (an item whose video is
    already in the ledger) takes neither."""

    def __init__(self, semaphore: asyncio.Semaphore, admission: Any = None, *, needed: bool = True) -> None:
        self._semaphore, self._admission, self._needed = semaphore, admission, needed
        self._held, self._place = False, None

    async def __aenter__(self) -> Slot:
        if not self._needed:
            return self
        await self._semaphore.acquire()
        self._held = True
        if self._admission is not None:
            try:
                self._place = await self._admission.acquire()
            except BaseException:
                self.release()
                raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self._place is not None:
            place, self._place = self._place, None
            self._admission.release_nowait(place)  # the broker's next turn gives it back to the ledger
        if self._held:
            self._held = False
            self._semaphore.release()


async def every(seconds: float, fn) -> None:
    """Call `fn` (a function or a coroutine function) every `seconds`, until cancelled."""
    while True:
        await asyncio.sleep(seconds)
        result = fn()
        if asyncio.iscoroutine(result):
            await result
