"""Interruption: SIGTERM behaves like Ctrl-C while a day is generating, so in-flight requests get cancelled."""

from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def sigterm_raises_interrupt():
    """Make SIGTERM interrupt the run like Ctrl-C when nobody else (e.g. Dagster) handles it already."""
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main or signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
