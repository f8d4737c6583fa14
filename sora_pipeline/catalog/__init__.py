"""The catalog room: read one day of the Parquet catalog (`reader`), the row rules (`rows`), the catalog-wide
`item_id` check (`ids`) and the Parquet Bloom filters it reads (`bloom`). No Dagster import."""

from sora_pipeline.catalog.reader import *  # noqa: F403 — the room's public API is the reader's
from sora_pipeline.catalog.reader import __all__  # noqa: F401
