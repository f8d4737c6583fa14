"""P8: one day of N = 40,000 items (about the most one account runs in a day at concurrency 40) mixing three
endpoints, on the simulator: peak RSS of the run worker, pipeline CPU per item (the simulator excluded: it runs in
its own process), the cost of each part, and the same day at N / 4 in the same run to show no part grows faster
than the number of items.

The day's rows cycle through Sora 2 Pro (the resource's default: `endpoint_id` null), Kling 3 Pro and Hailuo 2.3
(`endpoint_id` set), each with its own allowed durations in turn (`get_profile(id).allowed("duration")`). Each day
runs in a fresh interpreter on an instance with a `DAGSTER_HOME` (the repo's `dagster.yaml`: SQLite event log on
disk, as a run worker runs it): peak RSS = its VmHWM, CPU = its user + system time from just before the run.
Parts: the catalog step (`catalog_slice`), planning (`GenerationRunner.plan`: images, prices, keys, the ledger's
PLANNED rows), generation (the rest of the `generations` step: submits, waits, downloads, archive, probes, the
ledger, the generations table), tables (`video_metadata`, `generation_daily_stats`) and the asset checks. Per-part
CPU is the process's CPU between the steps' STEP_START and their end (the in-process executor runs one step at a
time).

The simulator answers at L = 0.02 s with `max_running` = C = 40 (quiet: no line per request); the pipeline keeps
2C = 80 in flight. Every row uses one small image, so the simulator encodes one clip per endpoint and duration
(cached on disk). Videos are archived and probed (the default): `--full` runs N = 40,000 and N / 4 = 10,000; quick
mode (`make bench`) runs 6,000 and 1,500 with the same mix, and `--no-archive` turns archiving off (downloads and
probes stay). `--n N` picks another size (N and N / 4); `--profile FILE` writes a cProfile of the N-item run
worker. The ratios are per-item costs at N over those at N / 4: 1 when a part grows with the items, 4 when it grows
with their square.

The baseline measured in the same run (`benchmarks/http_floor.py`, on the same simulator, N / 4 items): the four
calls of each item with bare httpx and nothing else — the CPU the protocol alone costs this machine; P8 reports
the pipeline's CPU per item as a multiple of it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import DAY, REPO, Result, maxrss_mb, parse_mode, resources, rnd
from benchmarks.http_floor import run_floor
from benchmarks.sim_process import SimProcess, queue_calls

NAME = "p8_many_endpoints"
SORA = "fal-ai/sora-2/image-to-video/pro"
KLING = "fal-ai/kling-video/v3/pro/image-to-video"
HAILUO = "fal-ai/minimax/hailuo-2.3/standard/image-to-video"
#: endpoint → durations used in turn (each within the endpoint's allowed values, checked when the day is written)
MIX = {SORA: (4, 8), KLING: (5, 10), HAILUO: (6, 10)}
C, IN_FLIGHT, L = 40, 80, 0.02
N_FULL, N_QUICK = 40_000, 6_000
RSS_MB, CPU_MS, GROWTH = 1024.0, 5.0, 1.3
PARTS = ("catalog", "planning", "generation", "tables", "checks")


def write_day(project: dict, n: int) -> dict[str, int]:
    """The day's catalog: `n` rows cycling through the endpoints (Sora's with `endpoint_id` null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sora_pipeline.endpoints import get_profile

    for endpoint, durations in MIX.items():
        allowed = get_profile(endpoint).allowed("duration")
        assert allowed is None or set(durations) <= set(allowed), (endpoint, durations, allowed)
    endpoints = list(MIX)
    day = dt.date.fromisoformat(DAY)
    rows, counts = [], dict.fromkeys(endpoints, 0)
    for i in range(n):
        endpoint = endpoints[i % len(endpoints)]
        durations = MIX[endpoint]
        counts[endpoint] += 1
        rows.append({"item_id": f"p8-{i:06d}", "prompt": f"benchmark clip {i}: a calm lake at dawn",
                     "image_uri": "../images/land.png", "scheduled_date": day,
                     "duration": durations[(i // len(endpoints)) % len(durations)],
                     "endpoint_id": None if endpoint == SORA else endpoint})
    schema = pa.schema([("item_id", pa.string()), ("prompt", pa.string()), ("image_uri", pa.string()),
                        ("scheduled_date", pa.date32()), ("duration", pa.int64()), ("endpoint_id", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), f"{project['catalog_uri']}/part-0.parquet")
    return counts


# ------------------------------------------------------------------------------------- the run worker (child)
def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _instrument(instance) -> tuple[dict, dict]:
    """Per-step CPU and wall (from the instance's events, in this process) and the planning call's."""
    from sora_pipeline.generation.runner import GenerationRunner

    steps: dict[str, dict] = {}
    open_: dict[str, tuple[float, float]] = {}
    handle = instance.handle_new_event

    def on_event(event, **kw):
        ev = event.dagster_event
        if ev is not None and ev.step_key:
            kind = ev.event_type_value
            if kind == "STEP_START":
                open_[ev.step_key] = (_cpu(), time.perf_counter())
            elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and ev.step_key in open_:
                c0, t0 = open_.pop(ev.step_key)
                steps[ev.step_key] = {"cpu_s": _cpu() - c0, "wall_s": time.perf_counter() - t0}
        return handle(event, **kw)

    instance.handle_new_event = on_event
    planning: dict = {}
    plan = GenerationRunner.plan

    def timed_plan(self, items):
        c0, t0 = _cpu(), time.perf_counter()
        try:
            return plan(self, items)
        finally:
            planning.update(cpu_s=_cpu() - c0, wall_s=time.perf_counter() - t0)

    GenerationRunner.plan = timed_plan
    return steps, planning


class ThreadCPU:
    """CPU seconds of each thread of this process by name (sampled from /proc/self/task every 0.5 s, so a thread
    that lives under 0.5 s may be missed; pools' threads are summed under their name without the number)."""

    def __init__(self) -> None:
        import threading

        self._seen: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="p8-thread-cpu")
        self._tick = os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        import re
        import threading

        names = {t.native_id: re.sub(r"[_-]?\d+$", "", t.name) for t in threading.enumerate()}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / self._tick
            old = self._seen.get(int(tid))
            self._seen[int(tid)] = (names.get(int(tid)) or (old[0] if old else "other"), cpu)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def __enter__(self) -> ThreadCPU:
        self._sample()
        self._base = dict(self._seen)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def by_name(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for tid, (name, cpu) in self._seen.items():
            out[name] = out.get(name, 0.0) + cpu - self._base.get(tid, (name, 0.0))[1]
        return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0}


def _parts(steps: dict[str, dict], planning: dict) -> dict[str, dict]:
    def total(keys, what):
        return sum(v[what] for k, v in steps.items() if k in keys)

    tables = ("video_metadata", "generation_daily_stats")
    checks = [k for k in steps if k not in ("catalog_slice", "generations", *tables)]
    out = {}
    for what in ("cpu_s", "wall_s"):
        out.setdefault("catalog", {})[what] = total(("catalog_slice",), what)
        out.setdefault("planning", {})[what] = planning.get(what, 0.0)
        out.setdefault("generation", {})[what] = total(("generations",), what) - planning.get(what, 0.0)
        out.setdefault("tables", {})[what] = total(tables, what)
        out.setdefault("checks", {})[what] = total(checks, what)
    return out


def child(project_json: str, sim_url: str, archive: str, profile_to: str = "") -> None:
    """One day's run in this (fresh) process on the instance of $DAGSTER_HOME; its figures as JSON on stdout."""
    import dagster as dg

    from benchmarks.common import generations_rows, status_counts
    from tests.support import fixtures

    project = json.loads(project_json)
    rs = resources(sim_url, project, poll_interval=0.1, max_concurrency=IN_FLIGHT, account_concurrency=C,
                   endpoint_id=SORA, archive_videos=archive == "archive")
    with dg.DagsterInstance.get() as instance:
        steps, planning = _instrument(instance)
        profiler = None
        if profile_to:
            import cProfile

            profiler = cProfile.Profile(time.thread_time)  # the main thread's CPU (the event loop runs there)
        before, c0, t0 = maxrss_mb(), _cpu(), time.perf_counter()
        if profiler:
            profiler.enable()
        with ThreadCPU() as threads:
            result = fixtures.materialize_day(rs, DAY, instance=instance, raise_on_error=False)
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile_to)
        wall, cpu, peak = time.perf_counter() - t0, _cpu() - c0, maxrss_mb()
        events = len(instance.all_logs(result.run_id))
    rows = generations_rows(project)
    by_endpoint: dict[str, dict[str, int]] = {}
    for r in rows:
        counts = by_endpoint.setdefault(r["endpoint_id"], {})
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(json.dumps({"wall_s": wall, "success": result.success, "pipeline_cpu_s": cpu, "peak_rss_mb": peak,
                      "rss_before_mb": before, "steps": steps, "parts": _parts(steps, planning), "threads_cpu_s": threads.by_name(),
                      "statuses": status_counts(rows), "by_endpoint": by_endpoint, "event_log_entries": events}),
          flush=True)


# ------------------------------------------------------------------------------------------------ the parent
def _day(home: Path, root: Path, n: int, sim: SimProcess, archive: bool, profile_to: str = "") -> dict:
    from tests.support import fixtures

    project = fixtures.make_project(root, rows=[])
    mix = write_day(project, n)
    sim.reset()
    sim_cpu0 = sim.cpu_seconds()
    env = dict(os.environ, DAGSTER_HOME=str(home))
    out = subprocess.run([sys.executable, "-m", "benchmarks.p8_many_endpoints", "--child", json.dumps(project),
                          sim.base_url, "archive" if archive else "no-archive", profile_to],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, check=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    stats = sim.stats()
    doc.update(n=n, mix=mix, simulator_cpu_s=sim.cpu_seconds() - sim_cpu0, calls=queue_calls(stats),
               max_in_flight_seen=stats.get("max_in_flight_seen"), max_running_seen=stats.get("max_running_seen"),
               archive_mb=sum(f.stat().st_size for f in (root / "warehouse").rglob("*.mp4")) / 2**20)
    doc["cpu_ms_per_item"] = 1000 * doc["pipeline_cpu_s"] / n
    shutil.rmtree(root, ignore_errors=True)  # the archived videos: up to gigabytes
    return doc


def measure(n: int, archive: bool = True, profile_to: str = "") -> dict:
    """The day at N / 4 then at N (fresh interpreters, one simulator, one DAGSTER_HOME); per-item ratios."""
    small = max(1, n // 4)
    with tempfile.TemporaryDirectory(prefix="bench-p8-") as tmp, \
            SimProcess(run_latency=L, max_running=C, extra_args=["--quiet"]) as sim:
        home = Path(tmp) / "dagster_home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        base = _day(home, Path(tmp) / "small", small, sim, archive)
        big = _day(home, Path(tmp) / "big", n, sim, archive, profile_to)
        sim.reset()
        floor = run_floor(sim.base_url, small, IN_FLIGHT, MIX)  # the same calls and clips with bare httpx
    ratios = {"cpu_per_item": big["cpu_ms_per_item"] / base["cpu_ms_per_item"],
              "wall_per_item": (big["wall_s"] / n) / (base["wall_s"] / small)}
    for part in PARTS:
        for what in ("cpu_s", "wall_s"):
            a, b = base["parts"][part][what] / small, big["parts"][part][what] / n
            ratios[f"{part}_{what.removesuffix('_s')}_per_item"] = b / a if a > 0 else None
    return {"n": n, "small_n": small, "archive": archive, "small": base, "big": big, "ratios": ratios,
            "floor": floor}


def _per_item_ms(day: dict) -> dict[str, float]:
    return {p: 1000 * day["parts"][p]["cpu_s"] / day["n"] for p in PARTS}


def run(argv: list[str] | None = None) -> Result:
    mode, rest = parse_mode(argv)
    archive = "--no-archive" not in rest
    n = int(rest[rest.index("--n") + 1]) if "--n" in rest else N_FULL if mode == "full" else N_QUICK
    res = Result(NAME, mode, parameters={
        "n_items": n, "baseline_n_items": n // 4, "endpoints": {e: list(d) for e, d in MIX.items()},
        "default_endpoint": SORA + " (rows with endpoint_id null)", "account_concurrency": C,
        "max_concurrency": IN_FLIGHT, "run_latency_s": L, "simulator_max_running": C, "poll_interval_s": 0.1,
        "archive_videos": archive, "probe": True,
        "instance": "temp DAGSTER_HOME with the repo's dagster.yaml (SQLite storage on disk)",
        "process": "each day in a fresh interpreter (as a run worker is); CPU, wall and RSS counted from just "
                   "before the run; simulator in its own process (not counted)"})
    m = measure(n, archive, rest[rest.index("--profile") + 1] if "--profile" in rest else "")
    big, base, ratios = m["big"], m["small"], m["ratios"]
    ok = all(d["success"] and d["statuses"].get("completed", 0) == d["n"] for d in (big, base))
    res.numbers = {"n": n, "baseline_n": m["small_n"], "wall_s": rnd(big["wall_s"], 2),
                   "items_per_s": rnd(n / big["wall_s"], 1), "peak_rss_mb": rnd(big["peak_rss_mb"], 1),
                   "pipeline_cpu_s": rnd(big["pipeline_cpu_s"], 2), "cpu_ms_per_item": rnd(big["cpu_ms_per_item"]),
                   "cpu_ms_per_item_by_part": {p: rnd(v) for p, v in _per_item_ms(big).items()},
                   "baseline_cpu_ms_per_item": rnd(base["cpu_ms_per_item"]),
                   "baseline_cpu_ms_per_item_by_part": {p: rnd(v) for p, v in _per_item_ms(base).items()},
                   "ratios_n_over_baseline_per_item": {k: rnd(v) for k, v in ratios.items()},
                   "http_floor_cpu_ms_per_item": rnd(floor_ms := m["floor"]["cpu_ms_per_item"]),
                   "cpu_over_http_floor": rnd(big["cpu_ms_per_item"] / floor_ms), "http_floor": m["floor"],
                   "day": big, "baseline_day": base}
    total = big["pipeline_cpu_s"]
    # a part grows faster than the items when its cost per item rises with N; parts under 2% of the CPU are noise
    grown = [p for p in PARTS if big["parts"][p]["cpu_s"] >= 0.02 * total
             and (ratios[f"{p}_cpu_per_item"] or 0) > GROWTH]
    parts_note = ", ".join(f"{p} {1000 * big['parts'][p]['cpu_s'] / n:.2f} ms ({ratios[f'{p}_cpu_per_item'] or 0:.2f}×)"
                           for p in PARTS)
    res.check("P8-rss", f"peak RSS of the run worker, {n:,}-item day, 3 endpoints", rnd(big["peak_rss_mb"], 1),
              f"≤ {RSS_MB:g} MB", ok and big["peak_rss_mb"] <= RSS_MB, " MB",
              f"{big['rss_before_mb']:.0f} MB before the run; {m['small_n']:,} items: {base['peak_rss_mb']:.0f} MB")
    res.check("P8-cpu", "pipeline CPU per item (simulator excluded)", rnd(big["cpu_ms_per_item"], 2),
              f"≤ {CPU_MS:g} ms", ok and big["cpu_ms_per_item"] <= CPU_MS, " ms",
              f"{big['pipeline_cpu_s']:.0f} s CPU over {big['wall_s']:.0f} s wall; by part: {parts_note}"
              f"; simulator {big['simulator_cpu_s']:.0f} s CPU apart")
    floor = m["floor"]
    res.check("P8-floor", "the same calls with bare httpx: submit, status stream, result, video (CPU per item)",
              rnd(floor["cpu_ms_per_item"], 2), "report", None, " ms",
              f"{floor['n']:,} items, {floor['video_kb_per_item']:.0f} KB of video each, no ledger, file or Dagster: "
              f"the pipeline's CPU per item is {big['cpu_ms_per_item'] / floor['cpu_ms_per_item']:.2f}× this floor")
    res.check("P8-growth", f"CPU per item at {n:,} / at {m['small_n']:,} (whole run)", rnd(ratios["cpu_per_item"], 2),
              f"≤ {GROWTH:g} in every part (1 = linear)", ok and ratios["cpu_per_item"] <= GROWTH and not grown, "×",
              ("grows faster than the items: " + ", ".join(grown) + "; " if grown else "")
              + f"wall per item {ratios['wall_per_item']:.2f}×")
    res.check("P8-wall", f"wall time, {n:,}-item day", rnd(big["wall_s"], 1), "report", None, " s",
              f"{n / big['wall_s']:.0f} items/s; archive {'on' if archive else 'off'} "
              f"({big['archive_mb']:,.0f} MB of videos), probes on; {big['event_log_entries']} events")
    if not ok:
        res.notes.append(f"statuses {base['statuses']} / {big['statuses']}; success {base['success']}/{big['success']}")
    res.save(f"{n:,} items over 3 endpoints (archive {'on' if archive else 'off'}): wall {big['wall_s']:.0f} s, peak "
             f"RSS {big['peak_rss_mb']:.0f} MB, pipeline CPU {big['cpu_ms_per_item']:.2f} ms/item "
             f"({ratios['cpu_per_item']:.2f}× the {m['small_n']:,}-item day's per item)")
    return res


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        child(*argv[1:5])
    else:
        run(argv)


if __name__ == "__main__":
    main()
