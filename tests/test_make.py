"""The first hour of a new user: `make help`, `make ui` that stops when asked, and docs/reference.md complete and
in step with the code (every table column, asset, check, job, environment variable; generated parts current)."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"
SECRETS = ("FAL_KEY", "SORA_FAL_QUEUE_URL", "SORA_OPENAI_API_KEY", "SORA_LEDGER_URL", "SORA_WEBHOOK_URL")


def _phony_targets() -> list[str]:
    m = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "Makefile has no .PHONY line"
    return m.group(1).split()


def _env(**extra: str) -> dict[str, str]:
    """The environment for a `make` of its own: no fal/SORA settings, nothing of an outer `make test`."""
    env = {k: v for k, v in os.environ.items()
           if k not in SECRETS and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    env.update(extra)
    return env


def _make(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


# -- make help ----------------------------------------------------------------------------------------------------

def test_make_help_is_the_default_target_and_describes_every_target():
    default, explicit = _make(), _make("help")
    assert default.returncode == 0 and explicit.returncode == 0, default.stderr + explicit.stderr
    assert default.stdout == explicit.stdout
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^  (\S+)\s+(\S.*)$", default.stdout, re.M)}
    targets = _phony_targets()
    assert {"help", "install", "demo", "test", "ui", "stop-ui", "ui-check", "bench", "clean"} <= set(targets)
    missing = [t for t in targets if t not in lines]
    assert not missing, f"`make help` does not describe {missing}:\n{default.stdout}"
    assert all(len(text) > 10 for text in lines.values()), default.stdout


# -- docs/reference.md ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def defs():
    from sora_pipeline.definitions import defs

    return defs


@pytest.fixture(scope="module")
def reference_tables():
    spec = importlib.util.spec_from_file_location("reference_tables", ROOT / "scripts" / "reference_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _section(text: str, name: str) -> str:
    m = re.search(rf"<!-- generated:{name} [^\n]*-->\n(.*?)<!-- /generated:{name} -->", text, re.S)
    assert m, f"docs/reference.md has no generated:{name} section"
    return m.group(1)


def _documented_columns(text: str) -> dict[str, list[str]]:
    """table → the column names listed (first cell of each row) under its `#### `table`` heading."""
    out: dict[str, list[str]] = {}
    for block in re.split(r"^#### ", _section(text, "columns"), flags=re.M)[1:]:
        name = re.match(r"`([^`]+)`", block).group(1)
        out[name] = re.findall(r"^\| `([^`]+)` \|", block, re.M)
    return out


def test_reference_lists_every_column_of_every_table_schema(defs, reference_tables):
    documented = _documented_columns(REFERENCE.read_text())
    specs = reference_tables.table_specs(defs)
    assert set(specs) >= {"catalog_items", "rejected_items", "generations", "failed_generations", "video_metadata",
                          "generation_daily_stats", "generation_summary"}
    problems = []
    for name, spec in specs.items():
        want = [c for c, _, _ in reference_tables.schema_columns(spec)]
        got = documented.get(name)
        if got is None:
            problems.append(f"{name}: not in docs/reference.md")
        elif got != want:
            problems.append(f"{name}: missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}"
                            + ("" if set(got) != set(want) else ", order differs"))
    problems += [f"{name}: documented but not a table of the code location" for name in set(documented) - set(specs)]
    assert not problems, "; ".join(problems) + " — run `make reference`"


def test_reference_generated_sections_match_the_code(defs, reference_tables):
    text = REFERENCE.read_text()
    for name in reference_tables.FAST_SECTIONS:
        assert _section(text, name).strip() == reference_tables.BUILDERS[name](defs).strip(), \
            f"docs/reference.md section {name} is stale: run `make reference`"
    lineage = _section(text, "lineage")
    for name in reference_tables.table_specs(defs):
        assert f"#### `{name}`" in lineage, f"no column lineage entry for {name}: run `make reference`"


def test_reference_names_every_asset_check_job_target_and_environment_variable(defs):
    text = REFERENCE.read_text()
    names = [spec.key.to_user_string() for spec in defs.resolve_all_asset_specs()]
    names += [spec.name for checks in defs.asset_checks for spec in checks.check_specs]
    names += [job.name for job in defs.jobs or ()] + [s.name for s in defs.schedules or ()]
    names += [s.name for s in defs.sensors or ()]
    names += [f"make {t}" for t in _phony_targets()]
    found = set()
    for path in (ROOT / "sora_pipeline").rglob("*.py"):
        found |= set(re.findall(r"\b(SORA_[A-Z0-9_]*[A-Z0-9]|FAL_KEY)\b", path.read_text()))
    assert {"FAL_KEY", "SORA_MAX_VIDEO_BYTES", "SORA_PRICE_TABLE", "SORA_WEBHOOK_URL"} <= found
    names += sorted(found) + ["SORA_TEST_POSTGRES_URL", "DAGSTER_HOME"]
    missing = [n for n in names if f"`{n}`" not in text and f"`{n} " not in text]
    assert not missing, f"docs/reference.md does not mention {missing}"


def test_reference_links_stay_inside_the_repo():
    text = REFERENCE.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", text, re.M)}
    problems = []
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if target.startswith("#"):
            if target[1:] not in anchors:
                problems.append(f"anchor {target}")
        elif not (ROOT / "docs" / target).resolve().exists():
            problems.append(f"link {target}")
    for url in re.findall(r"<(https?://[^>]+)>", text):
        if not url.startswith("http://127.0.0.1"):
            problems.append(f"external URL {url}")
    for path in set(re.findall(r"\b((?:docs|scripts|tests|deploy|benchmarks)/[\w./-]+\.(?:md|py|yaml))\b", text)):
        if not (ROOT / path).exists():
            problems.append(f"path {path}")
    assert not problems, problems


# -- make ui -------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _session_processes(sids: set[int], pgids: set[int]) -> list[str]:
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getsid(p.pid) in sids or os.getpgid(p.pid) in pgids:
                out.append(f"{p.pid}: {' '.join(p.info['cmdline'] or [])[:160]}")
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c", "stop-ui"])
@pytest.mark.timeout(300)
def test_make_ui_stops_every_process(tmp_path, how):
    """`make ui PORT=…` serves the UI without the misleading dagster.yaml warning, and SIGTERM to make, Ctrl-C
    (SIGINT to make's process group) or `make stop-ui` leaves no process of it running within 30 s."""
    import psutil

    port = _free_port()
    env = _env(DAGSTER_HOME=str(tmp_path / "home"), SORA_WAREHOUSE_URI=str(tmp_path / "warehouse"))
    log = tmp_path / "make-ui.log"
    # a terminal's foreground job has SIGINT at its default; a job started from a script (`make ui &`, CI, an IDE)
    # inherits it ignored — the case in which a bare `dagster dev` ignored SIGTERM too
    sigint = signal.SIG_DFL if how == "ctrl-c" else signal.SIG_IGN
    with open(log, "w") as out:
        make = subprocess.Popen(["make", "--no-print-directory", "ui", f"PORT={port}"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    sids, pgids, tracked = {make.pid}, {make.pid}, {}
    try:
        deadline = time.monotonic() + 120  # a first `make` may reinstall .venv; dagster dev itself takes ~15 s
        while not _answers(f"http://127.0.0.1:{port}/server_info"):
            assert make.poll() is None, f"make ui exited with {make.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no /server_info on port {port}:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        for child in psutil.Process(make.pid).children(recursive=True):
            try:
                tracked[child.pid] = (child.create_time(), " ".join(child.cmdline())[:160])
                sids.add(os.getsid(child.pid))
                pgids.add(os.getpgid(child.pid))
            except (ProcessLookupError, psutil.Error):
                pass
        assert any("dagster" in cmd for _, cmd in tracked.values()), tracked
        if how == "sigterm":
            make.send_signal(signal.SIGTERM)
        elif how == "ctrl-c":
            os.killpg(make.pid, signal.SIGINT)  # what a terminal does: the foreground group gets SIGINT
        else:
            stopped = subprocess.run(["make", "--no-print-directory", "stop-ui"], cwd=ROOT, env=env,
                                     capture_output=True, text=True, timeout=60)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        signalled = time.monotonic()
        try:
            make.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        left: list[str] = ["?"]
        while time.monotonic() - signalled < 30:
            left = _session_processes(sids, pgids)
            left += [f"{pid}: {cmd}" for pid, (created, cmd) in tracked.items()
                     if psutil.pid_exists(pid) and _same(pid, created)]
            if not left and make.poll() is not None:
                break
            time.sleep(0.5)
        assert make.poll() is not None, f"make ui still running 30 s after {how}:\n{log.read_text()[-3000:]}"
        assert not left, f"still running 30 s after {how}: {left}\n{log.read_text()[-3000:]}"
        text = log.read_text()
        assert "will not be used" not in text, text[-3000:]
        assert "Serving dagster-webserver" in text, text[-3000:]
        assert not (tmp_path / "home" / "ui.pid").exists()
    finally:  # never leave a server behind, even when the test failed
        for pid, (created, _) in tracked.items():
            if _same(pid, created):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        if make.poll() is None:
            make.kill()
            make.wait(timeout=10)


def _same(pid: int, created: float) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        return p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
