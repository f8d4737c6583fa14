"""Catalog rows that no day will ever read: a `scheduled_date` that is null or not a date (`'12/01/2026'`), and
rows dated before the first day partition. The day's scan (`reader`) never sees them, so they are counted here,
over the whole catalog, each named by its file, its row number in that file and its item_id.

A usable date is a date, a timestamp, or a string whose first ten characters (after trimming whitespace) are an
ISO date `YYYY-MM-DD` (`2026-11-20`, `2026-11-20T08:00`): exactly what the day's filter matches. Date columns
whose row-group statistics count no nulls are not read at all."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sora_pipeline.catalog.reader import _open, _views
from sora_pipeline.catalog.masking import mask_value, show_value

LIMIT = 20  # rows named in a report (all are counted)


@dataclass(frozen=True)
class UndatedRow:
    """A catalog row without a usable scheduled_date (`early`: dated before the first day instead)."""

    file: str  # its data file: the path inside a folder catalog, or the file's name
    row: int  # its row number in that file, from 0
    item_id: str | None  # as the file holds it (shown, not masked)
    value: str | None  # the scheduled_date as the file holds it (shown, shortened); None: null
    early: bool = False

    def line(self) -> str:
        where = f"{self.file} row {self.row} (item_id={self.item_id or 'None'})"
        if self.early:
            return f"{where}: scheduled_date {self.value} is before the first day partition"
        if self.value is None:
            return f"{where}: scheduled_date is missing"
        return f"{where}: scheduled_date {self.value} is not a date (use YYYY-MM-DD)"


@dataclass(frozen=True)
class CatalogDates:
    """`rows` in the catalog, `undated` of them without a usable date, `early` dated before `first_day`;
    `examples`: the first LIMIT of those (undated first), in file and row order."""

    rows: int
    undated: int
    early: int = 0
    first_day: date | None = None
    examples: list[UndatedRow] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.undated + self.early

    def lines(self) -> list[str]:
        """People's lines, empty when every row has a day: a count, then one line per example."""
        if not self.lost:
            return []
        parts = [f"{self.undated:,} without a usable scheduled_date"] if self.undated else []
        if self.early:
            parts.append(f"{self.early:,} dated before the first day {self.first_day} (SORA_PARTITIONS_START)")
        more = f" (the first {len(self.examples)} below)" if self.lost > len(self.examples) else ""
        head = f"{self.lost:,} of {self.rows:,} catalog rows belong to no day: {'; '.join(parts)}{more}"
        return [head] + [r.line() for r in self.examples]


def catalog_dates(uri: str, storage_options: dict | None = None, *, first_day: date | str | None = None,
                  limit: int = LIMIT) -> CatalogDates:
    """Count the catalog's rows that no day reads (see the module), naming the first `limit`. `first_day`: the
    first day partition (rows before it are counted as `early`); None: no such bound. Raises `CatalogError`
    when the catalog as a whole cannot be read."""
    first = date.fromisoformat(first_day) if isinstance(first_day, str) else first_day
    cat = _open(uri, storage_options)
    rows = undated = early = 0
    undated_examples: list[UndatedRow] = []
    early_examples: list[UndatedRow] = []
    for view in _views(cat):
        fragment = view.fragment
        n = fragment.count_rows()
        rows += n
        typ = view.type_of("scheduled_date")
        if typ is None or n == 0:
            continue
        parted = _partition_date(fragment)
        if parted is not None:  # hive folder scheduled_date=…: the file's rows are that day's
            if first is not None and parted < first:
                early += n
                index = list(range(min(n, max(0, limit - len(early_examples)))))
                early_examples += _name(view, index, [parted] * len(index), early=True)
            continue
        if _no_nulls(fragment, typ):
            if first is None or not _may_be_early(fragment, first):
                continue
        values = fragment.to_table(columns=["scheduled_date"], schema=view.schema).column("scheduled_date")
        days = _days(values)
        bad = pc.is_null(days)
        count = pc.sum(bad).as_py() or 0
        if count:
            undated += count
            if len(undated_examples) < limit:
                index = pc.indices_nonzero(bad).slice(0, limit - len(undated_examples)).to_pylist()
                undated_examples += _name(view, index, values.take(index).to_pylist())
        if first is not None:
            before = pc.fill_null(pc.less(days, pa.scalar(first, pa.date32())), False)
            count = pc.sum(before).as_py() or 0
            if count:
                early += count
                if len(early_examples) < limit:
                    index = pc.indices_nonzero(before).slice(0, limit - len(early_examples)).to_pylist()
                    early_examples += _name(view, index, values.take(index).to_pylist(), early=True)
    examples = (undated_examples + early_examples)[:limit]
    return CatalogDates(rows, undated, early, first, examples)


def _days(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Each value's day as the day filter sees it (date32), null where there is none."""
    typ = values.type
    if pa.types.is_dictionary(typ):
        values, typ = values.cast(typ.value_type), typ.value_type
    if pa.types.is_date(typ) or pa.types.is_timestamp(typ):
        return values.cast(pa.date32())
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ):
        head = pc.utf8_slice_codeunits(pc.utf8_trim_whitespace(values.cast(pa.string())), 0, 10)
        parsed = pc.strptime(head, format="%Y-%m-%d", unit="s", error_is_null=True)
        exact = pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), head)  # 2026-02-30 parses as March 2nd
        return pc.if_else(exact, parsed.cast(pa.date32()), pa.scalar(None, pa.date32()))
    return pa.chunked_array([pa.nulls(len(values), pa.date32())])  # a column of another type holds no dates


def _partition_date(fragment: Any) -> date | None:
    expr = getattr(fragment, "partition_expression", None)
    if expr is None:
        return None
    text = str(expr)  # e.g. (scheduled_date == 2026-11-20)
    marker = "scheduled_date == "
    if marker not in text:
        return None
    try:
        return date.fromisoformat(text.split(marker, 1)[1][:10])
    except ValueError:
        return None


def _row_groups_stats(fragment: Any, name: str) -> list[Any] | None:
    try:
        meta = fragment.metadata
        index = meta.schema.to_arrow_schema().get_field_index(name)
        if index < 0:
            return None
        return [meta.row_group(g).column(index).statistics for g in range(meta.num_row_groups)]
    except (AttributeError, pa.ArrowException, OSError, ValueError):
        return None


def _no_nulls(fragment: Any, typ: pa.DataType) -> bool:
    """A date or timestamp column whose statistics count no nulls in any row group (nothing to read)."""
    if not (pa.types.is_date(typ) or pa.types.is_timestamp(typ)):
        return False
    stats = _row_groups_stats(fragment, "scheduled_date")
    return stats is not None and all(s is not None and s.has_null_count and s.null_count == 0 for s in stats)


def _may_be_early(fragment: Any, first: date) -> bool:
    stats = _row_groups_stats(fragment, "scheduled_date")
    if stats is None:
        return True
    for s in stats:
        if s is None or not s.has_min_max:
            return True
        low = s.min.date() if hasattr(s.min, "date") and callable(s.min.date) else s.min
        if not isinstance(low, date) or low < first:
            return True
    return False


def _item(value: Any) -> str | None:
    if value is None:
        return None
    return mask_value(value, 80, opaque=False) if isinstance(value, str) else show_value(value, opaque=False)


def _name(view: Any, index: list[int], values: list[Any], *, early: bool = False) -> list[UndatedRow]:
    ids = view.fragment.to_table(columns=["item_id"], schema=view.schema).column("item_id").take(index).to_pylist() \
        if "item_id" in view.schema.names else [None] * len(index)
    return [UndatedRow(view.label, i, _item(item),
                       None if value is None else show_value(value.isoformat() if isinstance(value, date) else value),
                       early)
            for i, item, value in zip(index, ids, values)]
