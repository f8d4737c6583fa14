"""P7: reconciling a 10,000-request day with fal's records — billing events (admin key) and the request history
with payloads (for unknown submits) — against the simulator's platform API over loopback. Calls per API (no call
per request: at most ⌈N / page size⌉), wall time and peak RSS of the reconciling part.

Setup (not timed): N submits to an in-process simulator (L = 0), each with its own prompt, until every job ended.
Timed: (1) every page of the day's billing events, then `billing.reconcile.reconcile` against the N known requests;
(2) every page of the endpoint's request history with payloads, each input fingerprinted as the runner does, and
all N fingerprints looked up. Baseline in the same run: the same HTTP paging without reconciling (the ratio says
what the matching adds)."""

from __future__ import annotations

import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx

from benchmarks.common import Result, maxrss_mb, parse_mode, rnd

NAME = "p7_reconcile"
ENDPOINT = "fal-ai/sora-2/image-to-video/pro"
ADMIN = "bench-admin-key-0123456789"
IMAGE = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")
WALL_S = 10.0


def _submit_all(base: str, n: int) -> list[tuple[str, dict]]:
    def one(i: int) -> tuple[str, dict]:
        payload = {"prompt": f"reconcile clip {i}", "image_url": IMAGE, "resolution": "720p",
                   "aspect_ratio": "16:9", "duration": 4}
        r = client.post(f"{base}/{ENDPOINT}", json=payload, headers={"Authorization": f"Key {ADMIN}"})
        r.raise_for_status()
        return r.json()["request_id"], payload

    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=16)) as client, \
            ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, range(n)))


def run(argv: list[str] | None = None) -> Result:
    from sora_pipeline.billing.reconcile import KnownRequest, reconcile
    from sora_pipeline.fal.platform import MAX_BILLING_PAGE, MAX_REQUESTS_PAGE, PlatformClient
    from sora_pipeline.generation.unknowns import payload_fingerprint
    from sora_pipeline.simulator import SimulatorConfig, SimulatorServer

    mode, _ = parse_mode(argv)
    n = 10_000
    res = Result(NAME, mode, parameters={"requests": n, "endpoint": ENDPOINT, "billing_page": MAX_BILLING_PAGE,
                                         "history_page": MAX_REQUESTS_PAGE, "simulator": "in-process, loopback"})
    sim = SimulatorServer(SimulatorConfig(run_latency=0.0, admin_keys=[ADMIN], endpoint_ids=(ENDPOINT,))).start()
    try:
        t0 = time.perf_counter()
        submitted = _submit_all(sim.base_url, n)
        while sim.stats()["completed"] < n:
            time.sleep(0.2)
        setup = time.perf_counter() - t0
        now = datetime.now(UTC)
        start, end = now - timedelta(hours=1), now + timedelta(minutes=5)
        known = [KnownRequest(request_id=rid, item_id=f"i{i}", endpoint_id=ENDPOINT, backend="simulator",
                              estimated_cost=1.2, submitted_at=now, completed_at=now)
                 for i, (rid, _) in enumerate(submitted)]
        rss_before = maxrss_mb()

        with PlatformClient(f"{sim.base_url}/v1", ADMIN) as client:  # baseline: paging only
            t = time.perf_counter()
            events = list(client.billing_events(start, end, endpoint_ids=[ENDPOINT]))
            items = list(client.requests_by_endpoint(ENDPOINT, start, end, expand_payloads=True))
            paging = time.perf_counter() - t
        with PlatformClient(f"{sim.base_url}/v1", ADMIN) as client:
            t = time.perf_counter()
            events = list(client.billing_events(start, end, endpoint_ids=[ENDPOINT]))
            rows = reconcile(known, events, day=now.date().isoformat(), ledger_knows={k.request_id for k in known},
                             now=now)
            billing_s = time.perf_counter() - t
            t = time.perf_counter()
            items = list(client.requests_by_endpoint(ENDPOINT, start, end, expand_payloads=True))
            seen = {payload_fingerprint(i["json_input"]): i["request_id"] for i in items if i.get("json_input")}
            found = sum(seen.get(payload_fingerprint(p)) == rid for rid, p in submitted)
            history_s = time.perf_counter() - t
            calls = dict(client.calls)
    finally:
        sim.stop()
    billing_calls = sum(v for k, v in calls.items() if "billing" in k)
    history_calls = sum(v for k, v in calls.items() if "requests" in k)
    billed = sum(r["billing_source"] == "billing_events" for r in rows)
    res.numbers = {"setup_s": rnd(setup, 1), "billing_s": rnd(billing_s), "history_s": rnd(history_s),
                   "paging_only_s": rnd(paging), "calls": calls, "rows": len(rows), "billed_rows": billed,
                   "history_items": len(items), "found_by_fingerprint": found, "peak_rss_mb": rnd(maxrss_mb(), 1),
                   "rss_before_mb": rnd(rss_before, 1)}
    res.check("P7-billing-calls", "billing-events calls for the day", billing_calls,
              f"≤ ⌈{n:,} / {MAX_BILLING_PAGE:,}⌉ = {math.ceil(n / MAX_BILLING_PAGE)}",
              billing_calls <= math.ceil(n / MAX_BILLING_PAGE), "", f"{billed:,} of {n:,} rows from billing events")
    res.check("P7-history-calls", "request-history calls for the day", history_calls,
              f"≤ ⌈{n:,} / {MAX_REQUESTS_PAGE}⌉ = {math.ceil(n / MAX_REQUESTS_PAGE)}",
              history_calls <= math.ceil(n / MAX_REQUESTS_PAGE), "", f"{found:,} of {n:,} found by fingerprint")
    total = billing_s + history_s
    res.check("P7-time", "billing + history reconciliation of the day", rnd(total, 2), f"≤ {WALL_S:g} s",
              total <= WALL_S and billed == n and found == n, " s",
              f"billing {billing_s:.2f} s, history {history_s:.2f} s; paging alone {paging:.2f} s")
    res.check("P7-rss", "peak RSS of the process", rnd(maxrss_mb(), 1), "report", None, " MB",
              f"{rss_before:.0f} MB after the setup")
    res.save(f"{n:,} requests reconciled: billing {billing_calls} call(s) {billing_s:.2f} s, history "
             f"{history_calls} calls {history_s:.2f} s (paging alone {paging:.2f} s), peak RSS {maxrss_mb():.0f} MB")
    return res


def main(argv: list[str] | None = None) -> None:
    run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
