"""P5: a large day on the simulator with latency ~0 — peak RSS of the pipeline process and items per second.

Quick mode runs N = 2,000; `--full` runs N = 10,000. The simulator runs in its own process, so the RSS measured
(`VmHWM` of this process: interpreter, Dagster, the run, everything) is the pipeline's alone. RSS is also sampled
every 0.2 s to show its curve.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import (DAY, WARMUP_DAY, Result, RSSSampler, generations_rows, make_project, materialize_day,
                               maxrss_mb, parse_mode, resources, rnd, status_counts)
from benchmarks.sim_process import SimProcess, queue_calls

NAME = "p5_memory"
C, L = 50, 0.0


def run(argv: list[str] | None = None) -> Result:
    mode, _ = parse_mode(argv)
    n = 10_000 if mode == "full" else 2_000
    res = Result(NAME, mode, parameters={"n_items": n, "max_concurrency": C, "run_latency_s": L,
                                         "poll_interval_s": 0.1, "video": "720p 4 s clip (~240 KB), one per item",
                                         "rss": "VmHWM of the benchmark process; simulator in its own process"})
    with tempfile.TemporaryDirectory(prefix="bench-p5-") as tmp, SimProcess(run_latency=L, max_running=C) as sim:
        project = make_project(Path(tmp), {WARMUP_DAY: 1, DAY: n})
        rs = resources(sim.base_url, project, poll_interval=0.1, max_concurrency=C)
        materialize_day(rs, WARMUP_DAY)
        before = maxrss_mb()
        sim.reset()
        with RSSSampler() as sampler:
            run_ = materialize_day(rs, DAY)
        peak = maxrss_mb()
        stats = sim.stats()
        rows = generations_rows(project, DAY)
    gen = run_.step("generations")
    completed = status_counts(rows).get("completed", 0)
    ips = completed / gen if gen else None
    res.numbers = {"peak_rss_mb": rnd(peak, 1), "rss_before_run_mb": rnd(before, 1),
                   "rss_growth_mb": rnd(peak - before, 1), "rss_curve_s_mb": sampler.curve(),
                   "items_per_s_generations_step": rnd(ips), "items_per_s_whole_run": rnd(completed / run_.wall),
                   "completed": completed, "run": run_.as_dict(), "calls": queue_calls(stats)}
    res.check(f"P5-rss-{n}", f"peak RSS, {n:,}-item day", rnd(peak, 1), "≤ 1024 MB",
              peak <= 1024 and completed == n, " MB", f"{before:.0f} MB before the run")
    res.check(f"P5-rate-{n}", "items/s (generations step)", rnd(ips, 1), "report", None, "/s",
              f"whole run {completed / run_.wall:.1f}/s; {run_.wall:.1f} s for {completed:,} items")
    res.save(f"{n:,}-item day at L≈0, C={C}: peak RSS {peak:.0f} MB ({before:.0f} MB before), "
             f"{ips or 0:.1f} items/s in the generations step, {completed / run_.wall:.1f} items/s whole run "
             f"({completed:,}/{n:,} completed)")
    return res


def main(argv: list[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
