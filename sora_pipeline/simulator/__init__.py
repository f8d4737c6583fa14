"""An embedded fal queue simulator for `fal-ai/sora-2/image-to-video/pro` that returns real MP4s (no Dagster)."""

from sora_pipeline.simulator.app import create_app
from sora_pipeline.simulator.config import FAULT_KINDS, SimulatorConfig
from sora_pipeline.simulator.server import SimulatorServer

__all__ = ["FAULT_KINDS", "SimulatorConfig", "SimulatorServer", "create_app"]
