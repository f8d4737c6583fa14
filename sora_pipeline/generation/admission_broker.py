"""This process's broker for the fal account's places in flight (the rules live in `coordination/admission.py`).

`acquire()` waits for a place and returns its id; `release_nowait(id)` (or `await release(id)`) gives it back. The
broker batches its writes: each turn is one ledger transaction (`Admission.exchange`) that gives back every place
released since the last turn, files a ticket for every item that started waiting, and takes the grants. A turn
starts at once when something was released or is newly waiting here (while a turn's transaction runs, more
releases and waiters pile up for the next one), else every `poll_s` while tickets wait. A released place counts as
held account-wide until its turn commits, so the cap holds. Leases are renewed every `lease_s / 3`, so only a dead
process's places expire; leaving the context gives every row of this broker back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from sora_pipeline.generation.group_commit import ledger_unavailable
from sora_pipeline.coordination import Admission

log = logging.getLogger("sora_pipeline.generation")
DbCall = Callable[..., Awaitable[Any]]
CLOSE_WAIT_S = 10.0  # leaving waits this long at most for a turn in the ledger to finish


class AccountAdmission:
    def __init__(self, admission: Admission, db: DbCall, *, account: str, cap: int, owner: str,
                 lease_s: float = 60.0, poll_s: float = 0.2) -> None:
        if cap < 1:
            raise ValueError("the account's in-flight cap must be ≥ 1")
        self.admission, self._db, self.account, self.cap = admission, db, account, cap
        self.holder = f"{owner}:{uuid.uuid4().hex[:12]}"
        self.lease_s, self.poll_s = lease_s, poll_s
        self._waiting: list[asyncio.Future] = []  # not yet ticketed
        self._tickets: dict[int, asyncio.Future] = {}  # ticket id → its waiter
        self._held: set[int] = set()
        self._released: list[int] = []  # given back here, not yet in the ledger (still counted as held there)
        self._wake = asyncio.Event()
        self._broker: asyncio.Task | None = None
        self._heartbeat: asyncio.Task | None = None
        self._closed = False
        self.granted = 0
        self.turns = 0  # ledger transactions of the broker (one per turn)

    async def __aenter__(self) -> AccountAdmission:
        self._heartbeat = asyncio.create_task(self._renew())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        self._wake.set()
        cancelled = False
        if self._broker is not None and not self._broker.done():  # let a turn in the ledger finish (its rows
            try:  # are then known and deleted below), then stop the broker
                await asyncio.wait([self._broker], timeout=CLOSE_WAIT_S)
            except asyncio.CancelledError:
                cancelled = True  # give everything back first
        for task in (self._broker, self._heartbeat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for future in [*self._waiting, *self._tickets.values()]:
            if not future.done():
                future.set_exception(RuntimeError("the account's admission is closed"))
        self._waiting.clear()
        self._held.clear()
        self._tickets.clear()
        self._released.clear()
        with contextlib.suppress(Exception):  # a dead process's rows expire anyway
            await self._db(self.admission.release_places, self.holder, None)  # every row of this broker
        if cancelled:
            raise asyncio.CancelledError

    async def acquire(self) -> int:
        if self._closed:
            raise RuntimeError("the account's admission is closed")
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._kick()
        return await future

    def release_nowait(self, place: int) -> None:
        """Give a place back: the broker's next turn (started now) returns it to the ledger."""
        if place in self._held:
            self._held.discard(place)
            self._released.append(place)
            self._kick()

    async def release(self, place: int) -> None:
        self.release_nowait(place)

    def _kick(self) -> None:
        self._wake.set()
        if not self._closed and (self._broker is None or self._broker.done()):
            self._broker = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._closed and (self._waiting or self._tickets or self._released):
            self._wake.clear()
            await asyncio.sleep(0)  # let the releases and waiters of this moment join the turn
            new, self._waiting = self._waiting, []
            released, self._released = self._released, []
            # waiters that gave up before their grant: their tickets go back in this turn
            gone = [t for t, f in self._tickets.items() if f.done()]
            for t in gone:
                del self._tickets[t]
            try:
                ids, granted = await self._db(self.admission.exchange, self.account, self.holder, self.cap,
                                              release=[*released, *gone], request=len(new), lease_s=self.lease_s)
            except asyncio.CancelledError:
                raise  # `__aexit__` gives every row back
            except Exception as exc:  # the turn rolled back: the ledger failed, so the run stops (as on any write)
                self._released[:0] = [*released, *gone]
                self._fail([*new, *self._tickets.values()], exc)
                return
            self.turns += 1
            self._tickets.update(zip(ids, new, strict=True))
            for ticket in granted:
                future = self._tickets.pop(ticket, None)
                self._held.add(ticket)
                if future is None or future.done():  # its item gave up waiting: back in the next turn
                    self.release_nowait(ticket)
                    continue
                self.granted += 1
                future.set_result(ticket)
            if self._tickets and not self._waiting and not self._released:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._wake.wait()

    def _fail(self, waiters: list[asyncio.Future], exc: Exception) -> None:
        error = ledger_unavailable(self.admission.database, exc) if isinstance(exc, SQLAlchemyError) else exc
        for future in waiters:
            if not future.done():
                future.set_exception(error)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self._db(self.admission.renew, self.holder, lease_s=self.lease_s)
            except Exception as exc:  # the next renewal tries again; the lease outlives two misses
                log.warning("could not renew the account's places: %s", exc)
