"""Shared pieces of the benchmarks: machine/version info, result files, an out-of-process simulator, day catalogs,
Dagster materializations with per-step timings, and peak-RSS measurement.

Everything talks to loopback only: the simulator runs as `python -m sora_pipeline.simulator` on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results"
CACHE = ROOT / ".cache"
SIM_VIDEO_CACHE = CACHE / "sim-videos"
DAY = "2026-11-20"
WARMUP_DAY = "2026-11-19"

# a benchmark never reaches the real service, nor reads a developer's key or ledger
for _name in ("FAL_KEY", "SORA_FAL_QUEUE_URL", "SORA_OPENAI_API_KEY", "SORA_LEDGER_URL", "SORA_CATALOG_URI",
              "SORA_WAREHOUSE_URI", "SORA_MAX_CONCURRENCY", "SORA_POLL_INTERVAL"):
    os.environ.pop(_name, None)
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost,::1")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost,::1")

VERSIONED = ("sora_pipeline", "dagster", "pyarrow", "pandas", "numpy", "av", "httpx", "starlette", "uvicorn",
             "sqlalchemy", "pydantic", "fsspec", "psutil", "fal-client")


# ---------------------------------------------------------------------------------------------- reporting
def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "implementation":
        platform.python_implementation(), "platform": platform.platform(), "machine": platform.machine(),
        "processor": platform.processor() or None,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        info["cpu_model"] = names[0] if names else None
    except OSError:
        pass
    try:
        import psutil

        info["memory_total_mb"] = round(psutil.virtual_memory().total / 2**20)
        info["cpu_affinity"] = len(psutil.Process().cpu_affinity())
    except Exception:
        pass
    return info


def versions(extra: tuple[str, ...] = ()) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in VERSIONED + extra:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state() -> dict[str, Any]:
    """The commit measured, and files of the code under test that differ from it (others edit the tree too)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "sora_pipeline", "pyproject.toml").splitlines()
             if len(line) > 3]
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted_changes_in": dirty}


@dataclass
class Check:
    """One row of the results table: a figure, its target, and whether it holds."""

    id: str
    figure: str
    value: float | int | None
    target: str
    passed: bool | None
    unit: str = ""
    note: str = ""

    def shown(self) -> str:
        if self.value is None:
            return "n/a"
        if isinstance(self.value, float):
            v = f"{self.value:.3g}" if abs(self.value) < 100 else f"{self.value:,.0f}"
        else:
            v = f"{self.value:,}"
        return f"{v}{self.unit}"


@dataclass
class Result:
    name: str
    mode: str
    parameters: dict[str, Any] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    load_start: list[float] = field(default_factory=lambda: loadavg())

    def check(self, id: str, figure: str, value: Any, target: str, passed: bool | None, unit: str = "",
              note: str = "") -> Check:
        c = Check(id, figure, value, target, passed, unit, note)
        self.checks.append(c)
        return c

    def save(self, summary: str) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        doc = {
            "name": self.name, "mode": self.mode,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "benchmark_seconds": round(time.time() - self.started, 2),
            "machine": machine(), "load_average_at_start": self.load_start, "load_average_at_end": loadavg(),
            "versions": versions(), "code": git_state(), "parameters": self.parameters,
            "numbers": self.numbers,
            "checks": [vars(c) for c in self.checks], "notes": self.notes, "summary": summary,
        }
        doc["run_id"] = os.environ.get("BENCH_RUN_ID")
        path = result_path(self.name, self.mode)
        path.write_text(json.dumps(_jsonable(doc), indent=2, sort_keys=False) + "\n")
        verdict = ", ".join(f"{c.id} {'PASS' if c.passed else 'FAIL' if c.passed is False else 'info'}"
                            for c in self.checks)
        print(f"[{self.name}] {summary} ({verdict})", flush=True)
        return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def rnd(x: float | None, n: int = 3) -> float | None:
    return None if x is None else round(float(x), n)


# ------------------------------------------------------------------------------------------------- memory
def maxrss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    `VmHWM` from /proc/self/status (reset by exec), not `ru_maxrss`: Linux carries `ru_maxrss` over from the parent
    across fork + exec, so a child of a big parent would report the parent's size."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RSSSampler:
    """Samples this process's RSS in a thread (to show the curve; `maxrss_mb()` is the exact peak)."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self._t0, self._proc.memory_info().rss / 2**20))
            self._stop.wait(self.interval)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return max((s[1] for s in self.samples), default=0.0)

    def curve(self, points: int = 20) -> list[list[float]]:
        if not self.samples:
            return []
        step = max(1, len(self.samples) // points)
        return [[round(t, 1), round(m, 1)] for t, m in self.samples[::step]]


# ---------------------------------------------------------------------------------------------- projects
# catalogs, images and resources come from the fixtures the tests use too (tests.support.fixtures)
IMAGE_NAME = "land.png"


def write_image(folder: Path) -> Path:
    """The benchmarks' one small landscape PNG as `<folder>/land.png` (`folder` is an `images/` directory): every
    item uses it, so the simulator encodes one clip."""
    from tests.support.fixtures import write_images

    assert folder.name == "images", folder
    write_images(str(folder.parent), ("land",))
    return folder / IMAGE_NAME


def day_rows(day: str, n: int, **row_kw) -> list[dict]:
    from tests.support.fixtures import uniform_rows

    return uniform_rows(day, n, **row_kw)


def make_project(root: Path, days: dict[str, int], **row_kw) -> dict[str, str]:
    """A catalog with `days[day]` items per day (identical image and parameters), a warehouse, a SQLite ledger."""
    from tests.support import fixtures

    return fixtures.make_project(root, [r for day, n in days.items() for r in day_rows(day, n, **row_kw)])


def resources(sim_url: str, project: dict, fal_class: type | None = None, **fal_overrides) -> dict:
    """The shared fixtures' resources (`fal_class`: a subclass of `FalVideoResource` to use instead, same fields).

    The simulated account has C = 50 (the simulators' `max_running` here), so its in-flight cap is 2C = 100: without
    `account_concurrency` the resource's default C = 8 would cap every run at 16 in flight."""
    from tests.support import fixtures

    res = fixtures.resources(sim_url, project, **({"poll_interval": 0.1, "max_concurrency": 50,
                                                  "account_concurrency": 50, "retry_total_timeout": 60.0}
                                                 | fal_overrides))
    if fal_class is not None:
        fal = res["fal"]
        res["fal"] = fal_class(**{name: getattr(fal, name) for name in type(fal).model_fields})
    return res


@dataclass
class RunTiming:
    wall: float
    success: bool
    run_id: str
    steps: dict[str, float]  # step key → seconds from STEP_START to STEP_SUCCESS/FAILURE
    run_span: float | None  # RUN_START → RUN_SUCCESS from the event log
    events: int
    events_by_type: dict[str, int]
    cpu_s: float = 0.0  # CPU time of this (pipeline) process during the run, all threads
    result: Any = None

    @property
    def steps_total(self) -> float:
        return sum(self.steps.values())

    def step(self, name: str) -> float | None:
        for key, secs in self.steps.items():
            if key == name or key.startswith(name):
                return secs
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"wall_s": rnd(self.wall), "success": self.success, "run_span_s": rnd(self.run_span),
                "steps_s": {k: rnd(v) for k, v in self.steps.items()}, "steps_total_s": rnd(self.steps_total),
                "framework_overhead_s": rnd(self.wall - self.steps_total), "pipeline_cpu_s": rnd(self.cpu_s),
                "pipeline_cpu_share_of_wall": rnd(self.cpu_s / self.wall), "event_log_entries": self.events,
                "events_by_type": self.events_by_type}


def materialize_day(res: dict, day: str = DAY, run_config: dict | None = None) -> RunTiming:
    """`dagster.materialize` of the pipeline's assets and checks for one day on a fresh ephemeral instance."""
    import dagster as dg

    from tests.support import fixtures

    instance = dg.DagsterInstance.ephemeral()
    c0, t0 = _cpu(), time.perf_counter()
    result = fixtures.materialize_day(res, day, run_config, instance=instance, raise_on_error=False)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    logs = instance.all_logs(result.run_id)
    starts: dict[str, float] = {}
    steps: dict[str, float] = {}
    by_type: dict[str, int] = {}
    run_start = run_end = None
    for entry in logs:
        ev = entry.dagster_event
        kind = ev.event_type_value if ev else "LOG_MESSAGE"
        by_type[kind] = by_type.get(kind, 0) + 1
        if ev is None:
            continue
        if kind == "STEP_START":
            starts[ev.step_key] = entry.timestamp
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and ev.step_key in starts:
            steps[ev.step_key] = entry.timestamp - starts[ev.step_key]
        elif kind in ("RUN_START", "PIPELINE_START"):
            run_start = entry.timestamp
        elif kind in ("RUN_SUCCESS", "RUN_FAILURE", "PIPELINE_SUCCESS", "PIPELINE_FAILURE"):
            run_end = entry.timestamp
    span = run_end - run_start if run_start and run_end else None
    return RunTiming(wall=wall, success=result.success, run_id=result.run_id, steps=steps, run_span=span,
                     events=len(logs), events_by_type=dict(sorted(by_type.items())), cpu_s=cpu, result=result)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def generations_rows(project: dict, day: str = DAY) -> list[dict]:
    from sora_pipeline.warehouse.tables import read_day_partition

    table = read_day_partition(project["warehouse_uri"], "generations", day)
    return table.to_pylist() if table is not None else []


def status_counts(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


def parse_mode(argv: list[str] | None) -> tuple[str, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    mode = "full" if "--full" in argv else "quick"
    return mode, [a for a in argv if a not in ("--full", "--quick")]


def result_path(name: str, mode: str = "quick") -> Path:
    """`results/<name>.json` (quick mode, what `make bench` writes) or `results/<name>.full.json` (`--full`)."""
    return RESULTS / (f"{name}.json" if mode != "full" else f"{name}.full.json")


def same_run_result(name: str, mode: str = "quick") -> dict | None:
    """The result file of `name` if it was written by this `python -m benchmarks` invocation (same BENCH_RUN_ID)."""
    run_id = os.environ.get("BENCH_RUN_ID")
    path = result_path(name, mode)
    if not run_id or not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        return None
    return doc if doc.get("run_id") == run_id else None


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
