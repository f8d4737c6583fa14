"""The endpoint schema the simulator shares with the client: `sora_pipeline.fal.models` (pure pydantic). This is
the only thing the simulator takes from the fal room (an import-linter contract keeps it so)."""

from __future__ import annotations

from sora_pipeline.fal.models import DEFAULT_ENDPOINT_ID, ImageToVideoInput, validation_messages

__all__ = ["DEFAULT_ENDPOINT_ID", "ImageToVideoInput", "validation_messages"]
