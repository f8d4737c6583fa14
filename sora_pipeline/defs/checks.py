"""Asset checks: the videos are what was asked for, and the day's catalog slice is clean."""

from collections import Counter

import dagster as dg
import pyarrow as pa

from sora_pipeline.catalog import CatalogError
from sora_pipeline.catalog.dates import catalog_dates
from sora_pipeline.defs.assets.catalog import catalog_problem
from sora_pipeline.defs.assets.lineage import arrow_rows
from sora_pipeline.defs.assets.upstream import read_upstream
from sora_pipeline.defs.partitions import daily_partitions, partition_range
from sora_pipeline.defs.warehouse_resource import WarehouseResource

def _short_side(resolution: str | None) -> int | None:
    """"720p" → 720, "768P" → 768; `auto`, null or anything else → None (any size)."""
    text = (resolution or "").strip().lower()
    return int(text[:-1]) if text.endswith("p") and text[:-1].isdigit() else None


def _ratio(aspect: str | None) -> float | None:
    w, _, h = (aspect or "").partition(":")
    return int(w) / int(h) if w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0 else None


def dimension_problems(row: dict) -> list[str]:
    """Width/height positive and consistent with the requested resolution (its short side) and aspect ratio
    ("W:H"; `auto` or an endpoint without one: any)."""
    w, h, item = row["width"], row["height"], row["item_id"]
    if not w or not h or w <= 0 or h <= 0:
        return [f"{item}: width/height {w}×{h} not positive"]
    problems = []
    want = _short_side(row["resolution"])
    if want and min(w, h) != want:
        problems.append(f"{item}: {w}×{h} is not {row['resolution']}")
    ratio = _ratio(row["aspect_ratio"])
    if ratio is not None and abs(w / h - ratio) > 0.02:
        problems.append(f"{item}: {w}×{h} is not {row['aspect_ratio']}")
    return problems


def _rows(warehouse: WarehouseResource, context: dg.AssetCheckExecutionContext) -> list[dict]:
    return arrow_rows(read_upstream(warehouse, "video_metadata", context.partition_key))


def _metadata(problems: list[str], checked: int) -> dict:
    return {
        "rows_checked": checked,
        "failures": len(problems),
        "examples": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems[:20]) or "none"),
    }


def dimensions_check(rows: list[dict]) -> list[str]:
    return [p for r in rows for p in dimension_problems(r)]


def frame_count_check(rows: list[dict]) -> list[str]:
    return [
        f"{r['item_id']}: {r['num_frames']} frames vs {r['fps']} fps × {r['duration']} s"
        for r in rows
        if None in (r["num_frames"], r["fps"], r["duration"]) or abs(r["num_frames"] - r["fps"] * r["duration"]) > 1
    ]


def duration_check(rows: list[dict]) -> list[str]:
    return [
        f"{r['item_id']}: {r['duration']} s, asked {r['requested_duration']} s"
        for r in rows
        if r["duration"] is None
        or (r["requested_duration"] is not None and abs(r["duration"] - r["requested_duration"]) > 0.5)
    ]


def unique_id_check(rows: list[dict]) -> list[str]:
    return [f"{k} appears {n} times" for k, n in Counter(r["item_id"] for r in rows).items() if n > 1]


VIDEO_CHECKS = {  # check name → (description, problems of the day's rows)
    "video_dimensions_match_request": (
        "width/height positive and matching the requested resolution (its short side: 720p → 720) and aspect "
        "ratio (W:H)", dimensions_check),
    "frame_count_consistent": ("num_frames within one frame of fps × duration", frame_count_check),
    "duration_matches_request": ("duration within 0.5 s of the requested duration", duration_check),
    "item_id_unique": ("item_id unique within the day", unique_id_check),
}


@dg.multi_asset_check(
    name="video_metadata_checks",
    specs=[dg.AssetCheckSpec(name, asset="video_metadata", description=description, partitions_def=daily_partitions)
           for name, (description, _) in VIDEO_CHECKS.items()],
    can_subset=True,
    description="The day's video_metadata rows against what was asked for; one step reads the table once and "
                "reports each check.",
)
def video_metadata_checks(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
    rows = _rows(warehouse, context)
    for key in context.selected_asset_check_keys:
        problems = VIDEO_CHECKS[key.name][1](rows)
        yield dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=not problems,
                                  severity=dg.AssetCheckSeverity.ERROR, metadata=_metadata(problems, len(rows)))


@dg.asset_check(
    asset="catalog_items",
    partitions_def=daily_partitions,
    description="no catalog rows of the day were rejected (warning)",
)
def no_rejected_rows(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
    reasons = read_upstream(warehouse, "rejected_items", context.partition_key, ["reason"]).column("reason")
    count, problems = len(reasons), reasons.slice(0, 20).to_pylist()  # (the examples; the table has every row)
    del reasons
    pa.default_memory_pool().release_unused()  # a day may have 100,000 rejected rows; the next steps run here too
    return dg.AssetCheckResult(passed=not count, severity=dg.AssetCheckSeverity.WARN,
                               metadata=_metadata(problems, count) | {"failures": count})


@dg.asset_check(
    asset="catalog_items",
    name="catalog_dates",
    partitions_def=daily_partitions,
    description="every row of the whole catalog belongs to a day: its scheduled_date is a date (or an ISO "
                "YYYY-MM-DD string) on or after SORA_PARTITIONS_START; the rows no day reads are named by file, "
                "row number and item_id (warning)",
)
def catalog_dates_check(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
    try:
        report = catalog_dates(warehouse.catalog_uri, warehouse.storage_options or None,
                               first_day=partition_range()[0])
    except CatalogError as exc:
        raise dg.Failure(description=catalog_problem(exc), allow_retries=False) from None
    lines = report.lines()
    if lines:
        context.log.warning("\n".join(lines))
    return dg.AssetCheckResult(passed=not report.lost, severity=dg.AssetCheckSeverity.WARN, metadata={
        "rows_checked": report.rows, "failures": report.lost, "undated_rows": report.undated,
        "rows_before_first_day": report.early,
        "examples": dg.MetadataValue.md("\n".join(f"- {line}" for line in lines[1:]) or "none")})


ALL_CHECKS = [video_metadata_checks, no_rejected_rows, catalog_dates_check]
