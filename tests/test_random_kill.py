"""Never pay twice under random `kill -9`s from outside (the failpoint tests only crash where no submit is in flight).

Per seed: a day of many small items runs in a subprocess (`tests/run_day.py`, configured only by the environment,
as a user's run would be) against a simulator owned by this test process, so fal's side — and its count of
submits per prompt — outlives every kill. The test SIGKILLs the run's whole process group at a random moment drawn
from a seeded RNG, once or twice (each kill may land in a rerun), then reruns the day without a kill, and checks:

* fal saw at most one submit per item over all rounds (exactly one for every completed item), and the ledger
  holds exactly one attempt per item;
* every item ends completed (ledger COMPLETED, a `video_metadata` row, its archived video) or with a reason
  (ledger error message, a `failed_generations` row);
* the items a kill caught SUBMITTING (intent recorded, no request id; at most `submit_concurrency` per kill) are
  resolved from fal's request history by the rerun: found ones are resumed (completed, one submit), the others stay
  `unknown`; the final rerun resubmits none of them.

Each seed's line (what the kills hit, how many unknowns reached fal before the kill) is printed after the module.

A killed run's submit claim is held for `submit_lease_seconds` (`retry_total_timeout + 2 * request_timeout + 30`,
210 s by default): a rerun within the lease waits (BUSY) because the claim could belong to a live run elsewhere.
Instead of sleeping that out, the test — which knows the owner is dead, it reaped it — lets the ledger's own
lease rule expire those claims: `Ledger.claim` with a zero-length lease turns SUBMITTING into UNKNOWN (and decides
SKIP_UNKNOWN: nothing is submitted), exactly what the rerun's own claim does once the lease has run out.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sora_pipeline.ledger import Decision, Ledger, RequestState, ResubmitPolicy
from sora_pipeline.defs.resources import FalVideoResource
from sora_pipeline.warehouse.tables import read_day_partition
from tests.support.fixtures import DAY, catalog_rows, make_project
from tests.pipeline_helpers import subprocess_env

REPO = Path(__file__).resolve().parents[1]
SEEDS = range(6)
N_ITEMS = 32  # many small items: the submit phase (and its answer → mark_submitted windows) is a good part of a run
RUN_LATENCY = 0.05  # seconds per job at the simulator
# Where a kill's random delay is measured from, with odds, and how long its window is. The run proper (RUN_START →
# exit, ~0.9 s for 32 items on an idle machine) takes about 0.45 of the startup before it (imports, definitions);
# the generation step's submits take about 0.15 of it. Both stretch alike under load, so windows are expressed as
# a share of the startup this very round measured.
ANCHORS = (
    ("spawn", 0.15, None),  # uniform over SPAWN_WINDOW seconds after the spawn: imports, Dagster startup, anything
    ("run_start", 0.35, 0.5),  # after Dagster's RUN_START: resources, catalog slice, generation, tables, checks
    ("generation", 0.5, 0.25),  # after Dagster's STEP_START of `generations`: planning, submits and their records
)
SPAWN_WINDOW = 4.0
ROUND_TIMEOUT = 120.0
SUBMIT_CONCURRENCY = FalVideoResource.model_fields["submit_concurrency"].default  # what run_day.py's runs use

_summaries: list[str] = []
_caught: dict[int, int] = {}  # seed → items its kills caught SUBMITTING


@pytest.fixture(scope="module", autouse=True)
def _report_unknowns(request):
    """After the module: one line per seed on the terminal (did any kill land between submit and record?), and —
    when every seed ran — at least one seed must have caught an item mid-submit, or the window went untested."""
    yield
    if len(_caught) == len(SEEDS):
        assert any(_caught.values()), f"no seed's kill caught an item between submit and record: {_caught}"
    plugins = request.config.pluginmanager
    reporter, capman = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")
    if reporter is not None and _summaries:
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            reporter.ensure_newline()
            for line in _summaries:
                reporter.write_line(f"random-kill: {line}")
    _summaries.clear()


@dataclass
class Round:
    label: str
    plan: str
    returncode: int | None = None
    killed: bool = False
    startup: float | None = None  # spawn → RUN_START (seconds)
    generation_at: float | None = None  # spawn → Dagster's STEP_START of the `generations` step
    killed_after: float | None = None  # spawn → SIGKILL
    elapsed: float = 0.0
    stdout: str = field(default="", repr=False)
    stderr: str = field(default="", repr=False)
    submitting_at_kill: list[str] = field(default_factory=list)  # item ids caught between claim and recorded id
    reached_fal: list[str] = field(default_factory=list)  # … of which fal had recorded the submit
    submits_before: int = 0
    submits_after: int = 0
    log_path: Path | None = None  # the round's full stdout + stderr

    def brief(self) -> str:
        if not self.killed:
            return f"{self.plan}: finished first (rc {self.returncode}, {self.elapsed:.2f}s)"
        where = (f"{self.killed_after - self.generation_at:+.2f}s from the generation step"
                 if self.generation_at is not None else f"{self.killed_after:.2f}s after spawn, before it")
        return (f"{self.plan}: killed {where}, submits {self.submits_before}→{self.submits_after}, "
                f"{len(self.submitting_at_kill)} caught SUBMITTING ({len(self.reached_fal)} already at fal)")

    def describe(self, tail: int = 4000) -> str:
        head = (f"--- {self.label}: {self.brief()}; rc={self.returncode} startup={self.startup} "
                f"generation_at={self.generation_at} killed_after={self.killed_after} "
                f"submitting_at_kill={self.submitting_at_kill} reached_fal={self.reached_fal} log={self.log_path}")
        return f"{head}\n[stdout]\n{self.stdout[-tail:]}\n[stderr]\n{self.stderr[-tail:]}"


def run_env(project: dict, sim) -> dict:
    env = subprocess_env(project, sim, PYTHONUNBUFFERED="1")
    return {k: v for k, v in env.items() if not k.startswith("DAGSTER_")}


def run_round(rnd: Round, env: dict, sim, *, kill: tuple[str, float] | None) -> None:
    """One run of the day. `kill=(anchor, fraction)`: SIGKILL its process group at `fraction` of the anchor's
    window after the anchor (see ANCHORS). A run that finishes first is simply not killed."""
    rnd.submits_before = sim.stats()["submits"]
    lines: list[str] = []
    marks: dict[str, float] = {}
    seen = threading.Event()
    wanted = {"run_start": " - RUN_START - ", "generation": 'STEP_START - Started execution of step "generations"'}
    spawned = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/run_day.py"), DAY], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    out: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append(line)
            for name, marker in wanted.items():
                if name not in marks and marker in line:
                    marks[name] = time.monotonic()
                    seen.set()

    readers = [threading.Thread(target=read_stderr, daemon=True),
               threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)]
    for t in readers:
        t.start()
    try:
        if kill is not None:
            anchor, fraction = kill
            if anchor == "spawn":
                at = spawned + fraction * SPAWN_WINDOW
            else:
                while anchor not in marks and proc.poll() is None and time.monotonic() - spawned < ROUND_TIMEOUT:
                    seen.wait(0.01)
                    seen.clear()
                share = dict((a, w) for a, _, w in ANCHORS)[anchor]
                startup = marks.get("run_start", spawned) - spawned
                at = marks[anchor] + fraction * share * startup if anchor in marks else time.monotonic()
            while proc.poll() is None and (left := at - time.monotonic()) > 0:
                time.sleep(min(left, 0.05))
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                    rnd.killed = True
                    rnd.killed_after = time.monotonic() - spawned
        try:
            proc.wait(timeout=max(1.0, ROUND_TIMEOUT - (time.monotonic() - spawned)))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rnd.plan += " [TIMED OUT: killed by the test]"
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for t in readers:
            t.join(timeout=10)
    rnd.startup = round(marks["run_start"] - spawned, 2) if "run_start" in marks else None
    rnd.generation_at = round(marks["generation"] - spawned, 2) if "generation" in marks else None
    rnd.returncode = proc.returncode
    rnd.elapsed = time.monotonic() - spawned
    rnd.stdout, rnd.stderr = "".join(out), "".join(lines)
    if rnd.log_path is not None:
        rnd.log_path.write_text(f"[stdout]\n{rnd.stdout}\n[stderr]\n{rnd.stderr}")
    rnd.submits_after = sim.stats()["submits"]


def expire_dead_claims(ledger_url: str) -> list[str]:
    """Item ids whose attempt a kill left SUBMITTING (claimed, submit maybe sent, no request id recorded). Their
    owner is dead: expire its lease through the ledger's own rule (→ UNKNOWN, SKIP_UNKNOWN, nothing submitted)."""
    caught = []
    dead_owner_policy = ResubmitPolicy(submit_lease_seconds=1e-9)
    with Ledger.open(ledger_url) as ledger:
        for entry in ledger.entries_for_day(DAY):
            if entry.state == RequestState.SUBMITTING:
                assert entry.request_id is None, entry
                decision, after = ledger.claim(entry.request_key, owner="test-random-kill-lease-expiry",
                                               policy=dead_owner_policy)
                assert decision == Decision.SKIP_UNKNOWN and after.state == RequestState.UNKNOWN, (decision, after)
                assert after.attempt == entry.attempt, "expiring a claim must not start an attempt"
                caught.append(entry.item_id)
    return caught


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", SEEDS)
def test_random_kill_9_then_rerun_never_pays_twice(tmp_path, make_simulator, seed):
    rng = random.Random(f"sora-random-kill:{seed}")
    # each submit's answer takes 0.1 s (the job exists meanwhile): kills in the generation window can land between
    # fal's accepting a request and the ledger recording its id
    sim = make_simulator(run_latency=RUN_LATENCY, faults={"slow": 1.0}, fault_calls={"submit"}, slow_seconds=0.1)
    rows = catalog_rows(n=N_ITEMS)
    prompt_of = {r["item_id"]: r["prompt"] for r in rows}
    project = make_project(tmp_path, rows)
    env = run_env(project, sim)

    rounds: list[Round] = []
    caught: dict[str, str] = {}  # item id -> label of the round whose kill caught it SUBMITTING
    for k in range(rng.choice((1, 2))):
        anchor = rng.choices([a for a, _, _ in ANCHORS], weights=[w for _, w, _ in ANCHORS])[0]
        fraction = rng.random()
        rnd = Round(f"seed {seed} round {k + 1}", f"SIGKILL at {fraction:.3f} of the {anchor} window",
                    log_path=tmp_path / f"round-{k + 1}.log")
        rounds.append(rnd)
        run_round(rnd, env, sim, kill=(anchor, fraction))
        # every planned kill happens (the run is longer than the windows the kill is drawn from) and the run dies
        # of it (or had just exited cleanly)
        assert rnd.killed, f"the planned kill did not happen: the run ended first\n{rnd.describe()}"
        assert rnd.returncode in (0, -signal.SIGKILL), rnd.describe()
        rnd.submitting_at_kill = expire_dead_claims(project["ledger_url"])
        # claim → submit → record id is one critical section under `submit_concurrency`: a crash leaves at most
        # that many attempts without a recorded id
        assert len(rnd.submitting_at_kill) <= SUBMIT_CONCURRENCY, rnd.describe()
        for item in rnd.submitting_at_kill:
            caught.setdefault(item, rnd.label)
        per_prompt = Counter(sim.stats()["submits_by_prompt"])
        rnd.reached_fal = [i for i in rnd.submitting_at_kill if per_prompt[prompt_of[i]]]
        assert max(per_prompt.values(), default=0) <= 1, \
            (f"PAID TWICE after {rnd.label}: {per_prompt.most_common(3)}\n" + "\n".join(r.describe() for r in rounds))

    before_final = Counter(sim.stats()["submits_by_prompt"])
    final = Round(f"seed {seed} final rerun", "no kill", log_path=tmp_path / "final.log")
    rounds.append(final)
    run_round(final, env, sim, kill=None)
    transcript = "\n".join(r.describe() for r in rounds)

    def check(ok: bool, message: str) -> None:
        assert ok, f"seed {seed}: {message}\n{transcript}"

    check(final.returncode == 0, "the rerun without a kill failed")
    per_prompt = Counter(sim.stats()["submits_by_prompt"])
    check(set(per_prompt) <= set(prompt_of.values()), f"submits for prompts not in the catalog: {per_prompt}")
    check(max(per_prompt.values(), default=0) <= 1, f"PAID TWICE: {per_prompt.most_common(5)}")

    with Ledger.open(project["ledger_url"]) as ledger:
        entries = {e.item_id: e for e in ledger.entries_for_day(DAY)}
        histories = {item: ledger.history(e.request_key) for item, e in entries.items()}
    check(sorted(entries) == sorted(prompt_of), f"ledger items {sorted(entries)}")
    states = Counter(e.state.value for e in entries.values())
    check(set(states) <= {"completed", "unknown"}, f"unexpected final ledger states {states}")
    for item, history in histories.items():
        check(len(history) == 1, f"{item}: {len(history)} attempts {[a.state.value for a in history]}")

    completed = {i for i, e in entries.items() if e.state == RequestState.COMPLETED}
    unknown = {i for i, e in entries.items() if e.state == RequestState.UNKNOWN}
    for item in completed:
        check(per_prompt[prompt_of[item]] == 1, f"{item} completed with {per_prompt[prompt_of[item]]} submits")
    for item in unknown:
        check(bool(entries[item].error_message), f"{item} is unknown without a reason")
    # an item a kill caught SUBMITTING is resolved from fal's request history by the rerun: the ones whose submit
    # reached fal are found there and resumed (completed, one submit); the others stay unknown (too recent to
    # prove absent); none is submitted again
    # (a request fal accepted but that has not ended yet is not listed by the history: it stays unknown too)
    reached = {i for i in caught if before_final[prompt_of[i]] == 1}
    check(unknown <= set(caught), f"unknown {sorted(unknown)} were not caught by a kill {caught}")
    check(set(caught) - reached <= unknown, f"caught items never at fal {sorted(set(caught) - reached)} not unknown")
    check(set(caught) - unknown <= completed, f"caught items {sorted(set(caught) - unknown)} neither unknown nor done")
    for item in caught:  # the final rerun did not submit them again
        p = prompt_of[item]
        check(per_prompt[p] == before_final[p], f"the final rerun resubmitted caught {item}")

    generations = {g["item_id"]: g for g in read_day_partition(project["warehouse_uri"], "generations",
                                                                  DAY).to_pylist()}
    check(sorted(generations) == sorted(prompt_of), f"generations rows {sorted(generations)}")
    for item, g in generations.items():
        if item in completed:
            check(g["status"] == "completed", f"{item}: ledger completed, table says {g['status']}")
        else:
            check(g["status"] == "unknown" and g["decision"] == "skipped" and bool(g["error_message"]),
                  f"{item}: {g['status']} / {g['decision']} / {g['error_message']!r}")
    failed = read_day_partition(project["warehouse_uri"], "failed_generations", DAY)
    failed = {f["item_id"]: f for f in (failed.to_pylist() if failed is not None else [])}
    check(set(failed) == unknown, f"failed_generations {sorted(failed)} != unknown {sorted(unknown)}")
    for item, f in failed.items():
        check(bool(f["reason"]) and f["request_key"] in f["reason"], f"{item}: reason {f['reason']!r}")
    videos = read_day_partition(project["warehouse_uri"], "video_metadata", DAY)
    videos = {v["item_id"]: v for v in (videos.to_pylist() if videos is not None else [])}
    check(set(videos) == completed, f"video_metadata {sorted(videos)} != completed {sorted(completed)}")
    for item, v in videos.items():
        check(os.path.getsize(v["archive_uri"]) == v["file_size"], f"{item}: archived video size")

    _caught[seed] = len(caught)
    sent = sorted(i for i in unknown if per_prompt[prompt_of[i]] == 1)
    summary = (f"seed {seed}: " + "; ".join(r.brief() for r in rounds[:-1])
               + f"; final rerun {final.elapsed:.2f}s: {len(completed)} completed, {len(unknown)} unknown"
               + (f" ({len(sent)} of them submitted at fal before the kill: {sent})" if unknown else ""))
    print(summary)
    _summaries.append(summary)
