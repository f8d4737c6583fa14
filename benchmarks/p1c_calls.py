"""P1c: HTTP calls per request, and polling backing off for long generations.

1. From P1 (same `python -m benchmarks` run, else re-measured): queue calls (submit + status + result + cancel)
   per request, from the simulator's `calls` counters, against 2 + ⌈L / poll interval⌉. Video downloads (`file`)
   are reported beside them. The default policy follows fal's status stream (one status call per request), which
   meets that bound whatever the polling does; so P1's day is also run on the polling fallback (the resource's
   client with `stream=False`, poll 0.1 s): with C in flight (nothing waits in fal's queue) against
   2 + ⌈L / poll⌉, and with 2C in flight (P1's setting: half the requests wait up to L in fal's queue, and are
   polled there too) against 2 + ⌈2L / poll⌉.
2. Backoff, measured on a compressed clock: the project's `AsyncFalQueueClient.wait` polling (status stream switched
   off where the policy has one) with the default poll policy's shape scaled by 1/20 (interval 0.05 s, backoff ×1.5 after 1.5 s, cap 0.5 s ≙ 1 s / 30 s / 10 s) on a 6 s
   generation (≙ 120 s), against the same client without backoff — status calls counted by the simulator.
   The default policy itself (following the status stream, where the client can) is measured beside them.
3. Backoff, computed: the poll schedule of the resource's default `PollPolicy` (from `PollPolicy.next_delay`) for
   generations of 30 s … 10 min, against fixed-interval polling.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math

from benchmarks.common import Result, parse_mode, rnd, same_run_result
from benchmarks.sim_process import SimProcess, queue_calls
from benchmarks import p1_day

NAME = "p1c_calls"
SCALE = 20
LONG_LATENCY = 6.0  # seconds on the compressed clock (≙ 120 s)
K = 5  # concurrent long requests per policy


def schedule(policy, latency: float) -> tuple[int, list[float]]:
    """Polls `wait()` makes for a request that completes `latency` seconds after submit, and the delays used."""
    t, delay, delays = 0.0, policy.interval, []
    while True:
        t += delay
        delays.append(delay)
        if t >= latency:
            return len(delays), delays
        delay = policy.next_delay(t, delay)


async def _long_requests(base_url: str, policy, k: int) -> list[dict]:
    from sora_pipeline.fal import AsyncFalQueueClient
    from sora_pipeline.defs.resources import SIMULATOR_KEY
    from benchmarks.p1b_sequential import _arguments

    async with AsyncFalQueueClient(key=SIMULATOR_KEY, base_url=base_url, poll=policy) as client:
        async def one(i: int) -> dict:
            polls = 0

            def on_status(_h, _s) -> None:
                nonlocal polls
                polls += 1

            handle = await client.submit(_arguments(1000 + i))
            await client.wait(handle, on_status=on_status)
            await client.result(handle)
            return {"polls": polls}

        return await asyncio.gather(*(one(i) for i in range(k)))


def _polling(policy_cls, **kw):
    """A poll policy that polls (if the policy can follow a status stream instead, that is switched off here)."""
    if "stream" in {f.name for f in dataclasses.fields(policy_cls)}:
        kw["stream"] = False
    return policy_cls(**kw)


def polling_resource_class():
    """`FalVideoResource` with the status stream switched off: every request is polled (the fallback path the
    client takes where fal's stream is unavailable). Everything else is the resource's own."""
    from sora_pipeline.defs.resources import FalVideoResource

    class PollingFalVideoResource(FalVideoResource):
        def client_kwargs(self, profile=None) -> dict:
            kw = super().client_kwargs(profile)
            if "stream" in {f.name for f in dataclasses.fields(kw["poll"])}:
                kw["poll"] = dataclasses.replace(kw["poll"], stream=False)
            return kw

    return PollingFalVideoResource


def measure_polling(in_flight: int) -> dict:
    """P1's day (N, C, L, poll interval of P1) with the status stream off, `in_flight` requests in flight."""
    best = p1_day.measure(repeats=1, in_flight=in_flight, fal_class=polling_resource_class())["best"]
    calls, n = best["calls"], p1_day.N
    return {"in_flight": in_flight, "calls": calls, "queue_calls_per_request": calls["queue_total"] / n,
            "status_polls_per_request": calls["status"] / n, "wall_s": best["wall_s"],
            "wall_over_ideal": best["wall_s"] / (p1_day.L * math.ceil(n / p1_day.C)),
            "submit_to_result_s": best["submit_to_result_s"], "completed": best["completed"],
            "success": best["success"]}


def measure_backoff() -> dict:
    from sora_pipeline.fal import PollPolicy
    from sora_pipeline.defs.resources import FalVideoResource

    default = FalVideoResource(queue_url="http://127.0.0.1:9")  # only for its default poll settings
    d = default.client_kwargs()["poll"]
    streams = bool(getattr(d, "stream", False))
    scaled = _polling(PollPolicy, interval=d.interval / SCALE, max_interval=d.max_interval / SCALE,
                      backoff=d.backoff, backoff_after=d.backoff_after / SCALE)
    flat = _polling(PollPolicy, interval=scaled.interval, max_interval=scaled.interval, backoff=1.0,
                    backoff_after=math.inf)
    stream_policy = dataclasses.replace(d, interval=scaled.interval, max_interval=scaled.max_interval,
                                        backoff_after=scaled.backoff_after) if streams else None
    with SimProcess(run_latency=LONG_LATENCY) as sim_b, SimProcess(run_latency=LONG_LATENCY) as sim_f, \
            SimProcess(run_latency=LONG_LATENCY) as sim_s:
        async def all_three():
            jobs = [_long_requests(sim_b.base_url, scaled, K), _long_requests(sim_f.base_url, flat, K)]
            if stream_policy is not None:
                jobs.append(_long_requests(sim_s.base_url, stream_policy, K))
            return await asyncio.gather(*jobs)

        runs = asyncio.run(all_three())
        backoff_runs, flat_runs = runs[0], runs[1]
        calls_b, calls_f, calls_s = queue_calls(sim_b.stats()), queue_calls(sim_f.stats()), queue_calls(sim_s.stats())
    streaming = None
    if stream_policy is not None:
        streaming = {"status_calls_per_request": calls_s["status"] / K, "calls": calls_s,
                     "status_events_seen": [r["polls"] for r in runs[2]],
                     "note": "the default policy follows GET …/status/stream (one call per request); polling and "
                             "its backoff are the fallback measured above"}
    expected_b, delays_b = schedule(scaled, LONG_LATENCY)
    computed = {}
    for latency in (30, 60, 120, 300, 600):
        n_b, delays = schedule(d, latency)
        computed[f"{latency}s"] = {"polls_with_backoff": n_b, "polls_fixed_interval": math.ceil(latency / d.interval),
                                   "bound_2_plus_ceil": 2 + math.ceil(latency / d.interval),
                                   "max_interval_reached_s": rnd(max(delays)),
                                   "worst_detection_delay_s": rnd(delays[-1])}
    return {
        "default_policy": {"interval": d.interval, "max_interval": d.max_interval, "backoff": d.backoff,
                           "backoff_after": d.backoff_after},
        "scaled_policy": {"interval": scaled.interval, "max_interval": scaled.max_interval,
                          "backoff": scaled.backoff, "backoff_after": scaled.backoff_after, "scale": SCALE},
        "long_latency_s": LONG_LATENCY, "equivalent_latency_s": LONG_LATENCY * SCALE, "requests_per_policy": K,
        "measured": {
            "with_backoff": {"status_calls_per_request": calls_b["status"] / K,
                             "client_polls": [r["polls"] for r in backoff_runs], "calls": calls_b,
                             "expected_polls_from_policy": expected_b,
                             "delays_s": [rnd(x, 4) for x in delays_b]},
            "fixed_interval": {"status_calls_per_request": calls_f["status"] / K,
                               "client_polls": [r["polls"] for r in flat_runs], "calls": calls_f},
            "default_policy_streaming": streaming,
        },
        "computed_default_policy": computed,
    }


def run(argv: list[str] | None = None) -> Result:
    mode, _ = parse_mode(argv)
    res = Result(NAME, mode, parameters={"p1": {"n": p1_day.N, "concurrency": p1_day.C, "latency_s": p1_day.L,
                                                "poll_interval_s": p1_day.POLL}})
    p1 = same_run_result(p1_day.NAME, mode)
    if p1 is not None:
        calls, source = p1["numbers"]["best_run"]["calls"], "P1 result of this run"
    else:
        calls, source = p1_day.measure(repeats=1)["best"]["calls"], "measured here (P1 not in this run)"
    n, bound = p1_day.N, 2 + math.ceil(p1_day.L / p1_day.POLL)
    per = calls["queue_total"] / n
    polling = {"in_flight_C": measure_polling(p1_day.C), "in_flight_2C": measure_polling(2 * p1_day.C)}
    backoff = measure_backoff()
    mb, mf = backoff["measured"]["with_backoff"], backoff["measured"]["fixed_interval"]
    res.numbers = {"p1_calls": calls, "p1_calls_source": source, "p1_queue_calls_per_request": rnd(per),
                   "p1_status_polls_per_request": rnd(calls["status"] / n),
                   "p1_file_downloads_per_request": rnd(calls["file"] / n), "bound": bound,
                   "polling_fallback": polling, "backoff": backoff}
    res.check("P1c", "queue HTTP calls per request (P1)", rnd(per), f"≤ 2 + ⌈L/poll⌉ = {bound}", per <= bound, "",
              f"submit {calls['submit']}, status {calls['status']}, result {calls['result']} for {n}; "
              f"+ {calls['file']} video downloads")
    for key, label, waits in (("in_flight_C", "C", 1), ("in_flight_2C", "2C", 2)):
        pm = polling[key]
        b = 2 + math.ceil(waits * p1_day.L / p1_day.POLL)
        per_p = pm["queue_calls_per_request"]
        why = ("no request waits in fal's queue (C in flight, C running): it is polled for ≈ L" if waits == 1 else
               "half the requests wait in fal's queue first, at most L (C ahead of them, each running L): polled "
               "for ≤ 2L")
        res.check(f"P1c-poll-{label}", f"queue calls per request, status stream off (polling), {label} in flight",
                  rnd(per_p), f"≤ 2 + ⌈{waits if waits > 1 else ''}L/poll⌉ = {b}",
                  per_p <= b and pm["completed"] == n, "",
                  f"submit {pm['calls']['submit']}, status {pm['calls']['status']}, result {pm['calls']['result']}; "
                  f"{why}; wall {pm['wall_s']:.2f} s = {pm['wall_over_ideal']:.2f}× ideal (streaming P1: "
                  f"{p1['numbers']['wall_over_ideal'] if p1 else 'n/a'}×)")
    ratio = mb["status_calls_per_request"] / mf["status_calls_per_request"]
    eq = backoff["equivalent_latency_s"]
    res.check("P1c-backoff", f"status polls for a {eq:.0f} s generation, backoff vs fixed interval", rnd(ratio),
              "< 0.5 (backs off)", ratio < 0.5, "×",
              f"{mb['status_calls_per_request']:.1f} vs {mf['status_calls_per_request']:.1f} polls per request "
              f"(clock compressed {SCALE}×: {LONG_LATENCY:g} s run)")
    ms = backoff["measured"]["default_policy_streaming"]
    if ms is not None:
        res.check("P1c-stream", f"status calls per request for a {eq:.0f} s generation, default policy (stream)",
                  rnd(ms["status_calls_per_request"]), "report", None, "",
                  f"{ms['calls']['queue_total'] / K:.1f} queue calls per request in all")
    c600 = backoff["computed_default_policy"]["600s"]
    pc, p2c = polling["in_flight_C"], polling["in_flight_2C"]
    res.save(f"P1: {per:.2f} queue calls/request (bound {bound}); polling fallback {pc['queue_calls_per_request']:.1f} "
             f"(C in flight) / {p2c['queue_calls_per_request']:.1f} (2C); a {eq:.0f} s generation: "
             f"{mb['status_calls_per_request']:.1f} polls with backoff vs {mf['status_calls_per_request']:.1f} fixed; "
             f"default policy for 10 min: {c600['polls_with_backoff']} polls vs {c600['polls_fixed_interval']}")
    return res


def main(argv: list[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
