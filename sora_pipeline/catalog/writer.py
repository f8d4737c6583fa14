"""Writing a catalog in the layout that makes a day's read cheap (docs/reference.md): one row group per day, a Bloom
filter on `item_id` for the catalog-wide uniqueness check (`catalog.ids`)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def write_catalog(table: pa.Table, path: str, *, filesystem: Any = None) -> None:
    """Write `table` as the README's recommended catalog layout: one Parquet file sorted by `scheduled_date`, one
    row group per day (the day's slice is read by statistics alone), zstd, and a Bloom filter on `item_id` so
    that the catalog-wide uniqueness check reads the filters, not the ids. The filter is sized for a
    false-positive rate of 1e-7 per id (pyarrow rounds it up to a power of two: 64 KiB for 5,500 ids a day), so
    that a day's ~5,500 ids × 364 other days rarely make a row group a false candidate (at 1e-6: ~8 per day)."""
    import pyarrow.parquet as pq

    table = table.sort_by([("scheduled_date", "ascending"), ("item_id", "ascending")])
    days = table.column("scheduled_date").combine_chunks()
    runs = pc.run_end_encode(days).run_ends.to_pylist() if len(days) else []
    largest = max((b - a for a, b in zip([0, *runs], runs)), default=1)
    bloom = {"item_id": {"ndv": max(largest, 1), "fpp": 1e-7}}
    with pq.ParquetWriter(path, table.schema, filesystem=filesystem, compression="zstd",
                          bloom_filter_options=bloom) as writer:
        start = 0
        for end in runs:
            writer.write_table(table.slice(start, end - start), row_group_size=end - start)
            start = end
