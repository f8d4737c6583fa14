"""Run the simulator with uvicorn in a background thread on a free loopback port (for tests and demos)."""

from __future__ import annotations

from typing import Any

from sora_pipeline.serving import BackgroundServer
from sora_pipeline.simulator.app import create_app
from sora_pipeline.simulator.core import SimulatorApp
from sora_pipeline.simulator.config import SimulatorConfig


class SimulatorServer(BackgroundServer):
    """`with SimulatorServer(SimulatorConfig(...)) as sim: httpx.post(f"{sim.base_url}/fal-ai/...")`."""

    name = "simulator"
    # a long keep-alive: clients re-using a connection the server is just closing see spurious ReadErrors
    uvicorn_options = {"lifespan": "on", "proxy_headers": False, "backlog": 4096, "timeout_keep_alive": 75}

    def __init__(self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.config = config or SimulatorConfig()
        self.app: SimulatorApp | None = None

    def make_app(self) -> SimulatorApp:
        return create_app(self.config)

    def stats(self) -> dict[str, Any]:
        """The same dict as `GET /_simulator/stats` (read in-process)."""
        if self.app is None:
            raise RuntimeError("the simulator was never started")
        return self.app.sim.stats()

    @property
    def webhook_public_key(self) -> str:
        """Hex Ed25519 public key that verifies this simulator's webhook signatures."""
        from sora_pipeline.simulator.webhook_delivery import public_key_hex, signing_key

        return public_key_hex(signing_key(self.config))

    def reset(self) -> None:
        """Forget all jobs and counters and reseed (same as `POST /_simulator/reset`)."""
        if self.app is None:
            raise RuntimeError("the simulator was never started")
        self.app.sim.reset()

