"""The warehouse room: per-day Parquet tables swapped atomically (`tables`) and their schemas with column docs
and lineage (`schemas`). No Dagster import; the Dagster resource is `sora_pipeline.defs.warehouse_resource`."""
