"""The catalog room: read one day of the Parquet catalog (`reader`), its columns (`columns`), the row rules (`rows`)
and how a cell is shown in a reason (`masking`), the catalog-wide `item_id` check (`ids`) and the Parquet Bloom
filters it reads (`bloom`), the catalog's recommended layout (`writer`), what changed (`changes`), the rows no day
reads (`dates`), a day's rejections in bounded form (`rejections`). No Dagster."""

from sora_pipeline.catalog.changes import catalog_fingerprints, catalog_signature
from sora_pipeline.catalog.dates import CatalogDates, UndatedRow, catalog_dates
from sora_pipeline.catalog.reader import (CatalogError, CatalogSlice, image_roots_from_env, open_catalog,
                                          read_catalog_day)
from sora_pipeline.catalog.rejections import RejectedRow
from sora_pipeline.catalog.columns import CONTRACT_COLUMNS, OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from sora_pipeline.catalog.masking import mask_value
from sora_pipeline.catalog.rows import CatalogItem
from sora_pipeline.catalog.writer import write_catalog

__all__ = [
    "CONTRACT_COLUMNS", "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "CatalogDates", "CatalogError", "CatalogItem",
    "CatalogSlice", "RejectedRow", "UndatedRow", "catalog_dates", "catalog_fingerprints", "catalog_signature",
    "image_roots_from_env", "open_catalog", "read_catalog_day", "mask_value", "write_catalog",
]
