"""`Admission`: the fal account's places in flight, kept in the shared database so that every run, day, process and
machine sharing it shares one cap.

A place is a row of `fal_admission`. A broker (one per process, `holder`) files a *ticket* per item that wants a
place (`state='waiting'`), and `grant` turns the oldest tickets into places (`'holding'`) while fewer than `cap`
are held — oldest first across all holders, so no day and no process is starved. Every row carries a lease the
broker renews (`renew`); the rows of a process that died are ignored once their lease ends and deleted by the next
grant, so a crashed worker gives its places back by itself. Grants are serialized (SQLite: BEGIN IMMEDIATE;
PostgreSQL: a transaction-level advisory lock per account), so the cap holds exactly. `exchange` does a broker's
whole turn (give places back, file tickets, take grants) in one write transaction."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from .database import Database
from .engine import ADMISSION_LOCKS, read, serialize_on_postgres, write
from .schema import admission, utcnow

_T = admission.c


def _file(conn: Connection, account: str, holder: str, n: int, until: datetime, now: datetime) -> list[int]:
    """Insert `n` tickets in one statement; their ids in the order filed."""
    if n <= 0:
        return []
    rows = [dict(account=account, holder=holder, state="waiting", lease_until=until, created_at=now)
            for _ in range(n)]
    return list(conn.execute(insert(admission).returning(_T.id, sort_by_parameter_order=True), rows).scalars())


def _give_back(conn: Connection, holder: str, ids: Iterable[int]) -> None:
    ids = list(ids)
    if ids:
        conn.execute(delete(admission).where(and_(_T.holder == holder, _T.id.in_(ids))))


def _grant(conn: Connection, account: str, holder: str, cap: int, now: datetime) -> list[int]:
    """Inside a write transaction serialized per account: this holder's tickets among the oldest live ones
    become places."""
    conn.execute(delete(admission).where(_T.account == account, _T.lease_until < now))
    held = conn.execute(select(func.count()).where(_T.account == account, _T.state == "holding")).scalar()
    free = cap - int(held or 0)
    if free <= 0:
        return []
    oldest = conn.execute(select(_T.id, _T.holder).where(_T.account == account, _T.state == "waiting")
                          .order_by(_T.id).limit(free)).all()
    mine = [row.id for row in oldest if row.holder == holder]
    if mine:
        conn.execute(update(admission).where(_T.id.in_(mine)).values(state="holding"))
    return mine


class Admission:
    """The `fal_admission` rows of one database: places and tickets of every account's brokers."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._engine = database.engine

    def request_places(self, account: str, holder: str, n: int, *, lease_s: float,
                       now: datetime | None = None) -> list[int]:
        """File `n` tickets (in this order); returns their ids."""
        now = now or utcnow()
        with write(self._engine) as conn:
            return _file(conn, account, holder, n, now + timedelta(seconds=lease_s), now)

    def grant(self, account: str, holder: str, cap: int, *, now: datetime | None = None) -> list[int]:
        """Turn this holder's tickets that are among the oldest live ones into places, while fewer than `cap` are
        held account-wide. Returns the ids granted now (a subset of the holder's waiting tickets)."""
        with write(self._engine) as conn:
            serialize_on_postgres(conn, ADMISSION_LOCKS, account)
            return _grant(conn, account, holder, cap, now or utcnow())

    def exchange(self, account: str, holder: str, cap: int, *, release: Iterable[int] = (), request: int = 0,
                 lease_s: float, now: datetime | None = None) -> tuple[list[int], list[int]]:
        """One write transaction: give back the rows `release`, file `request` new tickets, then `grant`.
        Returns (the new tickets' ids in order, the ids granted now — new tickets included)."""
        now = now or utcnow()
        with write(self._engine) as conn:
            serialize_on_postgres(conn, ADMISSION_LOCKS, account)
            _give_back(conn, holder, release)
            tickets = _file(conn, account, holder, request, now + timedelta(seconds=lease_s), now)
            return tickets, _grant(conn, account, holder, cap, now)

    def release_places(self, holder: str, ids: Iterable[int] | None) -> None:
        """Give places (or tickets) back; `ids=None`: every row of this holder."""
        if ids is None:
            with write(self._engine) as conn:
                conn.execute(delete(admission).where(_T.holder == holder))
            return
        ids = list(ids)
        if ids:
            with write(self._engine) as conn:
                _give_back(conn, holder, ids)

    def renew(self, holder: str, *, lease_s: float, now: datetime | None = None) -> int:
        """Extend every row of this holder; returns how many it has (a holder whose rows expired has 0)."""
        until = (now or utcnow()) + timedelta(seconds=lease_s)
        with write(self._engine) as conn:
            return conn.execute(update(admission).where(_T.holder == holder).values(lease_until=until)).rowcount

    def admission_counts(self, account: str, *, now: datetime | None = None) -> dict[str, Any]:
        """Live places held and tickets waiting, account-wide (expired rows left out)."""
        now = now or utcnow()
        with read(self._engine) as conn:
            rows = conn.execute(select(_T.state, func.count()).where(_T.account == account, _T.lease_until >= now)
                                .group_by(_T.state)).all()
        counts = {"holding": 0, "waiting": 0}
        counts.update({state: int(n) for state, n in rows})
        return counts
