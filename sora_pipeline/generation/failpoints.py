"""Named crash points for crash-resume tests: with `SORA_FAILPOINT=<name>` set, the process kills itself with
SIGKILL the first time it reaches that point (nothing is flushed, exactly like `kill -9`). Unset: a no-op.

The variable is read by the pipeline's settings (`sora_pipeline.defs.settings`), which arm the point here when the
code location loads (`arm`), in every process that loads it."""

from __future__ import annotations

import os
import signal

POINTS = ("before_submit", "after_submit", "mid_poll", "mid_download", "mid_table_write")

_armed: str | None = None


def arm(name: str | None) -> None:
    """Make `name` this process's crash point (None: none)."""
    global _armed
    _armed = name


def armed(name: str) -> bool:
    return _armed == name


def failpoint(name: str) -> None:
    if armed(name):
        os.kill(os.getpid(), signal.SIGKILL)
