"""The daily partitions every table is split by (UTC days, keys YYYY-MM-DD, start from SORA_PARTITIONS_START: the
process's settings, `load_settings().partitions_start`, read when this module is imported — the assets need the
definition at import time)."""

from __future__ import annotations

from datetime import date

import dagster as dg

from sora_pipeline.defs.settings import load_settings

PARTITIONS_START = load_settings().partitions_start

daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC", end_offset=1)


def partition_range() -> tuple[str, str]:
    """(first, last) day key: SORA_PARTITIONS_START … today (UTC; `end_offset=1` makes the running day a partition)."""
    return daily_partitions.get_first_partition_key() or PARTITIONS_START, \
        daily_partitions.get_last_partition_key() or PARTITIONS_START


def partition_problem(key: str) -> str | None:
    """One line saying why `key` is not a day of `daily_partitions` (naming the range and what to set), or None."""
    first, last = partition_range()
    try:
        day = date.fromisoformat(key)
    except ValueError:
        return (f"partition {key!r} is not a day: use YYYY-MM-DD between {first} and {last} "
                "(SORA_PARTITIONS_START … today, UTC)")
    if day.isoformat() != key:
        return f"partition {key!r} is not a day key: write it as {day.isoformat()}"
    if key < first:
        return (f"partition {key} is before the first day {first}: the days run from SORA_PARTITIONS_START "
                f"({first}) to today ({last}, UTC); pick a day in that range or set "
                f"SORA_PARTITIONS_START={key} (or earlier)")
    if key > last:
        return (f"partition {key} is after the last day {last} (today, UTC): the days run from "
                f"SORA_PARTITIONS_START ({first}) to today; a later day becomes a partition when it begins")
    return None
