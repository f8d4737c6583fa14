"""A day's rejected rows: `Rejections` keeps them column by column (a day can reject 100,000 rows: no object, no
reason string per row until one is asked for) and `RejectedRow` is one of them; `rejection_summary` gives them in a
bounded form for logs and metadata (counts by field and by reason, the first few reasons). The rows themselves
go to the `rejected_items` table, however many there are."""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, overload

import pyarrow as pa

from sora_pipeline.catalog.masking import ONE_LINE, show_value, shown_row

SAMPLE = 20  # reasons shown in a log line or metadata value
TOP = 10  # distinct reasons counted by name; the rest are counted as "other reasons"
_WHY_CHARS = 160


@dataclass(eq=True, slots=True)
class RejectedRow:
    """A row that breaks a rule: the first offending field, a one-line reason (`reason`: "row N (item_id=…):
    field: why"; `why`: the same without the row's name), and `raw`, the row's values redacted (made when asked)."""

    item_id: str | None
    scheduled_date: date
    row_index: int
    field: str
    reason: str
    why: str = ""
    _source: Any = field(default=None, compare=False, repr=False)  # (the day's table, notes) or raw

    @property
    def raw(self) -> dict[str, str | None]:
        if not isinstance(self._source, dict):
            table, notes = self._source
            row = table.slice(self.row_index, 1).to_pylist()[0]
            row.update({name: original for name, (_, original) in notes.get(self.row_index, {}).items()})
            self._source = shown_row(row)
        return self._source

    def as_dict(self) -> dict[str, Any]:
        """The row as the `rejected_items` table holds it (plus `why`)."""
        return {"item_id": self.item_id, "row_index": self.row_index, "field": self.field, "reason": self.reason,
                "scheduled_date": self.scheduled_date, "why": self.why}


class Rejections(Sequence[RejectedRow]):
    """A day's rejected rows in row order, column by column: the row's index, the field and the why (shared
    strings); the item_id (shown in the reason as the file holds it; `RejectedRow.item_id` keeps strings only)
    is taken from the day's table when a row or the table is made."""

    def __init__(self, day: date, table: pa.Table | None = None, notes: Mapping | None = None,
                 chunk: int = 16_384, *, default_endpoint: str | None = None) -> None:
        self.day = day
        self.default_endpoint = default_endpoint
        self._endpoints: list[str | None] = []  # the endpoint each rejected row asked for (shared strings)
        self._source = (table, notes or {})
        self._chunk = chunk
        self._index = array("q")
        self._fields: list[str] = []
        self._whys: list[str] = []

    def add(self, index: int, field_: str, why: str, endpoint_id: str | None = None) -> None:
        """Row `index` of the day's table breaks `field_` (`why`: "field: why", one line); `endpoint_id`: the
        endpoint the row asked for (the default when it named none)."""
        self._endpoints.append(endpoint_id or self.default_endpoint)
        self._index.append(index)
        self._fields.append(field_)
        self._whys.append(why)

    def __len__(self) -> int:
        return len(self._index)

    @overload
    def __getitem__(self, i: int) -> RejectedRow: ...
    @overload
    def __getitem__(self, i: slice) -> list[RejectedRow]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            return list(self._rows(start, stop))[::step] if step > 0 else [self[j] for j in range(start, stop, step)]
        i = range(len(self))[i]  # (negative indices; IndexError beyond)
        return next(self._rows(i, i + 1))

    def __iter__(self) -> Iterator[RejectedRow]:
        for start in range(0, len(self), self._chunk):
            yield from self._rows(start, min(start + self._chunk, len(self)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Rejections({self.day}, {len(self)} rows)"

    def _ids(self, start: int, stop: int) -> list[Any]:
        """The item_ids of rejected rows start…stop as the file holds them (a value the reader could not use:
        the original, from its notes)."""
        table, notes = self._source
        index = self._index[start:stop]
        if table is None:
            return [None] * len(index)
        ids = table.column("item_id").take(pa.array(index, pa.int64())).to_pylist()
        if notes:
            ids = [notes[i]["item_id"][1] if "item_id" in notes.get(i, ()) else v for i, v in zip(index, ids)]
        return ids

    def _reasons(self, start: int, stop: int, ids: list[Any]) -> list[str]:
        return [ONE_LINE.sub(" ", f"row {index} (item_id={show_value(v, opaque=False) if v is not None else 'None'}): "
                                   f"{why}")
                for index, v, why in zip(self._index[start:stop], ids, self._whys[start:stop])]

    def _rows(self, start: int, stop: int) -> Iterator[RejectedRow]:
        ids = self._ids(start, stop)
        for k, (v, reason) in enumerate(zip(ids, self._reasons(start, stop, ids))):
            i = start + k
            yield RejectedRow(v if isinstance(v, str) else None, self.day, self._index[i], self._fields[i], reason,
                              self._whys[i], self._source)

    @property
    def fields(self) -> list[str]:
        return self._fields

    @property
    def whys(self) -> list[str]:
        return self._whys

    def table(self, schema: pa.Schema) -> pa.Table:
        """The `rejected_items` rows (item_id, row_index, field, reason, scheduled_date, endpoint_id) with `schema`, made a
        chunk of rows at a time (no Python string per row for the whole day at once)."""
        batches = []
        for start in range(0, len(self), self._chunk):
            stop = min(start + self._chunk, len(self))
            ids = self._ids(start, stop)
            batches.append(pa.record_batch({
                "item_id": pa.array([v if isinstance(v, str) else None for v in ids], pa.string()),
                "row_index": pa.array(self._index[start:stop], pa.int64()),
                "field": pa.array(self._fields[start:stop], pa.string()),
                "reason": pa.array(self._reasons(start, stop, ids), pa.string()),
                "scheduled_date": pa.array([self.day] * (stop - start), pa.date32()),
                "endpoint_id": pa.array(self._endpoints[start:stop], pa.string()),
            }, schema=schema))
        return pa.Table.from_batches(batches, schema=schema)


@dataclass(frozen=True)
class RejectionSummary:
    """`total` rejected rows; `by_field` (field → rows), `by_reason` (the TOP commonest reasons without the row's
    name, with their counts; `other` rows have another reason), `sample` (the first SAMPLE full reasons)."""

    total: int
    by_field: dict[str, int] = field(default_factory=dict)
    by_reason: list[tuple[str, int]] = field(default_factory=list)
    other: int = 0
    sample: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """People's lines: the counts, then the sample (at most 2 + TOP + SAMPLE lines)."""
        if not self.total:
            return ["no rows rejected"]
        fields = ", ".join(f"{name} {count:,}" for name, count in self.by_field.items())
        out = [f"{self.total:,} rows rejected (by field: {fields}); the table rejected_items has every row"]
        out += [f"  {count:,} × {why}" for why, count in self.by_reason]
        if self.other:
            out.append(f"  {self.other:,} × other reasons")
        shown = "first" if self.total > len(self.sample) else "all"
        out.append(f"{shown} {len(self.sample)}:")
        out += [f"  - {reason}" for reason in self.sample]
        return out


def rejection_summary(rejected: Sequence[RejectedRow], sample: int = SAMPLE, top: int = TOP) -> RejectionSummary:
    """The bounded summary of `rejected` (one pass; the reasons are already redacted and one line each)."""
    if isinstance(rejected, Rejections):  # column-wise: no row objects
        by_field, by_why = Counter(rejected.fields), Counter(map(_short, rejected.whys))
    else:
        by_field, by_why = Counter(r.field for r in rejected), Counter(_short(r.why or r.reason) for r in rejected)
    commonest = by_why.most_common(top)
    return RejectionSummary(total=len(rejected), by_field=dict(by_field.most_common()), by_reason=commonest,
                            other=len(rejected) - sum(n for _, n in commonest),
                            sample=[r.reason for r in rejected[:sample]])


def _short(text: str) -> str:
    return text if len(text) <= _WHY_CHARS else text[:_WHY_CHARS - 1] + "…"
