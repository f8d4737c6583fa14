"""sora_pipeline: fal's image-to-video endpoints as a lineage-tracked Dagster pipeline.

Rooms, in the data's order (see docs/architecture.md): `catalog` → `ledger` + `generation` → `fal` (and its
stand-in, `simulator`) → `media` → `warehouse` → `analytics`, with the Dagster layer `defs` on top."""

__version__ = "0.1.0"
