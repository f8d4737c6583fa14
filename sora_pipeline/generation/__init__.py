"""One day's generations without Dagster: plan → claim → submit or resume → poll → result → archive/probe."""

from sora_pipeline.generation.records import GenerationConfig, Outcome, Planned, WorkItem
from sora_pipeline.generation.runner import GenerationRunner
from sora_pipeline.ledger import would_submit

__all__ = ["GenerationConfig", "GenerationRunner", "Outcome", "Planned", "WorkItem", "would_submit"]
