"""Account-wide admission: the fal account's places in flight, owned by the ledger's database so that every run,
day, process and machine sharing the ledger shares one cap.

A place is a row of `fal_admission`. A broker (one per process, `holder`) files a *ticket* per item that wants a
place (`state='waiting'`), and `grant` turns the oldest tickets into places (`'holding'`) while fewer than `cap`
are held — oldest first across all holders, so no day and no process is starved. Every row carries a lease the
broker renews (`renew`); the rows of a process that died are ignored once their lease ends and deleted by the next
grant, so a crashed worker gives its places back by itself. Grants are serialized (SQLite: BEGIN IMMEDIATE;
PostgreSQL: a transaction-level advisory lock per account), so the cap holds exactly."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Engine

from .schema import ADMISSION_LOCKS, admission, read, serialize_on_postgres, utcnow, write

_T = admission.c


class LedgerAdmission:
    """The admission side of `Ledger` (which provides `_engine`)."""

    _engine: Engine

    def request_places(self, account: str, holder: str, n: int, *, lease_s: float,
                       now: datetime | None = None) -> list[int]:
        """File `n` tickets (in this order); returns their ids."""
        now = now or utcnow()
        until = now + timedelta(seconds=lease_s)
        rows = [dict(account=account, holder=holder, state="waiting", lease_until=until, created_at=now)
                for _ in range(n)]
        with write(self._engine) as conn:
            if self._engine.dialect.name == "postgresql":
                return list(conn.execute(insert(admission).returning(_T.id), rows).scalars())
            return [conn.execute(insert(admission).values(**r)).inserted_primary_key[0] for r in rows]

    def grant(self, account: str, holder: str, cap: int, *, now: datetime | None = None) -> list[int]:
        """Turn this holder's tickets that are among the oldest live ones into places, while fewer than `cap` are
        held account-wide. Returns the ids granted now (a subset of the holder's waiting tickets)."""
        now = now or utcnow()
        with write(self._engine) as conn:
            serialize_on_postgres(conn, ADMISSION_LOCKS, account)
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

    def release_places(self, holder: str, ids: list[int]) -> None:
        """Give places (or tickets) back."""
        if ids:
            with write(self._engine) as conn:
                conn.execute(delete(admission).where(and_(_T.holder == holder, _T.id.in_(list(ids)))))

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
