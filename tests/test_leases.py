"""Named leases in the ledger's database (what a day's table writers take turns with): the rules, and a held lease that
survives a short outage of the ledger's database. On SQLite and PostgreSQL (`ledger_url`)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.exc import OperationalError

from sora_pipeline.coordination import Database, Leases, LeaseTimeout


def test_named_lease_rules(ledger_url):
    with Database(ledger_url) as database:
        leases = Leases(database)
        t0 = datetime.now(timezone.utc)
        assert leases.acquire_lease("day", "a", lease_s=10, now=t0)
        assert not leases.acquire_lease("day", "b", lease_s=10, now=t0)  # held
        assert leases.acquire_lease("day", "a", lease_s=10, now=t0)  # the holder again: renewed
        assert leases.renew_lease("day", "a", lease_s=10, now=t0) and not leases.renew_lease("day", "b", lease_s=10)
        later = t0 + timedelta(seconds=11)
        assert leases.acquire_lease("day", "b", lease_s=10, now=later)  # a's lease ran out: taken over
        assert leases.lease_info("day").holder == "b"
        assert not leases.release_lease("day", "a") and leases.release_lease("day", "b")
        assert leases.lease_info("day") is None
        with leases.hold_lease("day", lease_s=30) as held:
            with pytest.raises(LeaseTimeout, match=held.holder):
                with leases.hold_lease("day", lease_s=30, wait_s=0.2):
                    pass
        assert leases.lease_info("day") is None


def test_a_held_lease_survives_a_short_database_outage(ledger_url):
    """Renewals that fail while the database is away are retried soon, not a third of the lease later: a lease
    whose first three renewals failed is still held once the database answers again (it was lost before)."""
    with Database(ledger_url) as database:
        leases = Leases(database)
        real_renew, calls = leases.renew_lease, []

        def renew_after_an_outage(name, holder, **kw):  # the real renewal, after three failed ones
            calls.append(time.monotonic())
            if len(calls) <= 3:
                raise OperationalError("UPDATE named_leases", {}, ConnectionError("database away"))
            return real_renew(name, holder, **kw)

        leases.renew_lease = renew_after_an_outage
        with leases.hold_lease("day", lease_s=6) as held:
            deadline = time.monotonic() + 120
            while len(calls) < 4 and held.lost is None and time.monotonic() < deadline:
                time.sleep(0.05)
            held.ensure_held()
            assert len(calls) >= 4 and leases.lease_info("day").holder == held.holder
        assert leases.lease_info("day") is None
