"""Live progress of a day's generations: counts per phase, queue positions and an ETA, logged at a cadence."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

PHASES = ("planned", "submitting", "in_queue", "in_progress", "downloading", "completed", "failed", "unknown",
          "skipped")
TERMINAL = ("completed", "failed", "unknown", "skipped")


class Progress:
    """Tracks each item's phase; `maybe_log()` emits one summary line at most every `interval` seconds."""

    def __init__(self, total: int, *, emit: Callable[[str], None] | None = None, interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self._emit = emit or logging.getLogger("sora_pipeline.generation.progress").info
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._last = float("-inf")
        self._phase: dict[str, str] = {}
        self._queue_pos: dict[str, int] = {}
        self.submitted = 0
        self.reused = 0
        self.resumed = 0

    def set(self, item_id: str, phase: str, *, queue_position: int | None = None) -> None:
        self._phase[item_id] = phase
        if queue_position is not None and phase == "in_queue":
            self._queue_pos[item_id] = queue_position
        else:
            self._queue_pos.pop(item_id, None)
        self.maybe_log()

    def counts(self) -> Counter:
        counts = Counter(self._phase.values())
        counts["planned"] += self.total - len(self._phase)
        return counts

    def line(self) -> str:
        c = self.counts()
        done = sum(c[p] for p in TERMINAL)
        elapsed = self._clock() - self._started
        parts = [f"{done}/{self.total} done", f"submitted {self.submitted}", f"in queue {c['in_queue']}"]
        if self._queue_pos:
            parts[-1] += f" (positions {min(self._queue_pos.values())}–{max(self._queue_pos.values())})"
        parts += [f"in progress {c['in_progress']}", f"downloading {c['downloading']}",
                  f"completed {c['completed']}", f"failed {c['failed']}"]
        if c["unknown"]:
            parts.append(f"unknown {c['unknown']}")
        if c["skipped"]:
            parts.append(f"skipped {c['skipped']}")
        if self.reused or self.resumed:
            parts.append(f"reused {self.reused}, resumed {self.resumed}")
        if 0 < done < self.total and elapsed > 0:
            eta = (self.total - done) * elapsed / done
            parts.append(f"ETA {eta:.0f}s")
        parts.append(f"elapsed {elapsed:.1f}s")
        return "progress: " + ", ".join(parts)

    def maybe_log(self, force: bool = False) -> None:
        now = self._clock()
        if force or now - self._last >= self._interval:
            self._last = now
            self._emit(self.line())
