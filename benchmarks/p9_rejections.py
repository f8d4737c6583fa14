"""P9: a day of 100,000 catalog rows of which 99,999 are rejected, materialized (assets and checks) on an instance
with a `DAGSTER_HOME` (the repo's `dagster.yaml` copied into a temp folder: SQLite event log on disk, as `make ui`
and `dg launch` run it): wall time, the catalog step, peak RSS and the event log's size.

Each day runs in a fresh interpreter, as a run worker would (peak RSS = its VmHWM; wall from just before the run).
The baseline, measured in the same way just before on the same instance, is the same day with its one valid row
only: the ratio says what 99,999 rejections add to a day. The rejected rows break one rule each, in turn (no
prompt, plain http image, a resolution the endpoint does not offer, a local image that does not exist, an item_id
shared by many rows, params that are not JSON). The simulator answers the one valid item (own process, L = 0.05 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import DAY, REPO, Result, maxrss_mb, parse_mode, resources, rnd
from benchmarks.sim_process import SimProcess

NAME = "p9_rejections"
ROWS = 100_000
KINDS = ("prompt", "http", "resolution", "missing_image", "duplicate", "params")
WALL_S, RSS_MB = 10.0, 400.0


def write_day(catalog: Path, rows: int) -> None:
    """One Parquet file: row 0 valid, rows 1… rejected (one rule each, in turn), all scheduled on DAY."""
    import datetime as dt

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    index = np.arange(rows)
    kind = np.where(index == 0, -1, index % len(KINDS))
    names = pc.cast(pa.array(index), pa.string())

    def where(k: str, yes, no):
        mask = pa.array(kind == KINDS.index(k))
        return pc.if_else(mask, yes, no)

    item_id = where("duplicate", pa.scalar("it-shared"), pc.binary_join_element_wise("it-", names, ""))
    prompt = where("prompt", pa.scalar(None, pa.string()),
                   pc.binary_join_element_wise("a calm lake at dawn, clip ", names, ""))
    image = where("http", pc.binary_join_element_wise("http://img.example/", names, ".png", ""),
                  where("missing_image", pc.binary_join_element_wise("../images/missing-", names, ".png", ""),
                        pa.scalar("../images/land.png")))
    table = pa.table({
        "item_id": item_id, "prompt": prompt, "image_uri": image,
        "scheduled_date": pa.array([dt.date.fromisoformat(DAY)] * rows, pa.date32()),
        "resolution": where("resolution", pa.scalar("4k"), pa.scalar("720p")),
        "aspect_ratio": pa.array(["16:9"] * rows), "duration": pa.array([4] * rows, pa.int64()),
        "params": where("params", pa.scalar("{not json"), pa.scalar(None, pa.string())),
    })
    pq.write_table(table, catalog / "part-0.parquet")


def _project(root: Path, rows: int) -> dict:
    from tests.support import fixtures

    project = fixtures.make_project(root, fixtures.uniform_rows(DAY, 1))
    write_day(Path(project["catalog_uri"]), rows)
    return project


def _steps(logs) -> dict[str, float]:
    """step key → seconds from STEP_START to its end, from the run's event log."""
    starts, steps = {}, {}
    for entry in logs:
        ev = entry.dagster_event
        if ev is None:
            continue
        if ev.event_type_value == "STEP_START":
            starts[ev.step_key] = entry.timestamp
        elif ev.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and ev.step_key in starts:
            steps[ev.step_key] = entry.timestamp - starts[ev.step_key]
    return steps


def _measure(sim_url: str, project: dict, instance) -> dict:
    from tests.support import fixtures

    rs = resources(sim_url, project, poll_interval=0.05)
    before = maxrss_mb()
    t0 = time.perf_counter()
    result = fixtures.materialize_day(rs, DAY, instance=instance, raise_on_error=False)
    wall = time.perf_counter() - t0
    logs = instance.all_logs(result.run_id)
    steps = _steps(logs)
    return {"wall_s": wall, "success": result.success, "catalog_step_s": steps.get("catalog_slice"),
            "steps_s": {k: rnd(v) for k, v in steps.items()}, "event_log_entries": len(logs),
            "rss_before_mb": before, "peak_rss_mb": maxrss_mb()}


def child(project: str, sim_url: str) -> None:
    """One day's run in this (fresh) process, on the instance of $DAGSTER_HOME; its figures as JSON on stdout."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        print(json.dumps(_measure(sim_url, json.loads(project), instance)), flush=True)


def _fresh(home: Path, root: Path, rows: int, sim_url: str) -> dict:
    """The day (written here, so the run's process starts as a run worker does) in a fresh interpreter."""
    project = _project(root, rows)
    env = dict(os.environ, DAGSTER_HOME=str(home))
    out = subprocess.run([sys.executable, "-m", "benchmarks.p9_rejections", "--child", json.dumps(project), sim_url],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(argv: list[str] | None = None) -> Result:
    mode, _ = parse_mode(argv)
    res = Result(NAME, mode, parameters={
        "rows": ROWS, "rejected": ROWS - 1, "rejection_kinds": list(KINDS), "instance": "temp DAGSTER_HOME with "
        "the repo's dagster.yaml (SQLite storage on disk)", "selection": "the day's assets and checks",
        "process": "each day in a fresh interpreter (as a run worker is); wall and RSS counted from before the run",
        "simulator": "separate process, loopback, L = 0.05 s", "baseline": "the same day with its valid row only"})
    with tempfile.TemporaryDirectory(prefix="bench-p9-") as tmp, SimProcess(run_latency=0.05, max_running=8) as sim:
        home = Path(tmp) / "dagster_home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        base = _fresh(home, Path(tmp) / "base", 1, sim.base_url)
        big = _fresh(home, Path(tmp) / "big", ROWS, sim.base_url)
        home_mb = sum(f.stat().st_size for f in home.rglob("*") if f.is_file()) / 2**20
    ok = base["success"] and big["success"]
    rate = (ROWS - 1) / big["catalog_step_s"] if big["catalog_step_s"] else None
    res.numbers = {"baseline": base, "rejected_day": big, "rejected_rows_per_s_catalog_step": rnd(rate, 0),
                   "wall_over_baseline": rnd(big["wall_s"] / base["wall_s"]), "dagster_home_mb": rnd(home_mb, 1)}
    res.check("P9-time", f"day of {ROWS:,} rows, {ROWS - 1:,} rejected (whole run)", rnd(big["wall_s"], 2),
              f"≤ {WALL_S:g} s", ok and big["wall_s"] <= WALL_S, " s",
              f"catalog step {big['catalog_step_s'] or 0:.2f} s; baseline day {base['wall_s']:.2f} s")
    res.check("P9-rss", "peak RSS of that run's process", rnd(big["peak_rss_mb"], 1), f"≤ {RSS_MB:g} MB",
              big["peak_rss_mb"] <= RSS_MB, " MB", f"{big['rss_before_mb']:.0f} MB before the run")
    res.check("P9-events", "event log entries vs the 1-row baseline", big["event_log_entries"],
              f"≤ baseline + 10 ({base['event_log_entries'] + 10})",
              big["event_log_entries"] <= base["event_log_entries"] + 10, "",
              f"DAGSTER_HOME {home_mb:.1f} MB after both runs")
    res.check("P9-ratio", "wall / baseline day", rnd(big["wall_s"] / base["wall_s"], 2), "report", None, "×")
    res.save(f"{ROWS - 1:,} rejected rows in one day: {big['wall_s']:.2f} s (catalog step "
             f"{big['catalog_step_s'] or 0:.2f} s, {rate or 0:,.0f} rows/s), peak RSS {big['peak_rss_mb']:.0f} MB, "
             f"{big['event_log_entries']} events (baseline day {base['wall_s']:.2f} s, "
             f"{base['event_log_entries']} events)")
    return res


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2])
    else:
        run(argv)


if __name__ == "__main__":
    main()
