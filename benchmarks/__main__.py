"""`python -m benchmarks [--full] [p1 p1b p1c p2 p3 p4 p5 scaling p9 p7 p8 p6 ...]` — run the benchmarks (all by default).

Each benchmark runs in its own fresh interpreter (clean RSS, no state shared between them); their stdout (one
summary line each) is shown, their logs (Dagster's console output) go to `benchmarks/.cache/logs/<name>.log`.
Results: `benchmarks/results/<name>.json` and the table of the run in `benchmarks/results/summary.md`
(`<name>.full.json` and `summary.full.md` with `--full`).
Quick mode (default) keeps `make bench` to about ten minutes; `--full` runs the big sizes (P5 with 10,000 items,
scaling up to 10,000, P8 with 40,000 items, more repetitions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

from benchmarks.common import CACHE, REPO, RESULTS, loadavg, machine, result_path

BENCHMARKS = {  # alias → module (in running order: P1 before P1b/P1c, which reuse its figures)
    "p3": "p3_probe",
    "p2": "p2_catalog",
    "p1": "p1_day",
    "p1b": "p1b_sequential",
    "p1c": "p1c_calls",
    "p4": "p4_rematerialize",
    "p5": "p5_memory",
    "scaling": "scaling",
    "p9": "p9_rejections",
    "p7": "p7_reconcile",
    "p8": "p8_many_endpoints",
    "p6": "p6_backfill",  # last: it runs the Dagster daemon, a code server and one process per day
}


def _select(names: list[str]) -> list[str]:
    if not names or names == ["all"]:
        return list(BENCHMARKS.values())
    modules = []
    for name in names:
        key = name.lower().removeprefix("benchmarks.")
        module = BENCHMARKS.get(key) or (key if key in BENCHMARKS.values() else None)
        if module is None:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
        modules.append(module)
    order = list(BENCHMARKS.values())
    return sorted(dict.fromkeys(modules), key=order.index)


def table(rows: list[dict]) -> str:
    lines = ["| id | figure | value | target | result | note |", "|---|---|---|---|---|---|"]
    for c in rows:
        verdict = {True: "PASS", False: "**FAIL**", None: "info"}[c["passed"]]
        value = c["value"]
        if isinstance(value, float):
            value = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        shown = "n/a" if value is None else f"{value}{c.get('unit', '')}"
        lines.append(f"| {c['id']} | {c['figure']} | {shown} | {c['target']} | {verdict} | {c.get('note', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in argv if a.startswith("--")]
    unknown = [f for f in flags if f not in ("--full", "--quick")]
    if unknown:
        raise SystemExit(f"unknown option(s) {unknown}; use --full or --quick")
    modules = _select([a for a in argv if not a.startswith("--")])
    mode = "full" if "--full" in flags else "quick"
    run_id = uuid.uuid4().hex[:12]
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, BENCH_RUN_ID=run_id, PYTHONUNBUFFERED="1")
    print(f"benchmarks ({mode} mode, run {run_id}): {', '.join(modules)}; machine: {machine().get('cpu_count')} CPUs, "
          f"load {loadavg()}", flush=True)
    started = time.perf_counter()
    failed_to_run = []
    durations = {}
    for module in modules:
        t0 = time.perf_counter()
        with open(logs / f"{module}.log", "w") as log:
            proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", f"--{mode}"], cwd=REPO, env=env,
                                  stderr=log)
        durations[module] = round(time.perf_counter() - t0, 1)
        if proc.returncode != 0:
            failed_to_run.append(module)
            print(f"[{module}] ERROR: exit {proc.returncode}; see {logs / (module + '.log')}", flush=True)
    checks, per_module = [], {}
    for module in modules:
        path = result_path(module, mode)
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        if doc.get("run_id") != run_id:
            continue
        per_module[module] = doc
        checks += doc["checks"]
    total = time.perf_counter() - started
    text = table(checks)
    print("\n" + text + "\n")
    failed = [c["id"] for c in checks if c["passed"] is False]
    print(f"{len(checks)} figures, {sum(c['passed'] is True for c in checks)} pass, {len(failed)} fail"
          + (f" ({', '.join(failed)})" if failed else "") + f"; {total:.0f} s"
          + (f"; did not run: {', '.join(failed_to_run)}" if failed_to_run else ""))
    summary = RESULTS / ("summary.md" if mode == "quick" else "summary.full.md")
    m = machine()
    summary.write_text(
        f"# Benchmark results ({mode} mode)\n\nRun `{run_id}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f"; {m.get('cpu_count')} CPUs ({m.get('cpu_model')}), Python {m.get('python')}, {m.get('platform')}; "
        f"load average at the end {loadavg()}; {total:.0f} s in all "
        f"({', '.join(f'{k} {v:g} s' for k, v in durations.items())}).\n\n{text}\n\n"
        + "\n".join(f"- `{k}`: {v['summary']}" for k, v in per_module.items()) + "\n")
    return 1 if failed_to_run else 0


if __name__ == "__main__":
    sys.exit(main())
