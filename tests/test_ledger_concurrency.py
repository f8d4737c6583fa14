"""Only one claimer wins each key: eight threads on one `Ledger`, four processes with their own, on SQLite and
PostgreSQL."""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
from collections import Counter

from sora_pipeline.ledger import Decision, Ledger
from tests.test_ledger import DAY, POLICY, db_url, pg_url, spec  # noqa: F401  (fixtures)

N_KEYS = 50


def _claim_all(url: str, keys: list[str], owner: str, barrier=None) -> list[str]:
    rng = random.Random(owner)
    order = keys[:]
    rng.shuffle(order)
    won = []
    with Ledger.open(url) as lg:
        if barrier is not None:
            barrier.wait(timeout=120)
        for k in order:
            decision, _ = lg.claim(k, owner=owner, policy=POLICY)
            if decision is Decision.SUBMIT:
                won.append(k)
            else:
                assert decision in (Decision.BUSY, Decision.RESUME), decision
    return won


def _process_worker(url, keys, owner, barrier, queue) -> None:
    try:
        queue.put((owner, _claim_all(url, keys, owner, barrier)))
    except BaseException as exc:  # report instead of hanging the parent
        queue.put((owner, repr(exc)))


def _plan_keys(url: str) -> list[str]:
    specs = [spec(f"c{i}") for i in range(N_KEYS)]
    with Ledger.open(url) as lg:
        lg.plan(specs)
    return [s.request_key for s in specs]


def test_threads_claim_each_key_once(db_url):
    keys = _plan_keys(db_url)
    barrier = threading.Barrier(8)
    results: dict[str, list[str]] = {}
    with Ledger.open(db_url) as lg:
        def run(owner: str) -> None:
            barrier.wait(timeout=60)
            won = []
            for k in random.Random(owner).sample(keys, len(keys)):
                if lg.claim(k, owner=owner, policy=POLICY)[0] is Decision.SUBMIT:
                    won.append(k)
            results[owner] = won
        threads = [threading.Thread(target=run, args=(f"thread-{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert len(results) == 8
        wins = Counter(k for won in results.values() for k in won)
        assert set(wins) == set(keys) and set(wins.values()) == {1}
        assert all(len(lg.history(k)) == 1 for k in keys)
        assert lg.counts_by_state(DAY)["submitting"] == N_KEYS


def test_processes_claim_each_key_once(db_url):
    keys = _plan_keys(db_url)
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(db_url, keys, f"proc-{i}", barrier, queue))
             for i in range(4)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=300) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
    errors = {o: r for o, r in results.items() if isinstance(r, str)}
    assert not errors
    wins = Counter(k for won in results.values() for k in won)
    assert set(wins) == set(keys) and set(wins.values()) == {1}
    with Ledger.open(db_url) as lg:
        assert all(len(lg.history(k)) == 1 for k in keys)
