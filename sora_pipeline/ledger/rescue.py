"""The rescue journal: request ids fal answered while the ledger's database could not record them.

A submit that fal accepted is paid for. If `mark_submitted` then fails (the database went away), the request id
is appended here (one fsynced JSON line) so the next run records it before it claims anything and resumes the
request instead of paying for it again. A local file next to the SQLite ledger (else in the folder the ledger is
given: the settings' `DAGSTER_HOME`); the failing run also names the ids in its error message."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sora_pipeline.ledger")
_lock = threading.Lock()


class RescueJournal:
    def __init__(self, path: str) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with _lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                log.warning("rescue journal %s: skipping an unreadable line", self.path)
        return out

    def replay(self, record_one: Callable[[dict[str, Any]], None]) -> int:
        """Hand every saved record to `record_one` (which writes it into the ledger, or raises if the ledger is
        still unavailable); records written are removed from the journal. Returns how many were replayed."""
        with _lock:
            records = self.records()
            if not records:
                return 0
            done = 0
            try:
                for record in records:
                    record_one(record)
                    done += 1
            finally:
                rest = records[done:]
                if rest:
                    tmp = f"{self.path}.tmp"
                    with open(tmp, "w", encoding="utf-8") as fh:
                        fh.writelines(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rest)
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(tmp, self.path)
                else:
                    os.unlink(self.path)
            return done
