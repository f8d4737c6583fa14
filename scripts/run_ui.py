"""`make ui`: run `dagster dev` so that Ctrl-C, SIGTERM and `make stop-ui` stop every process it started.

Why a wrapper: `dagster dev` maps SIGTERM to its SIGINT handler, and a process started from a non-interactive shell
inherits SIGINT as *ignored* — so SIGTERM did nothing and ~6 processes (webserver, daemon, code servers) lived on.
Here `dagster dev` starts with SIGINT reset to the default, in its own session (process group); SIGTERM, SIGINT and
SIGHUP sent to this wrapper are forwarded to that whole group, and whatever is still alive after a grace period is
killed.

`dagster dev` runs with its working directory set to DAGSTER_HOME (so it does not warn about the repo root's
`dagster.yaml`, which is the template `make` copies into DAGSTER_HOME), finds the code through `--working-directory`
(the repo root), and gets the relative paths of the environment (SORA_CATALOG_URI, SORA_WAREHOUSE_URI,
SORA_IMAGE_ROOTS, a relative sqlite SORA_LEDGER_URL) made absolute against the repo root, so they mean what they
mean for `make demo`.

    .venv/bin/python scripts/run_ui.py [--host 127.0.0.1] [--port 3000]   # make ui [PORT=3000] [HOST=127.0.0.1]
    .venv/bin/python scripts/run_ui.py --stop                              # make stop-ui

The wrapper writes `$DAGSTER_HOME/ui.pid` (its pid and the URL) while it runs; `--stop` sends it SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRACE_SECONDS = 20.0  # dagster dev normally stops in 2-5 s; after this the group is killed
MODULE = "sora_pipeline.definitions"


def dagster_home() -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or ROOT / ".dagster_home")
    return (home if home.is_absolute() else ROOT / home).resolve()


def _is_local(uri: str) -> bool:
    return "://" not in uri and not uri.startswith("data:")


def absolute_env(env: dict[str, str], root: Path = ROOT) -> dict[str, str]:
    """The environment with the pipeline's relative local paths made absolute against `root` (the defaults
    `data/catalog` and `data/warehouse` included), since `dagster dev` does not run in `root`."""
    env = dict(env)
    for name, default in (("SORA_CATALOG_URI", "data/catalog"), ("SORA_WAREHOUSE_URI", "data/warehouse")):
        value = (env.get(name) or "").strip() or default
        env[name] = str((root / value).resolve()) if _is_local(value) and not os.path.isabs(value) else value
    roots = [r.strip() for r in (env.get("SORA_IMAGE_ROOTS") or "").split(",") if r.strip()]
    if roots:
        env["SORA_IMAGE_ROOTS"] = ",".join(str((root / r).resolve()) if _is_local(r) and not os.path.isabs(r)
                                           else r for r in roots)
    ledger = (env.get("SORA_LEDGER_URL") or "").strip()
    if ledger.startswith("sqlite:///") and not ledger.startswith("sqlite:////"):
        path = ledger[len("sqlite:///"):]
        if path and not path.startswith(":memory:"):
            env["SORA_LEDGER_URL"] = "sqlite:///" + str((root / path).resolve())
    home = dagster_home()
    env["DAGSTER_HOME"] = str(home)
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(proc: subprocess.Popen, grace: float = GRACE_SECONDS) -> int:
    """SIGTERM the child's process group, wait up to `grace` seconds for the child and then for the rest of the
    group, SIGKILL what is left. Returns the child's exit status."""
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        print(f"run_ui: dagster dev did not stop within {grace:.0f}s; killing its processes", file=sys.stderr,
              flush=True)
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(proc.pid):
        _signal_group(proc.pid, signal.SIGKILL)
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return -signal.SIGKILL


def _pidfile(home: Path) -> Path:
    return home / "ui.pid"


def stop(home: Path, timeout: float = GRACE_SECONDS + 10) -> int:
    """`make stop-ui`: SIGTERM the wrapper named in `$DAGSTER_HOME/ui.pid` and wait for it to exit."""
    path = _pidfile(home)
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        print(f"stop-ui: no UI running for DAGSTER_HOME={home} (no {path.name})")
        return 0
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = "" if not _alive(pid) else "run_ui.py"  # no /proc: trust the file while the pid is alive
    if "run_ui.py" not in cmdline:
        print(f"stop-ui: process {pid} from {path} is gone; removing the stale file")
        path.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        print(f"stop-ui: process {pid} still running after {timeout:.0f}s", file=sys.stderr)
        return 1
    print(f"stop-ui: stopped the UI (process {pid})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=3000)
    ap.add_argument("--stop", action="store_true", help="stop the UI started for this DAGSTER_HOME")
    args = ap.parse_args(argv)
    home = dagster_home()
    if args.stop:
        return stop(home)
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    dagster = Path(sys.executable).with_name("dagster")
    cmd = [str(dagster) if dagster.exists() else "dagster", "dev", "-m", MODULE, "--working-directory", str(ROOT),
           "-h", args.host, "-p", str(args.port)]
    env = absolute_env(dict(os.environ))

    stopping: list[int] = []

    def forward(signum, _frame) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    proc = subprocess.Popen(cmd, cwd=home, env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pidfile = _pidfile(home)
    pidfile.write_text(f"{os.getpid()} http://{args.host}:{args.port}\n")
    print(f"run_ui: dagster dev (pid {proc.pid}) on http://{args.host}:{args.port}, DAGSTER_HOME={home}; "
          "Ctrl-C or `make stop-ui` stops it", flush=True)
    try:
        while proc.poll() is None and not stopping:
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        if stopping:
            print(f"run_ui: {signal.Signals(stopping[0]).name}: stopping dagster dev", flush=True)
        code = stop_group(proc)  # also sweeps what an exited dagster dev left in its group
    finally:
        if pidfile.exists() and pidfile.read_text().split()[:1] == [str(os.getpid())]:
            pidfile.unlink(missing_ok=True)
    if stopping:
        return 0
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
