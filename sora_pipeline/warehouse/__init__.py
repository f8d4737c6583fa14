"""The warehouse room: per-day Parquet tables swapped atomically (`tables`) and their schemas with column docs
and lineage (`schemas`). No Dagster import; the Dagster resource is `sora_pipeline.defs.warehouse_resource`."""


def __getattr__(name: str):
    """`from sora_pipeline.warehouse import WarehouseResource` (its old home) still works, lazily: this room itself
    never imports Dagster."""
    if name == "WarehouseResource":
        from sora_pipeline.defs.warehouse_resource import WarehouseResource

        return WarehouseResource
    raise AttributeError(f"module 'sora_pipeline.warehouse' has no attribute {name!r}")
