"""Analytics per endpoint ("one catalog, many models"): `generation_daily_stats` and `generation_summary` carry
`endpoint_id`, one row per endpoint a day used plus an `all` row when it used several (or none), and the summary's
report and chart compare the endpoints.

The days' tables are written through the warehouse with its schemas (no generation run): a day mixing three
endpoints (with fal billing), a day with one endpoint whose rejected_items file has no `endpoint_id` column (as
days written before the column), and a quiet day. The assets run through `dagster.materialize`; DuckDB reads the
real Parquet files.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from sora_pipeline.analytics.charts import summary_chart
from sora_pipeline.analytics.query import connect, endpoint_comparison_for
from sora_pipeline.analytics.stats import DAILY_STATS, daily_stats_rows
from sora_pipeline.defs.assets.analytics import generation_daily_stats, generation_summary
from sora_pipeline.defs.database_resource import LedgerDatabaseResource
from sora_pipeline.defs.warehouse_resource import WarehouseResource
from sora_pipeline.warehouse.schemas import FAL_BILLING, GENERATIONS, REJECTED_ITEMS, VIDEO_METADATA
from sora_pipeline.warehouse.tables import read_day_partition
from tests.pipeline_helpers import materializations

MIX, ONE, QUIET = "2026-11-20", "2026-11-21", "2026-11-22"
SORA, HAILUO, KLING = ("fal-ai/sora-2/image-to-video/pro", "fal-ai/minimax/hailuo-02/standard/image-to-video",
                       "fal-ai/kling-video/v2.1/standard/image-to-video")
T0 = datetime(2026, 11, 20, 12, tzinfo=UTC)
COUNTS = ("planned", "submitted", "completed", "failed", "unknown", "skipped", "pending", "rejected", "videos",
          "metadata_from_both", "unbilled_requests")
SUMS = ("seconds_generated", "estimated_cost_usd", "estimated_cost_run_usd", "priced_cost_usd", "total_file_size")

# (endpoint, status, error_type, latency s, seconds, estimated $, billed $) of each item of the mixed day
MIX_ITEMS = [
    (SORA, "completed", None, 30.0, 4.0, 1.2, 1.2), (SORA, "completed", None, 50.0, 8.0, 2.4, 2.4),
    (SORA, "completed", None, 90.0, 4.0, 2.0, 2.0),
    (HAILUO, "completed", None, 100.0, 6.0, 0.27, 0.27), (HAILUO, "completed", None, 140.0, 6.0, 0.27, 0.27),
    (HAILUO, "failed", "content_policy_violation", None, None, 0.27, None),
    (KLING, "completed", None, 200.0, 5.0, 0.25, 0.25), (KLING, "failed", "timeout", None, None, 0.25, None),
    (KLING, "skipped", "budget", None, None, 0.25, None),
]


def _generation(day: str, i: int, endpoint: str, status: str, error: str | None, latency: float | None,
                seconds: float | None, estimated: float) -> dict:
    submitted = None if status == "skipped" else T0 + timedelta(minutes=i)
    return dict(
        item_id=f"{day}-{i}", request_key=f"k-{day}-{i}", attempt=1, status=status,
        decision="skipped" if status == "skipped" else "submitted",
        request_id=None if status == "skipped" else f"req-{day}-{i}", resolution="720p", aspect_ratio="16:9",
        requested_duration=4, submitted_at=submitted, started_at=submitted and submitted + timedelta(seconds=5),
        completed_at=submitted + timedelta(seconds=latency) if latency is not None else None, error_type=error,
        estimated_cost=estimated, priced_cost=estimated if status == "completed" else None,
        seconds_generated=seconds, endpoint_id=endpoint, backend="fal")


def _video(g: dict, i: int) -> dict:
    width = 1280 if g["endpoint_id"] != HAILUO else 1360
    return dict(item_id=g["item_id"], request_id=g["request_id"], file_size=1000 * (i + 1), width=width, height=720,
                fps=24.0 if g["endpoint_id"] != KLING else 30.0, duration=g["seconds_generated"],
                metadata_source="api+probe", resolution="720p", aspect_ratio="16:9", requested_duration=4,
                submitted_at=g["submitted_at"], completed_at=g["completed_at"], endpoint_id=g["endpoint_id"],
                backend="fal")


def _rejected(rows: list[dict], with_endpoint: bool) -> pa.Table:
    """rejected_items rows; with `endpoint_id` as the catalog step now writes it, or without (an older day)."""
    schema = REJECTED_ITEMS.arrow_schema
    if not with_endpoint:
        schema = pa.schema([f for f in schema if f.name != "endpoint_id"])
    elif "endpoint_id" not in schema.names:
        schema = schema.append(pa.field("endpoint_id", pa.string()))
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)


def _write_days(wh: WarehouseResource) -> list[dict]:
    gens = [_generation(MIX, i, *item[:6]) for i, item in enumerate(MIX_ITEMS)]
    wh.write(GENERATIONS, MIX, gens)
    wh.write(VIDEO_METADATA, MIX, [_video(g, i) for i, g in enumerate(gens) if g["status"] == "completed"])
    wh.write(REJECTED_ITEMS, MIX, _rejected([
        dict(item_id="bad-a", row_index=9, field="duration", reason="duration 5", endpoint_id=SORA),
        dict(item_id="bad-h", row_index=10, field="prompt", reason="empty prompt", endpoint_id=HAILUO)], True))
    wh.write(FAL_BILLING, MIX, [
        dict(request_id=g["request_id"], item_id=g["item_id"], endpoint_id=g["endpoint_id"], backend="fal",
             estimated_cost_usd=g["estimated_cost"], billed_cost_usd=item[6],
             billing_source="billing_events" if item[6] is not None else None, known_to_ledger=True)
        for g, item in zip(gens, MIX_ITEMS) if g["request_id"]])
    one = [_generation(ONE, i, SORA, "completed", None, 40.0 + 20 * i, 4.0, 1.2) for i in range(2)]
    wh.write(GENERATIONS, ONE, one)
    wh.write(VIDEO_METADATA, ONE, [_video(g, i) for i, g in enumerate(one)])
    wh.write(REJECTED_ITEMS, ONE, _rejected([dict(item_id="old", row_index=3, field="duration", reason="5")], False))
    for table in (GENERATIONS, VIDEO_METADATA, REJECTED_ITEMS):
        wh.write(table, QUIET, [])
    return gens


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("endpoints")
    wh = WarehouseResource(warehouse_uri=str(tmp / "warehouse"),
                           database=LedgerDatabaseResource(url=f"sqlite:///{tmp / 'ledger.sqlite'}"))
    gens = _write_days(wh)
    results = {day: dg.materialize([generation_daily_stats], partition_key=day, resources={"warehouse": wh})
               for day in (MIX, ONE, QUIET)}
    results["summary"] = dg.materialize([generation_summary], resources={"warehouse": wh})
    assert all(r.success for r in results.values())
    return {"wh": wh.warehouse_uri, "results": results, "gens": gens}


def _latencies(gens: list[dict], endpoint: str | None = None) -> list[float]:
    return [(g["completed_at"] - g["submitted_at"]).total_seconds() for g in gens
            if g["status"] == "completed" and endpoint in (None, g["endpoint_id"])]


def _check_endpoint_rows(rows: list[dict], gens: list[dict]) -> None:
    """Three endpoints then `all`: each endpoint's own figures; the `all` row sums their counts, and its
    percentiles are over every item (not an average)."""
    assert [r["endpoint_id"] for r in rows] == [KLING, HAILUO, SORA, "all"]  # by name, `all` last
    by = {r["endpoint_id"]: r for r in rows}
    expect = {SORA: (3, 3, 0, 0, 1, 3), HAILUO: (3, 2, 1, 0, 1, 2), KLING: (3, 1, 1, 1, 0, 1)}
    for endpoint, (planned, completed, failed, skipped, rejected, videos) in expect.items():
        r = by[endpoint]
        assert (r["planned"], r["completed"], r["failed"], r["skipped"], r["rejected"], r["videos"]) == \
            (planned, completed, failed, skipped, rejected, videos), endpoint
        lat = _latencies(gens, endpoint)
        assert r["latency_p50_s"] == pytest.approx(np.percentile(lat, 50), abs=1e-3)
        assert r["latency_p95_s"] == pytest.approx(np.percentile(lat, 95), abs=1e-3)
    assert json.loads(by[HAILUO]["failed_by_type"]) == {"content_policy_violation": 1}
    assert json.loads(by[KLING]["failed_by_type"]) == {"timeout": 1}
    assert json.loads(by[KLING]["skipped_by_reason"]) == {"budget": 1}
    assert json.loads(by[HAILUO]["size_mix"]) == {"1360x720": 2} and json.loads(by[KLING]["fps_mix"]) == {"30.0": 1}
    assert by[SORA]["billed_cost_usd"] == pytest.approx(5.6) and by[HAILUO]["billed_cost_usd"] == pytest.approx(0.54)
    assert by[KLING]["unbilled_requests"] == 1  # the timed-out request: on fal, nothing billed yet
    total = by["all"]
    parts = [by[e] for e in (SORA, HAILUO, KLING)]
    for name in COUNTS:
        assert total[name] == sum(p[name] for p in parts), name
    for name in SUMS + ("billed_cost_usd",):
        assert total[name] == pytest.approx(sum(p[name] or 0 for p in parts)), name
    assert (total["planned"], total["completed"], total["rejected"]) == (9, 6, 2)
    assert total["success_rate"] == pytest.approx(6 / 9, abs=1e-4)
    lat = _latencies(gens)
    assert total["latency_p50_s"] == pytest.approx(np.percentile(lat, 50), abs=1e-3)
    assert total["latency_p95_s"] == pytest.approx(np.percentile(lat, 95), abs=1e-3)
    assert total["latency_max_s"] == pytest.approx(200.0)
    assert json.loads(total["failed_by_type"]) == {"content_policy_violation": 1, "timeout": 1}


def test_a_day_mixing_three_endpoints_has_a_row_per_endpoint_and_an_all_row(warehouse):
    rows = read_day_partition(warehouse["wh"], "generation_daily_stats", MIX).to_pylist()
    assert list(rows[0]) == DAILY_STATS.column_names
    _check_endpoint_rows(rows, warehouse["gens"])
    (mat,) = materializations(warehouse["results"][MIX], "generation_daily_stats")
    md = mat.metadata
    # the headline is the day's total
    assert md["dagster/row_count"].value == 4 and md["planned"].value == 9 and md["completed"].value == 6
    assert "### Per endpoint" in md["summary"].value and f"| {KLING} |" in md["summary"].value
    lineage = md["dagster/column_lineage"].column_lineage.deps_by_column
    assert ("generations", "endpoint_id") in {(d.asset_key.to_user_string(), d.column_name)
                                              for d in lineage["endpoint_id"]}


def test_a_single_endpoint_day_and_a_quiet_day_keep_one_row(warehouse):
    (one,) = read_day_partition(warehouse["wh"], "generation_daily_stats", ONE).to_pylist()
    # the rejected row has no endpoint (its file has no endpoint_id column): it still counts in the day's row
    assert (one["endpoint_id"], one["planned"], one["completed"], one["rejected"]) == (SORA, 2, 2, 1)
    (quiet,) = read_day_partition(warehouse["wh"], "generation_daily_stats", QUIET).to_pylist()
    assert (quiet["endpoint_id"], quiet["planned"], quiet["rejected"], quiet["videos"]) == ("all", 0, 0, 0)
    for day in (ONE, QUIET):
        (mat,) = materializations(warehouse["results"][day], "generation_daily_stats")
        assert mat.metadata["dagster/row_count"].value == 1 and "### Per endpoint" not in mat.metadata["summary"].value


def test_rejected_rows_count_for_their_endpoint_with_or_without_the_column():
    gens = pa.Table.from_pylist([_generation(MIX, 0, SORA, "completed", None, 10.0, 4.0, 1.2)],
                                schema=GENERATIONS.arrow_schema)
    rejected = [dict(item_id="r", row_index=1, field="duration", reason="5", endpoint_id=HAILUO)]
    rows = daily_stats_rows(MIX, gens, None, _rejected(rejected, True))  # a rejected-only endpoint is used too
    assert [(r["endpoint_id"], r["planned"], r["rejected"]) for r in rows] == [
        (HAILUO, 0, 1), (SORA, 1, 0), ("all", 1, 1)]
    (row,) = daily_stats_rows(MIX, gens, None, _rejected(rejected, False))
    assert (row["endpoint_id"], row["planned"], row["rejected"]) == (SORA, 1, 1)
    (row,) = daily_stats_rows(MIX, None, None, _rejected(rejected, True))  # only rejected rows: their endpoint
    assert (row["endpoint_id"], row["planned"], row["rejected"]) == (HAILUO, 0, 1)


def test_the_summary_has_rows_per_endpoint_and_compares_them(warehouse):
    from pathlib import Path

    import pyarrow.parquet as pq

    wh, gens = warehouse["wh"], warehouse["gens"]
    (mat,) = materializations(warehouse["results"]["summary"], "generation_summary")
    rows = pq.read_table(mat.metadata["dagster/uri"].value).to_pylist()
    assert [(r["scope"], str(r["day"]), r["endpoint_id"]) for r in rows] == [
        ("day", MIX, KLING), ("day", MIX, HAILUO), ("day", MIX, SORA), ("day", MIX, "all"), ("day", ONE, SORA),
        ("all", "None", KLING), ("all", "None", HAILUO), ("all", "None", SORA), ("all", "None", "all")]
    _check_endpoint_rows(rows[:4], gens)
    daily = read_day_partition(wh, "generation_daily_stats", MIX).to_pylist()
    assert [{k: r[k] for k in DAILY_STATS.column_names} for r in rows[:4]] == \
        [{k: r[k] for k in DAILY_STATS.column_names} for r in daily]
    by = {r["endpoint_id"]: r for r in rows if r["scope"] == "all"}
    # the second day's rejected row has no endpoint: it counts in that day's single row and in the total only
    assert (by[SORA]["planned"], by[SORA]["completed"], by[SORA]["rejected"], by[SORA]["days"]) == (5, 5, 1, 2)
    assert (by[HAILUO]["days"], str(by[HAILUO]["first_day"]), str(by[HAILUO]["last_day"])) == (1, MIX, MIX)
    total = by["all"]
    assert (total["days"], total["planned"], total["completed"], total["rejected"]) == (2, 11, 8, 3)
    lat = _latencies(gens) + [40.0, 60.0]
    assert total["latency_p95_s"] == pytest.approx(np.percentile(lat, 95), abs=1e-3)
    for name in COUNTS:
        assert total[name] == sum(by[e][name] for e in (SORA, HAILUO, KLING)) + (name == "rejected"), name
    md = mat.metadata
    assert md["days"].value == 2 and md["endpoints"].value == 3 and md["planned"].value == 11
    report = Path(wh, "generation_summary", "summary.md").read_text()
    for text in (md["summary"].value, report):
        section = text.split("### Per endpoint", 1)[1].split("###", 1)[0]
        lines = {line.split(" | ")[0].strip("|` "): line for line in section.splitlines() if "fal-ai/" in line}
        assert set(lines) == {SORA, HAILUO, KLING}
        cells = [c.strip() for c in lines[HAILUO].strip("|").split("|")]
        # videos, success, failed, content policy, timeouts, p50, p95, est. and billed $/video-s, sizes, fps
        assert cells[1:6] == ["2", "67%", "1", "1", "0"] and cells[8:10] == ["$0.0675", "$0.0450"]
        assert cells[10:] == ["1360x720: 2", "24.0: 2"] and "| 2026-11-21 |" in text  # … and the per-day view
    # the section is the endpoint_comparison view's rows (not a second computation)
    con = connect(wh)
    compared = endpoint_comparison_for(con, MIX, ONE)
    assert [r["endpoint_id"] for r in compared] == [KLING, HAILUO, SORA]
    # billed $/video-second over the requests fal billed: Sora's unreconciled day does not dilute it (5.6 / 16 s)
    by = {r["endpoint_id"]: r for r in compared}
    assert by[SORA]["billed_usd_per_video_second"] == pytest.approx(0.35)
    assert by[HAILUO]["billed_usd_per_video_second"] == pytest.approx(0.045)
    assert con.execute("SELECT sum(planned) FROM generation_daily_stats WHERE endpoint_id != 'all'").fetchone() == \
        (11,)
    png = Path(md["chart"].value).read_bytes()
    assert Image.open(io.BytesIO(png)).size == (960, 528)  # two rows of panels: the days, then the endpoints


def test_the_summary_chart_compares_endpoints_only_when_there_are_several(warehouse):
    con = connect(warehouse["wh"])
    endpoints = endpoint_comparison_for(con, MIX, ONE)
    day = {"day": MIX, "planned": 9, "completed": 6, "latency_p50_s": 95.0, "latency_p95_s": 190.0}
    several = Image.open(io.BytesIO(summary_chart([day], {"resolution_mix": '{"720p": 6}'}, endpoints)))
    one = Image.open(io.BytesIO(summary_chart([day], {}, endpoints[:1])))
    assert several.size == (960, 528) and one.size == (960, 256)
