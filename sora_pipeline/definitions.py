"""The code location's entry point, `sora_pipeline.definitions:defs` (workspace.yaml, `[tool.dagster]`, `dg`).
Everything lives in `sora_pipeline.defs.code_location`; this module only re-exports it."""

from sora_pipeline.defs.code_location import ASSETS, CHECKS, DAILY_ASSETS, build_resources, defs

__all__ = ["ASSETS", "CHECKS", "DAILY_ASSETS", "build_resources", "defs"]
