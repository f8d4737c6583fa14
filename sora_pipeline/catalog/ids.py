"""`item_id` across the whole catalog: the contract wants it unique, so reading one day must know whether any of
the day's ids appears elsewhere. `duplicated_ids` answers that reading as little as it can: row groups are skipped
by their min/max statistics (clustered ids) or by their Parquet Bloom filter on item_id; what may hold an id is
scanned exactly. `writer.write_catalog` writes the layout that makes this cheap."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from sora_pipeline.catalog import bloom as parquet_bloom


def day_row_groups(dataset: ds.Dataset, day_filter: ds.Expression) -> list[ds.Fragment]:
    """The row groups whose statistics or partition path allow rows of the day, as fragments (one per file). A
    scan of these plans nothing else (~3 ms less for a 365-row-group file), and `duplicated_ids` knows from them
    which row groups are the day's without evaluating the statistics again."""
    return [part for fragment in dataset.get_fragments(filter=day_filter)  # (hive: the day's folder as it is)
            for part in (fragment.split_by_row_group(day_filter)
                         if "scheduled_date" in fragment.physical_schema.names else [fragment])]


def fragments_dataset(dataset: ds.Dataset, fragments: Sequence[ds.Fragment]) -> ds.Dataset:
    """`fragments` (e.g. row-group subsets) of `dataset` as a dataset of their own, with its schema."""
    return ds.FileSystemDataset(fragments, dataset.schema, dataset.format, dataset.filesystem)


def duplicated_ids(dataset: ds.Dataset, day_ids: Sequence[str], day_filter: ds.Expression,
                   day_parts: Sequence[ds.Fragment]) -> dict[str, int]:
    """How many rows of the WHOLE catalog carry each of the day's ids, for ids seen more than once.

    `day_ids` are the item_ids of the rows `day_filter` selects in `day_parts` (from `day_row_groups`; already
    read, repeats included); only the other rows are scanned, and only their item_id. Row groups are skipped
    when their statistics (the day's own, or clustered ids) or their item_id Bloom filter (catalogs written by
    `write_catalog`) show they hold none of the ids; what remains is scanned exactly."""
    return duplicated_ids_across([(dataset, day_filter, day_parts)], day_ids)


def duplicated_ids_across(groups: Sequence[tuple[ds.Dataset, ds.Expression, Sequence[ds.Fragment]]],
                          day_ids: Sequence[str]) -> dict[str, int]:
    """`duplicated_ids` of a catalog given as `groups` of files — (dataset, day_filter, day_parts) each, together
    covering every file once — for catalogs whose files disagree on the type of item_id or scheduled_date: each
    group's files agree, and gets the day filter of its own types. Integer item_ids count as their decimal
    string (`7` and `"7"` are the same id to a person, so neither is generated)."""
    counts = Counter(day_ids)
    if not counts:
        return {}
    ordered = sorted(counts)
    for dataset, day_filter, day_parts in groups:
        counts.update(_other_rows_ids(dataset, ordered, day_filter, day_parts))
    return {item_id: n for item_id, n in counts.items() if n > 1}


def _other_rows_ids(dataset: ds.Dataset, ordered: list[str], day_filter: ds.Expression,
                    day_parts: Sequence[ds.Fragment]) -> list[str]:
    """The item_ids among `ordered` (sorted) that rows of `dataset` outside `day_filter` carry, repeats included."""
    typ = dataset.schema.field("item_id").type
    others = ~day_filter | ds.field("scheduled_date").is_null()  # the day's own rows are counted by the caller
    if pa.types.is_integer(typ):  # (a catalog whose files disagree on item_id's type)
        wanted = set(ordered)
        column = dataset.to_table(columns=["item_id"], filter=others).column("item_id")
        return [text for text in map(str, column.drop_null().to_pylist()) if text in wanted]
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        return []
    flt = ds.field("item_id").isin(pa.array(ordered, type=typ)) & others
    candidates = _bloom_candidates(dataset, ordered, day_parts, others)
    if candidates is None:
        span = ((ds.field("item_id") >= pa.scalar(ordered[0], typ))
                & (ds.field("item_id") <= pa.scalar(ordered[-1], typ)))
        if _prunes(dataset, span):  # clustered ids: row-group min/max statistics skip most of the column
            flt = span & flt
        # (random ids: nothing to skip, and the range term would cost ~60% more string comparisons)
    else:  # only the row groups that may hold one of the ids (often none)
        dataset = fragments_dataset(dataset, candidates)
    if candidates == []:
        return []
    return dataset.to_table(columns=["item_id"], filter=flt).column("item_id").to_pylist()


def _bloom_candidates(dataset: ds.Dataset, ids: list[str], day_parts: Sequence[ds.Fragment],
                      others: ds.Expression) -> list | None:
    """The row groups that may hold rows of other days with any of `ids`: those whose item_id Bloom filter says
    maybe, and the day's own row groups (`day_parts`) if their statistics show rows of other days too
    (`others`). None if a file or row group has no such filter (then everything is scanned)."""
    probe = None
    kept = []
    of_the_day: dict[str, set[int]] = {}
    for part in day_parts:
        of_the_day.setdefault(part.path, set()).update(g.id for g in part.row_groups)
    for fragment in dataset.get_fragments():
        if not isinstance(fragment, ds.ParquetFileFragment):
            return None
        meta = fragment.metadata
        if meta.num_row_groups == 0:
            continue
        names = [meta.row_group(0).column(j).path_in_schema for j in range(meta.num_columns)]
        if "item_id" not in names:
            return None
        column = names.index("item_id")
        own = of_the_day.get(fragment.path, set())  # row groups with rows of the day
        mixed: set[int] = set()  # ... and rows of other days
        if own and "scheduled_date" in names:
            mixed = {g.id for part in fragment.subset(row_group_ids=sorted(own)).split_by_row_group(others)
                     for g in part.row_groups}
        chunks = [(i, chunk.bloom_filter_offset, chunk.bloom_filter_length)
                  for i, chunk in ((i, meta.row_group(i).column(column)) for i in range(meta.num_row_groups)
                                   if i not in own)]
        if chunks:
            probe = probe or parquet_bloom.Probe(parquet_bloom.hashes(ids))
            try:
                hits = parquet_bloom.row_groups_that_may_contain(_range_reader(fragment), chunks, probe)
            except ValueError:  # a filter this reader does not understand: scan instead
                return None
            if hits is None:
                return None
            mixed.update(hits)
        if mixed:
            kept.append(fragment.subset(row_group_ids=sorted(mixed)))
    return kept


def _range_reader(fragment: ds.ParquetFileFragment) -> Callable[[int, int], Any]:
    """`read(offset, length)` of the fragment's file: a view of the memory-mapped file when it is local (no copy,
    only the pages touched are read), else a ranged read through the dataset's filesystem."""
    if isinstance(fragment.filesystem, pafs.LocalFileSystem):
        whole = pa.memory_map(fragment.path).read_buffer()
        return lambda offset, length: whole.slice(offset, length)

    def read(offset: int, length: int) -> bytes:
        with fragment.filesystem.open_input_file(fragment.path) as f:
            return f.read_at(length, offset)

    return read


def _prunes(dataset: ds.Dataset, expression: ds.Expression, sample: int = 16) -> bool:
    """Whether `expression` lets row-group statistics skip at least half of the first `sample` row groups."""
    seen = kept = 0
    for fragment in dataset.get_fragments():
        if not isinstance(fragment, ds.ParquetFileFragment):
            return False
        seen += fragment.num_row_groups
        kept += len(fragment.split_by_row_group(expression))
        if seen >= sample:
            break
    return seen > 0 and kept <= seen / 2
