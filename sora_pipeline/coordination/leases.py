"""`Leases`: one holder at a time per name (e.g. `warehouse:<table uri>:<day>`, the writer of one day), held in the
shared database so that every process and machine sharing it takes turns.

A lease is a row of `named_leases` (name, holder, lease_until, acquired_at). `acquire_lease` inserts it, or takes
it over when its lease has run out (the holder died), in one serialized write transaction (SQLite: BEGIN
IMMEDIATE; PostgreSQL: a transaction-level advisory lock per name). The holder renews it while it works
(`hold_lease` does so from a thread) and deletes it when done; a crashed holder's lease runs out (or is taken over
at once by a waiter on the same host that sees the holder's process is gone)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update

from .database import Database
from .engine import LEASE_LOCKS, read, serialize_on_postgres, write
from .schema import leases, utcnow

_T = leases.c


class LeaseLost(RuntimeError):
    """The lease ran out (or was taken over) while its holder still worked."""


class LeaseTimeout(TimeoutError):
    """Waited too long for a lease another holder keeps renewing."""


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    holder: str
    lease_until: datetime
    acquired_at: datetime


def new_holder() -> str:
    """A holder id unique to this call: host, process and a random suffix."""
    return f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead(holder: str) -> bool:
    """Whether `holder` (a `new_holder()` id) was a process of this host that no longer exists: its lease can be
    taken over at once instead of waiting for it to run out."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != os.uname().nodename or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class HeldLease:
    """A lease held by `hold_lease`: renewed from a thread until released. `ensure_held()` raises `LeaseLost`
    once a renewal found the lease gone (or it ran out unrenewed)."""

    def __init__(self, leases: Leases, name: str, holder: str, lease_s: float, since: float):
        self.leases, self.name, self.holder, self.lease_s = leases, name, holder, lease_s
        self.deadline = since + lease_s  # monotonic; `since` was taken before the acquiring transaction
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease {name}", daemon=True)

    def _renew_loop(self) -> None:
        """Renew every `lease_s / 3`; after a failed renewal (the database away) retry every `lease_s / 20`, so a
        short outage costs a moment of the lease, not a third of it each time."""
        every, retry = self.lease_s / 3, max(self.lease_s / 20, 0.05)
        wait = every
        while not self._stop.wait(wait):
            started = time.monotonic()
            try:
                renewed = self.leases.renew_lease(self.name, self.holder, lease_s=self.lease_s)
            except Exception as exc:  # the database is away: keep trying until the lease runs out
                if time.monotonic() > self.deadline:
                    self.lost = f"could not be renewed: {type(exc).__name__}: {exc}"
                    return
                wait = retry
                continue
            if not renewed:
                self.lost = "taken over by another holder or released"
                return
            self.deadline, wait = started + self.lease_s, every

    def ensure_held(self) -> None:
        if self.lost is None and time.monotonic() > self.deadline:
            self.lost = "ran out before it could be renewed"
        if self.lost is not None:
            raise LeaseLost(f"lease {self.name!r} of {self.holder} was lost ({self.lost})")


class Leases:
    """The `named_leases` of one database."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._engine = database.engine

    def acquire_lease(self, name: str, holder: str, *, lease_s: float, now: datetime | None = None,
                      take_over: str | None = None) -> bool:
        """Take lease `name` for `holder` if it is free, expired, already this holder's (then renewed), or held by
        `take_over` (a holder known to be dead)."""
        now = now or utcnow()
        until = now + timedelta(seconds=lease_s)
        with write(self._engine) as conn:
            serialize_on_postgres(conn, LEASE_LOCKS, name)
            row = conn.execute(select(_T.holder, _T.lease_until).where(_T.name == name)).first()
            if row is None:
                conn.execute(insert(leases).values(name=name, holder=holder, lease_until=until, acquired_at=now))
                return True
            if row.holder not in (holder, take_over) and row.lease_until >= now:
                return False
            values: dict[str, Any] = {"holder": holder, "lease_until": until}
            if row.holder != holder:
                values["acquired_at"] = now
            conn.execute(update(leases).where(_T.name == name).values(**values))
            return True

    def renew_lease(self, name: str, holder: str, *, lease_s: float, now: datetime | None = None) -> bool:
        """Extend this holder's lease; False if it is no longer theirs."""
        until = (now or utcnow()) + timedelta(seconds=lease_s)
        with write(self._engine) as conn:
            serialize_on_postgres(conn, LEASE_LOCKS, name)
            done = conn.execute(update(leases).where(_T.name == name, _T.holder == holder)
                                .values(lease_until=until))
            return done.rowcount == 1

    def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease back (only this holder's); False if it was not theirs any more."""
        with write(self._engine) as conn:
            serialize_on_postgres(conn, LEASE_LOCKS, name)
            return conn.execute(delete(leases).where(_T.name == name, _T.holder == holder)).rowcount == 1

    def lease_info(self, name: str) -> LeaseInfo | None:
        """Who holds `name` (expired or not), or None."""
        with read(self._engine) as conn:
            row = conn.execute(select(_T.name, _T.holder, _T.lease_until, _T.acquired_at)
                               .where(_T.name == name)).first()
        return None if row is None else LeaseInfo(row.name, row.holder, row.lease_until, row.acquired_at)

    @contextmanager
    def hold_lease(self, name: str, *, lease_s: float = 60.0, wait_s: float | None = 900.0, poll_s: float = 0.2,
                   holder: str | None = None) -> Iterator[HeldLease]:
        """Wait for lease `name` (at most `wait_s`; None = forever), hold it renewed every `lease_s / 3` seconds
        while the block runs, release it after. Raises `LeaseTimeout` naming the holder it waited for."""
        holder = holder or new_holder()
        started = time.monotonic()
        delay = min(poll_s, 0.05)
        while True:
            since = time.monotonic()
            if self.acquire_lease(name, holder, lease_s=lease_s):
                break
            info = self.lease_info(name)
            if info is not None and holder_is_dead(info.holder):  # a crashed process of this host
                if self.acquire_lease(name, holder, lease_s=lease_s, take_over=info.holder):
                    break
            if wait_s is not None and time.monotonic() - started > wait_s:
                raise LeaseTimeout(f"waited {wait_s:.0f}s for lease {name!r}, still held by "
                                   f"{info.holder if info else '?'} (until {info.lease_until if info else '?'})")
            time.sleep(delay)
            delay = min(delay * 2, poll_s)
        held = HeldLease(self, name, holder, lease_s, since)
        held._thread.start()
        try:
            yield held
        finally:
            held._stop.set()
            held._thread.join()
            try:
                self.release_lease(name, holder)
            except Exception:  # the database is away: the lease expires by itself
                pass
