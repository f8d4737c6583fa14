"""An embedded fal queue simulator speaking every endpoint profile (`sora_pipeline.endpoints`), returning real MP4s
(no Dagster)."""

from sora_pipeline.simulator.app import create_app
from sora_pipeline.simulator.config import FAULT_KINDS, SimulatorConfig
from sora_pipeline.simulator.server import SimulatorServer

__all__ = ["FAULT_KINDS", "SimulatorConfig", "SimulatorServer", "create_app"]
