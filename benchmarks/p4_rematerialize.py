"""P4: re-materializing a completed 1,000-item day (the ledger and the archived videos exist): it must submit
nothing (simulator stats after a reset) and the generations step must stay ≤ 5 s.

Both runs are `dagster.materialize` of the pipeline's assets and checks in this process, on the simulator (own
process, L = 0.05 s, C = 50), with one SQLite ledger and one warehouse. The first run is timed for reference.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import (DAY, Result, generations_rows, make_project, materialize_day, parse_mode, resources,
                               rnd, status_counts)
from benchmarks.sim_process import SimProcess, queue_calls

NAME = "p4_rematerialize"
N, C, L = 1000, 50, 0.05


def run(argv: list[str] | None = None) -> Result:
    mode, _ = parse_mode(argv)
    res = Result(NAME, mode, parameters={"n_items": N, "max_concurrency": C, "run_latency_s": L,
                                         "poll_interval_s": 0.1, "ledger": "SQLite file",
                                         "simulator": "separate process, loopback"})
    with tempfile.TemporaryDirectory(prefix="bench-p4-") as tmp, SimProcess(run_latency=L, max_running=C) as sim:
        project = make_project(Path(tmp), {DAY: N})
        rs = resources(sim.base_url, project, poll_interval=0.1, max_concurrency=C)
        first = materialize_day(rs, DAY)
        first_calls = queue_calls(sim.stats())
        first_rows = generations_rows(project, DAY)
        sim.reset()
        again = materialize_day(rs, DAY)
        stats = sim.stats()
        rows = generations_rows(project, DAY)
    decisions: dict[str, int] = {}
    for r in rows:
        decisions[r["decision"]] = decisions.get(r["decision"], 0) + 1
    gen = again.step("generations")
    res.numbers = {
        "first_run": {**first.as_dict(), "calls": first_calls, "statuses": status_counts(first_rows)},
        "rerun": {**again.as_dict(), "calls": queue_calls(stats), "statuses": status_counts(rows),
                  "decisions": decisions},
        "rerun_submits": stats["submits"], "rerun_generations_step_s": rnd(gen), "rerun_wall_s": rnd(again.wall),
        "rerun_over_first": rnd(again.wall / first.wall),
    }
    completed = status_counts(rows).get("completed", 0)
    res.check("P4-submits", "submits when re-materializing", stats["submits"], "0",
              stats["submits"] == 0 and again.success and completed == N, "",
              f"{completed}/{N} completed, decisions {decisions}; file downloads {stats['calls']['file']}")
    res.check("P4-time", "generations step of the re-run", rnd(gen), "≤ 5 s", gen is not None and gen <= 5, " s",
              f"whole re-run {again.wall:.2f} s (first run {first.wall:.2f} s)")
    res.save(f"re-run of a completed {N}-item day: {stats['submits']} submits, {stats['calls']['file']} downloads; "
             f"generations step {gen or 0:.2f} s, whole run {again.wall:.2f} s (first run {first.wall:.2f} s)")
    return res


def main(argv: list[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
