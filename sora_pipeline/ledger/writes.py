"""Running the ledger's writes. A write is an op: a function of one connection, built by a `_op_<method>` builder
and run inside a transaction, alone (`_run`: a claim that lost a race decides again) or grouped with others in one
transaction (`run_batch`: group commit, one fsync for many writes)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from sora_pipeline.coordination.engine import write

from .model import LedgerConflict

Op = Callable[[Connection], Any]  # one write, run inside a transaction
BATCHABLE = frozenset({"claim", "mark_submitted", "mark_completed", "mark_failed", "mark_unknown", "mark_refused",
                       "mark_cancelled", "set_artifacts", "get"})


class LostRace(Exception):
    """A compare-and-swap update matched no row: roll back and decide again."""


class AfterCommit:
    """An error a write raises only once its transaction has committed (a stale attempt's recorded history)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class LedgerWrites:
    """`_run` and `run_batch` for `Ledger` (which provides `_engine` and the `_op_*` builders)."""

    _engine: Engine

    def _run(self, op: Op) -> Any:
        """One write in its own transaction; a claim that lost a race decides again."""
        claimed_key = getattr(op, "claimed_key", None)
        for _ in range(10 if claimed_key else 1):
            try:
                with write(self._engine) as conn:
                    result = op(conn)
            except (LostRace, IntegrityError):  # IntegrityError: the attempts PK caught a duplicate attempt
                if not claimed_key:
                    raise
                continue
            if isinstance(result, AfterCommit):
                raise result.error
            return result
        raise LedgerConflict(f"could not claim request {claimed_key}: it kept changing under us")

    def run_batch(self, calls: Sequence[tuple[str, tuple, dict[str, Any]]]) -> list[Any]:
        """Group commit: run several writes (`(method name, args, kwargs)` of `claim`, `mark_*`, `set_artifacts`,
        `get`) in one transaction, so they share one commit (one fsync). Each result is what the method returns,
        or the exception it raises, as a value. If anything fails inside, the transaction is rolled back and each
        write runs alone (a claim's lost race, a stale attempt or a deadlock must not spoil the others)."""
        results: list[Any] = [None] * len(calls)
        ops: list[tuple[int, Op]] = []
        for i, (name, args, kwargs) in enumerate(calls):
            if name not in BATCHABLE:
                raise ValueError(f"{name} cannot run in a batch")
            try:
                ops.append((i, getattr(self, f"_op_{name}")(*args, **kwargs)))
            except Exception as exc:
                results[i] = exc
        try:
            with write(self._engine) as conn:
                done = [(i, op(conn)) for i, op in ops]
        except Exception:
            for i, op in ops:
                try:
                    results[i] = self._run(op)
                except Exception as exc:
                    results[i] = exc
            return results
        for i, result in done:
            results[i] = result.error if isinstance(result, AfterCommit) else result
        return results
