"""Group commit for the ledger: writes asked for by many coroutines at about the same moment are committed in one
transaction on the ledger's thread. Each caller still gets its own result (or exception) and only once its write
is durable, so "record the intent before the submit, the request id right after it" holds exactly as with one
transaction per write; a day of hundreds of items just pays for far fewer commits (fsyncs) and thread hops."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from sora_pipeline.coordination import Database, LedgerUnavailable
from sora_pipeline.ledger import Ledger, RequestNotPlanned

MAX_BATCH = 256  # writes per transaction: bounds how long one commit keeps the ledger locked


def ledger_unavailable(ledger: Ledger | Database, exc: BaseException) -> LedgerUnavailable:
    detail = str(exc).splitlines()[0][:300] if str(exc) else ""
    return LedgerUnavailable(f"the request ledger {ledger!r} failed ({type(exc).__name__}: {detail})")


class GroupCommit:
    """`await writes("mark_submitted", key, attempt, request_id=...)` — any `Ledger.run_batch` operation."""

    def __init__(self, ledger: Ledger, executor: Executor) -> None:
        self._ledger, self._executor = ledger, executor
        self._pending: list[tuple[tuple[str, tuple, dict[str, Any]], asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None
        self.batches = 0
        self.writes = 0

    async def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._pending.append(((name, args, kwargs), future))
        if self._drainer is None:  # starts on the next loop turn: writes asked for meanwhile join this batch
            self._drainer = asyncio.create_task(self._drain())
        result = await future
        if isinstance(result, (SQLAlchemyError, RequestNotPlanned)):  # the database failed (or was replaced)
            raise ledger_unavailable(self._ledger, result) from result
        if isinstance(result, BaseException):
            raise result
        return result

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list = []
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    results = await loop.run_in_executor(self._executor, self._ledger.run_batch,
                                                         [call for call, _ in batch])
                except Exception as exc:  # the database itself failed: every caller of this batch learns it
                    results = [exc] * len(batch)
                self.batches += 1
                self.writes += len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._drainer = None
            for _, future in batch + self._pending:  # cancelled while draining: nobody will answer these
                if not future.done():
                    future.cancel()
            self._pending = []
