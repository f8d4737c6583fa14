"""Named crash points for crash-resume tests: with `SORA_FAILPOINT=<name>` set, the process kills itself with
SIGKILL the first time it reaches that point (nothing is flushed, exactly like `kill -9`). Unset: a no-op."""

from __future__ import annotations

import os
import signal

POINTS = ("before_submit", "after_submit", "mid_poll", "mid_download", "mid_table_write")


def armed(name: str) -> bool:
    return os.environ.get("SORA_FAILPOINT") == name


def failpoint(name: str) -> None:
    if armed(name):
        os.kill(os.getpid(), signal.SIGKILL)
