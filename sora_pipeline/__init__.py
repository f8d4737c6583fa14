"""sora_pipeline: fal's image-to-video endpoints as a lineage-tracked Dagster pipeline.

Rooms, in the data's order (see docs/architecture.md): `catalog` → `ledger` + `generation` → `fal` (and its
stand-in, `simulator`) → `media` → `warehouse` → `analytics`, with the Dagster layer `defs` on top.

Modules that moved into the rooms keep answering to their old names (`sora_pipeline.tables`,
`python -m sora_pipeline.webhooks`, …): `_MovedModules` maps each old name to its new module."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

#: old module name → where it lives now
MOVED = {
    "sora_pipeline.catalog_rows": "sora_pipeline.catalog.rows",
    "sora_pipeline.catalog_ids": "sora_pipeline.catalog.ids",
    "sora_pipeline.parquet_bloom": "sora_pipeline.catalog.bloom",
    "sora_pipeline.image_sources": "sora_pipeline.fal.image_sources",
    "sora_pipeline.tables": "sora_pipeline.warehouse.tables",
    "sora_pipeline.schemas": "sora_pipeline.warehouse.schemas",
    "sora_pipeline.query": "sora_pipeline.analytics.query",
    "sora_pipeline.stats": "sora_pipeline.analytics.stats",
    "sora_pipeline.charts": "sora_pipeline.analytics.charts",
    "sora_pipeline.download": "sora_pipeline.media.download",
    "sora_pipeline.reconcile": "sora_pipeline.media.reconcile",
    "sora_pipeline.checks": "sora_pipeline.defs.checks",
    "sora_pipeline.automation": "sora_pipeline.defs.automation",
    "sora_pipeline.partitions": "sora_pipeline.defs.partitions",
    "sora_pipeline.settings": "sora_pipeline.defs.settings",
    "sora_pipeline.resources": "sora_pipeline.defs.resources",
    "sora_pipeline.costs": "sora_pipeline.generation.costs",
    "sora_pipeline.progress": "sora_pipeline.generation.progress",
    "sora_pipeline.failpoints": "sora_pipeline.generation.failpoints",
    "sora_pipeline.webhooks": "sora_pipeline.generation.webhooks",
    "sora_pipeline.assets": "sora_pipeline.defs.assets",
    "sora_pipeline.assets.analytics": "sora_pipeline.defs.assets.analytics",
    "sora_pipeline.assets.catalog": "sora_pipeline.defs.assets.catalog",
    "sora_pipeline.assets.generations": "sora_pipeline.defs.assets.generations",
    "sora_pipeline.assets.lineage": "sora_pipeline.defs.assets.lineage",
    "sora_pipeline.assets.metadata": "sora_pipeline.defs.assets.metadata",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    """Import an old module name as its new module (the same module object), and run it with `python -m`."""

    def find_spec(self, name, path=None, target=None):
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, self, is_package=name == "sora_pipeline.assets")

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:  # already executed under its new name
        pass

    def get_code(self, fullname):  # `python -m <old name>` runs the new module's code
        spec = importlib.util.find_spec(MOVED[fullname])
        return spec.loader.get_code(MOVED[fullname])

    def get_source(self, fullname):
        return None


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
