"""sora_pipeline: fal's Sora 2 Pro image-to-video endpoint as a lineage-tracked Dagster pipeline."""

__version__ = "0.1.0"
