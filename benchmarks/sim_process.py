"""The fal queue simulator in its own process for the benchmarks (as fal is remote: it does not compete for the
pipeline's GIL), started as `python -m sora_pipeline.simulator` (or behind TLS) on 127.0.0.1."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
SIM_VIDEO_CACHE = ROOT / ".cache" / "sim-videos"


class SimProcess:
    """The fal queue simulator in its own process (as fal is remote: it does not compete for our GIL)."""

    def __init__(self, *, run_latency: float, queue_latency: float = 0.0, max_running: int | None = None,
                 seed: int = 0, extra_args: list[str] | None = None, tls_cert_dir: Path | None = None) -> None:
        self.tls_cert_dir = tls_cert_dir
        if tls_cert_dir is None:
            self.module = "sora_pipeline.simulator"
            self.args = ["--host", "127.0.0.1", "--port", "0", "--run-latency", str(run_latency),
                         "--queue-latency", str(queue_latency), "--seed", str(seed)]
        else:  # the same app behind TLS (for clients that only build https:// URLs)
            self.module = "benchmarks._tls_sim"
            self.args = ["--cert-dir", str(tls_cert_dir), "--run-latency", str(run_latency)]
        self.args += ["--video-cache-dir", str(SIM_VIDEO_CACHE)]
        if max_running:
            self.args += ["--max-running", str(max_running)]
        self.args += extra_args or []
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    @property
    def cert_file(self) -> str | None:
        return str(self.tls_cert_dir / "cert.pem") if self.tls_cert_dir else None

    def start(self, timeout: float = 30.0) -> SimProcess:
        SIM_VIDEO_CACHE.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args], cwd=REPO,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith(("http://", "https://")):
            self.stop()
            raise RuntimeError(f"the simulator did not start (said {line!r})")
        self.base_url = line
        return self

    def _http(self, method: str, path: str) -> dict:
        import httpx

        with httpx.Client(trust_env=False, timeout=30, verify=self.cert_file or True) as client:
            resp = client.request(method, f"{self.base_url}{path}")
            resp.raise_for_status()
            return resp.json()

    def stats(self) -> dict[str, Any]:
        return self._http("GET", "/_simulator/stats")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the simulator process has used so far."""
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def reset(self) -> None:
        self._http("POST", "/_simulator/reset")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def queue_calls(stats: dict[str, Any]) -> dict[str, int]:
    calls = dict(stats.get("calls", {}))
    calls["queue_total"] = sum(calls.get(k, 0) for k in ("submit", "status", "result", "cancel"))
    return calls


