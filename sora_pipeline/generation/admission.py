"""This process's broker for the fal account's places in flight (the rules live in `ledger/admission.py`).

`acquire()` waits for a place and returns its id; `release(id)` gives it back. The broker files one ticket per
waiting item, asks the ledger for grants (at once when something was released here, else every `poll_s`), and
renews its rows' leases every `lease_s / 3` so that only a dead process's places expire."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sora_pipeline.ledger import Ledger

log = logging.getLogger("sora_pipeline.generation")
DbCall = Callable[..., Awaitable[Any]]


class AccountAdmission:
    def __init__(self, ledger: Ledger, db: DbCall, *, account: str, cap: int, owner: str,
                 lease_s: float = 60.0, poll_s: float = 0.2) -> None:
        if cap < 1:
            raise ValueError("the account's in-flight cap must be ≥ 1")
        self.ledger, self._db, self.account, self.cap = ledger, db, account, cap
        self.holder = f"{owner}:{uuid.uuid4().hex[:12]}"
        self.lease_s, self.poll_s = lease_s, poll_s
        self._waiting: list[asyncio.Future] = []  # not yet ticketed
        self._tickets: dict[int, asyncio.Future] = {}  # ticket id → its waiter
        self._held: set[int] = set()
        self._wake = asyncio.Event()
        self._broker: asyncio.Task | None = None
        self._heartbeat: asyncio.Task | None = None
        self.granted = 0

    async def __aenter__(self) -> AccountAdmission:
        self._heartbeat = asyncio.create_task(self._renew())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in (self._broker, self._heartbeat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        rows = [*self._held, *self._tickets]
        self._held.clear()
        self._tickets.clear()
        with contextlib.suppress(Exception):  # a dead process's rows expire anyway
            await self._db(self.ledger.release_places, self.holder, rows)

    async def acquire(self) -> int:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._wake.set()
        if self._broker is None or self._broker.done():
            self._broker = asyncio.create_task(self._run())
        return await future

    async def release(self, place: int) -> None:
        if place in self._held:
            self._held.discard(place)
            await self._db(self.ledger.release_places, self.holder, [place])
            self._wake.set()  # a place is free: ask for grants now

    async def _run(self) -> None:
        while self._waiting or self._tickets:
            self._wake.clear()
            if self._waiting:
                new, self._waiting = self._waiting, []
                ids = await self._db(self.ledger.request_places, self.account, self.holder, len(new),
                                     lease_s=self.lease_s)
                self._tickets.update(zip(ids, new, strict=True))
            granted = await self._db(self.ledger.grant, self.account, self.holder, self.cap)
            unwanted = []
            for ticket in granted:
                future = self._tickets.pop(ticket, None)
                if future is None or future.done():  # its item gave up waiting
                    unwanted.append(ticket)
                    continue
                self._held.add(ticket)
                self.granted += 1
                future.set_result(ticket)
            if unwanted:
                await self._db(self.ledger.release_places, self.holder, unwanted)
            gone = [t for t, f in self._tickets.items() if f.done()]
            if gone:
                for t in gone:
                    self._tickets.pop(t)
                await self._db(self.ledger.release_places, self.holder, gone)
            if self._tickets and not self._waiting:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._wake.wait()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self._db(self.ledger.renew, self.holder, lease_s=self.lease_s)
            except Exception as exc:  # the next renewal tries again; the lease outlives two misses
                log.warning("could not renew the account's places: %s", exc)
