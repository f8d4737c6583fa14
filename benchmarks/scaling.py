"""Scaling: wall time of a day for growing N at fixed C = 50 and L = 0.5 s, against L × ⌈N / C⌉.

Quick mode: N = 100, 500, 1,000; `--full` adds 10,000. Each N is a fresh day on one simulator (own process,
`max_running = C`) and one ledger, after a 1-item warm-up. Linearity: the extra seconds per extra wave between
consecutive N (slope), compared with L; "linear" when the last slope (largest N) is within 1.25× of the first.
"""

from __future__ import annotations

import datetime as dt
import math
import tempfile
from pathlib import Path

from benchmarks.common import (DAY, WARMUP_DAY, Result, generations_rows, make_project, materialize_day, parse_mode,
                               resources, rnd, status_counts)
from benchmarks.sim_process import SimProcess, queue_calls

NAME = "scaling"
C, L, POLL = 50, 0.5, 0.1


def run(argv: list[str] | None = None) -> Result:
    mode, _ = parse_mode(argv)
    ns = [100, 500, 1_000, 10_000] if mode == "full" else [100, 500, 1_000]
    d0 = dt.date.fromisoformat(DAY)
    days = {n: (d0 + dt.timedelta(days=i)).isoformat() for i, n in enumerate(ns)}
    res = Result(NAME, mode, parameters={"n": ns, "max_concurrency": C, "run_latency_s": L, "poll_interval_s": POLL,
                                         "simulator_max_running": C})
    points = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, \
            SimProcess(run_latency=L, max_running=C) as sim:
        project = make_project(Path(tmp), {WARMUP_DAY: 1, **{days[n]: n for n in ns}})
        rs = resources(sim.base_url, project, poll_interval=POLL, max_concurrency=C)
        materialize_day(rs, WARMUP_DAY)
        for n in ns:
            sim.reset()
            t = materialize_day(rs, days[n])
            rows = generations_rows(project, days[n])
            waves = math.ceil(n / C)
            gen = t.step("generations") or float("nan")
            points.append({"n": n, "waves": waves, "ideal_s": L * waves, "wall_s": rnd(t.wall),
                           "generations_s": rnd(gen), "wall_over_ideal": rnd(t.wall / (L * waves)),
                           "generations_over_ideal": rnd(gen / (L * waves)),
                           "seconds_per_wave": rnd(gen / waves), "completed": status_counts(rows).get("completed", 0),
                           "calls": queue_calls(sim.stats()), "success": t.success})
    slopes = []
    for a, b in zip(points, points[1:]):
        slopes.append({"from_n": a["n"], "to_n": b["n"],
                       "seconds_per_extra_wave": rnd((b["generations_s"] - a["generations_s"]) /
                                                     (b["waves"] - a["waves"]))})
    # linear in ⌈N/C⌉ when the cost of an extra wave at the largest N is no worse than at the smallest
    linear = slopes[-1]["seconds_per_extra_wave"] <= 1.25 * slopes[0]["seconds_per_extra_wave"]
    res.numbers = {"points": points, "slopes": slopes, "linear": linear}
    for p in points:
        res.check(f"scale-{p['n']}", f"wall / ideal, N={p['n']:,}", p["wall_over_ideal"], "report", None, "×",
                  f"wall {p['wall_s']:.1f} s, generations {p['generations_s']:.1f} s, ideal {p['ideal_s']:g} s, "
                  f"{p['seconds_per_wave']:.3f} s/wave")
    res.check("scale-linear", "seconds per extra wave (last slope / first slope)",
              rnd(slopes[-1]["seconds_per_extra_wave"] / slopes[0]["seconds_per_extra_wave"]) if len(slopes) > 1
              else rnd(slopes[0]["seconds_per_extra_wave"] / L), "≤ 1.25 (linear)" if len(slopes) > 1 else "report",
              linear if len(slopes) > 1 else None, "×" if len(slopes) > 1 else "",
              "; ".join(f"{s['from_n']}→{s['to_n']}: {s['seconds_per_extra_wave']:.3f} s/wave (L = {L} s)"
                        for s in slopes))
    res.save("C=50 L=0.5s: " + ", ".join(f"N={p['n']:,} {p['wall_s']:.1f} s = {p['wall_over_ideal']:.2f}× ideal"
                                         for p in points)
             + "; s/extra wave " + ", ".join(f"{s['seconds_per_extra_wave']:.3f}" for s in slopes))
    return res


def main(argv: list[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
