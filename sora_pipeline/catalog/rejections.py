"""A day's rejected rows in a bounded form for logs and metadata: counts by field and by reason, and the first
few reasons. The rows themselves go to the `rejected_items` table, however many there are."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from sora_pipeline.catalog.rows import RejectedRow

SAMPLE = 20  # reasons shown in a log line or metadata value
TOP = 10  # distinct reasons counted by name; the rest are counted as "other reasons"
_WHY_CHARS = 160


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
    by_field = Counter(r.field for r in rejected)
    by_why = Counter(_short(r.why or r.reason) for r in rejected)
    commonest = by_why.most_common(top)
    return RejectionSummary(total=len(rejected), by_field=dict(by_field.most_common()), by_reason=commonest,
                            other=len(rejected) - sum(n for _, n in commonest),
                            sample=[r.reason for r in rejected[:sample]])


def _short(text: str) -> str:
    return text if len(text) <= _WHY_CHARS else text[:_WHY_CHARS - 1] + "…"
