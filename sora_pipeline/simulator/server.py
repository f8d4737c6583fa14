"""Run the simulator with uvicorn in a background thread on a free loopback port (for tests and demos)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from sora_pipeline.simulator.app import SimulatorApp, create_app
from sora_pipeline.simulator.config import SimulatorConfig


class SimulatorServer:
    """`with SimulatorServer(SimulatorConfig(...)) as sim: httpx.post(f"{sim.base_url}/fal-ai/...")`."""

    def __init__(self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimulatorConfig()
        self.host = host
        self.port = port
        self.app: SimulatorApp | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 15.0) -> SimulatorServer:
        if self._server is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._sock = sock
        self.app = create_app(self.config)
        cfg = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on", proxy_headers=False,
                             server_header=False, timeout_graceful_shutdown=2, backlog=4096)
        self._server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"sora-simulator-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the simulator did not start")
            time.sleep(0.01)
        with socket.create_connection((self.host, self.port), timeout=timeout):
            pass
        return self

    def stop(self, timeout: float = 30.0) -> None:
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def stats(self) -> dict[str, Any]:
        """The same dict as `GET /_simulator/stats` (read in-process)."""
        if self.app is None:
            raise RuntimeError("the simulator was never started")
        return self.app.sim.stats()

    @property
    def webhook_public_key(self) -> str:
        """Hex Ed25519 public key that verifies this simulator's webhook signatures."""
        from sora_pipeline.simulator.webhook import public_key_hex, signing_key

        return public_key_hex(signing_key(self.config))

    def reset(self) -> None:
        """Forget all jobs and counters and reseed (same as `POST /_simulator/reset`)."""
        if self.app is None:
            raise RuntimeError("the simulator was never started")
        self.app.sim.reset()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
