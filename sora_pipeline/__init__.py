"""sora_pipeline: fal's image-to-video endpoints as a lineage-tracked Dagster pipeline.

Rooms by layer, top to bottom; each imports only rooms below it, rooms side by side never import each other
(pyproject's import-linter contracts; docs/architecture.md):
`demo` → `definitions` → `defs` (Dagster) → `generation` → `webhooks` → `catalog` | `ledger` | `media` |
`endpoint_tools` → `coordination` (the shared database) → `fal` | `simulator` → `analytics` | `endpoints` → leaves:
`warehouse` | `billing` | `redact` | `serving` | `wire`."""

__version__ = "0.1.0"
