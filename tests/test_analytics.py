"""Analytics: `generation_daily_stats` and `generation_summary` over two materialized days against the simulator,
the DuckDB views of `sora_pipeline.analytics.query.connect` (and the README's queries), a memory:// warehouse, the demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from sora_pipeline.analytics.query import connect, views
from sora_pipeline.simulator import SimulatorConfig, SimulatorServer
from sora_pipeline.analytics.report import headline_markdown
from sora_pipeline.analytics.stats import DAILY_STATS, SUMMARY, daily_stats_row
from sora_pipeline.warehouse.tables import read_day_partition, read_table
from tests.support.fixtures import catalog_rows, make_project, materialize_day, resources, write_catalog, write_images
from tests.pipeline_helpers import materializations, materialize_summary

ROOT = Path(__file__).resolve().parents[1]
D1, D2 = "2026-11-20", "2026-11-21"


def _rows():
    """Day 1: it0..it3 (all succeed). Day 2: b0..b2 succeed, one fails at fal, one has an undecodable image,
    one row is rejected by validation (duration 5)."""
    day2 = catalog_rows(day=D2, n=3, prefix="b") + [
        dict(catalog_rows(day=D2, n=1, prefix="fail")[0], prompt="a storm [simulate-failure]"),
        dict(catalog_rows(day=D2, n=1, prefix="junk")[0], image_uri="../images/junk.png"),
        dict(catalog_rows(day=D2, n=1, prefix="bad")[0], duration=5),
    ]
    return catalog_rows(day=D1, n=4) + day2


@pytest.fixture(scope="module")
def two_days(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analytics")
    sim = SimulatorServer(SimulatorConfig(queue_latency=0.3, run_latency=0.3,
                                          video_cache_dir=str(tmp_path_factory.mktemp("cache")))).start()
    try:
        project = make_project(tmp, _rows())
        (tmp / "data/images/junk.png").write_bytes(b"not a png")
        res = resources(sim.base_url, project)
        results = {day: materialize_day(res, day=day) for day in (D1, D2)}
        results["summary"] = materialize_summary(res)
        assert all(r.success for r in results.values())
        yield {"project": project, "results": results, "wh": project["warehouse_uri"], "sim": sim.stats()}
    finally:
        sim.stop()


def _latencies(wh: str, day: str | None = None) -> list[float]:
    table = read_table(wh, "generations").to_pylist()
    return [(g["completed_at"] - g["submitted_at"]).total_seconds() for g in table
            if g["status"] == "completed" and (day is None or str(g["date"]) == day)]


def test_daily_stats_numbers(two_days):
    wh = two_days["wh"]
    s1 = read_day_partition(wh, "generation_daily_stats", D1).to_pylist()[0]
    s2 = read_day_partition(wh, "generation_daily_stats", D2).to_pylist()[0]
    assert (s1["planned"], s1["submitted"], s1["completed"], s1["failed"], s1["rejected"]) == (4, 4, 4, 0, 0)
    assert (s2["planned"], s2["submitted"], s2["completed"], s2["failed"], s2["rejected"]) == (5, 4, 3, 2, 1)
    assert json.loads(s2["failed_by_type"]) == {"request_failed": 1, "invalid_image": 1}
    assert json.loads(s2["rejected_by_field"]) == {"duration": 1}
    assert s1["success_rate"] == 1.0 and s2["success_rate"] == 0.6
    # prices 720p $0.30/s, 1080p $0.50/s, auto = the dearest: estimates by what was asked; actual by output size
    assert s1["estimated_cost_usd"] == pytest.approx(0.3 * 4 + 0.5 * 4 + 0.5 * 8 + 0.5 * 4)
    assert s1["priced_cost_usd"] == pytest.approx(0.3 * 4 + 0.3 * 4 + 0.3 * 8 + 0.5 * 4)  # auto → 720p output
    # day 2: b0 720p 4 s, b1 auto 4 s, b2 auto 8 s, fail0 (720p 4 s, failed at fal: estimated, not charged)
    assert s2["estimated_cost_usd"] == pytest.approx(1.2 + 2.0 + 4.0 + 1.2)
    assert s2["priced_cost_usd"] == pytest.approx(1.2 + 1.2 + 2.4)
    assert s1["seconds_generated"] == pytest.approx(20) and s2["seconds_generated"] == pytest.approx(16)
    for s, day in ((s1, D1), (s2, D2)):
        lat = _latencies(wh, day)
        assert s["latency_p50_s"] == pytest.approx(np.percentile(lat, 50), abs=1e-3)
        assert s["latency_p95_s"] == pytest.approx(np.percentile(lat, 95), abs=1e-3)
        assert s["latency_max_s"] == pytest.approx(max(lat), abs=1e-3)
        # queue (IN_QUEUE) and run (IN_PROGRESS) time, from the status answers: both ≈ 0.3 s in the simulator
        assert 0.2 < s["queue_p50_s"] < s["latency_p50_s"] and 0.2 < s["run_p50_s"] < s["latency_p50_s"]
        assert s["metadata_from_both"] == s["completed"] and s["metadata_from_probe"] == 0
    assert json.loads(s1["resolution_mix"]) == {"1080p": 1, "720p": 1, "auto": 2}
    assert json.loads(s1["size_mix"]) == {"1280x720": 1, "1920x1080": 1, "720x1280": 2}
    assert json.loads(s1["duration_mix"]) == {"4": 3, "8": 1} and json.loads(s1["fps_mix"]) == {"24.0": 4}
    videos = read_day_partition(wh, "video_metadata", D1).to_pylist()
    assert s1["max_file_size"] == max(v["file_size"] for v in videos)
    assert s1["mean_file_size"] == pytest.approx(np.mean([v["file_size"] for v in videos]), abs=0.1)
    assert pq.read_schema(next(Path(wh, "generation_daily_stats", f"date={D1}").glob("*.parquet"))).names == \
        DAILY_STATS.column_names


def test_daily_stats_materialization_metadata(two_days):
    (mat,) = materializations(two_days["results"][D2], "generation_daily_stats")
    md = mat.metadata
    assert md["dagster/row_count"].value == 1 and md["planned"].value == 5 and md["completed"].value == 3
    assert md["priced_cost_usd"].value == pytest.approx(4.8)
    assert "| failed_by_type |" in md["summary"].value and "data:image/png;base64," in md["summary"].value
    chart = md["chart"].value
    assert chart.endswith(f"date={D2}.png") and Path(chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lineage = md["dagster/column_lineage"].column_lineage.deps_by_column
    assert {(d.asset_key.to_user_string(), d.column_name) for d in lineage["latency_p95_s"]} == {
        ("generations", "submitted_at"), ("generations", "completed_at")}


def test_summary_over_two_days(two_days):
    wh = two_days["wh"]
    (mat,) = materializations(two_days["results"]["summary"], "generation_summary")
    uri = mat.metadata["dagster/uri"].value
    assert uri == os.path.join(wh, "generation_summary", "summary.parquet")
    rows = pq.read_table(uri).to_pylist()
    assert pq.read_schema(uri).names == SUMMARY.column_names
    assert [(r["scope"], str(r["day"])) for r in rows] == [("day", D1), ("day", D2), ("all", "None")]
    total = rows[-1]
    assert (total["days"], str(total["first_day"]), str(total["last_day"])) == (2, D1, D2)
    assert (total["planned"], total["completed"], total["failed"], total["rejected"]) == (9, 7, 2, 1)
    assert total["estimated_cost_usd"] == pytest.approx(9.2 + 8.4)
    assert total["priced_cost_usd"] == pytest.approx(6.8 + 4.8)
    assert total["seconds_generated"] == pytest.approx(36)
    lat = _latencies(wh)  # the total's percentiles are over every item, not an average of the days'
    assert total["latency_p95_s"] == pytest.approx(np.percentile(lat, 95), abs=1e-3)
    assert total["latency_max_s"] == pytest.approx(max(lat), abs=1e-3)
    assert json.loads(total["failed_by_type"]) == {"invalid_image": 1, "request_failed": 1}
    assert json.loads(total["resolution_mix"]) == {"1080p": 1, "720p": 2, "auto": 4}
    # the day rows equal the daily stats table
    for r in rows[:2]:
        daily = read_day_partition(wh, "generation_daily_stats", str(r["day"])).to_pylist()[0]
        assert {k: r[k] for k in DAILY_STATS.column_names} == daily
    md = mat.metadata
    assert md["days"].value == 2 and md["completed"].value == 7
    assert "data:image/png;base64," in md["summary"].value and "### Per day" in md["summary"].value
    assert "dagster/column_lineage" in md and "dagster/column_schema" in md
    assert Path(md["chart"].value).read_bytes()[:4] == b"\x89PNG"
    assert "![chart](summary.png)" in Path(wh, "generation_summary", "summary.md").read_text()


def test_connect_views_and_readme_queries(two_days):
    con = connect(two_days["wh"])
    assert set(views(con)) == {"video_metadata", "generations", "failed_generations", "rejected_items",
                               "catalog_items", "fal_billing", "endpoint_comparison", "generation_daily_stats", "generation_summary"}
    assert con.execute("SELECT date, count(*) FROM video_metadata GROUP BY date ORDER BY date").fetchall() == [
        (__import__("datetime").date(2026, 11, 20), 4), (__import__("datetime").date(2026, 11, 21), 3)]
    assert con.execute("SELECT count(*) FROM failed_generations").fetchall() == [(2,)]
    assert con.execute("SELECT item_id, field FROM rejected_items").fetchall() == [("bad0", "duration")]
    assert con.execute("SELECT sum(planned) FROM generation_daily_stats").fetchall() == [(9,)]
    # the README's queries (every ```sql block of the "Querying with DuckDB" section) run and return rows
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Querying with DuckDB", 1)[1].split("\n## ", 1)[0]
    queries = re.findall(r"```sql\n(.*?)```", section, re.S)
    assert len(queries) >= 3
    for q in queries:
        rel = con.sql(q)
        assert rel.fetchall(), q


def test_connect_empty_and_missing_tables(tmp_path):
    con = connect(str(tmp_path / "nothing"))
    assert views(con) == []
    con = connect(str(tmp_path / "nothing"), empty_missing=True)
    assert "generations" in views(con) and con.execute("SELECT count(*) FROM generations").fetchone() == (0,)
    row = daily_stats_row(D1, None, None, None)
    assert row["planned"] == 0 and row["success_rate"] is None and row["latency_p50_s"] is None
    assert row["failed_by_type"] == "{}" and "| planned | 0 |" in headline_markdown(row)


def test_memory_warehouse_summary(tmp_path, simulator):
    fs = fsspec.filesystem("memory")
    if fs.exists("/sora-analytics"):
        fs.rm("/sora-analytics", recursive=True)
    write_images("memory://sora-analytics/data")
    write_catalog("memory://sora-analytics/data/catalog", catalog_rows(n=2) + catalog_rows(day=D2, n=1, prefix="b"))
    wh = "memory://sora-analytics/warehouse"
    project = {"catalog_uri": "memory://sora-analytics/data/catalog", "warehouse_uri": wh,
               "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}"}
    res = resources(simulator.base_url, project)
    assert materialize_day(res, day=D1).success
    assert materialize_day(res, day=D2).success
    result = materialize_summary(res)
    (mat,) = materializations(result, "generation_summary")
    assert mat.metadata["dagster/uri"].value == f"{wh}/generation_summary/summary.parquet"
    with fs.open("/sora-analytics/warehouse/generation_summary/summary.parquet", "rb") as fh:
        total = pq.read_table(fh).to_pylist()[-1]
    assert (total["scope"], total["days"], total["planned"], total["completed"]) == ("all", 2, 3, 3)
    assert fs.exists("/sora-analytics/warehouse/generation_summary/summary.png")
    con = connect(wh)
    assert {"video_metadata", "generation_summary", "generation_daily_stats"} <= set(views(con))
    assert con.execute("SELECT count(*), count(DISTINCT date) FROM video_metadata").fetchone() == (3, 2)


def test_demo_prints_a_summary_not_dagster_logs(tmp_path):
    project = make_project(tmp_path, catalog_rows(n=2) + [dict(catalog_rows(n=1, prefix="bad")[0], duration=5)])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORA_", "FAL_", "DAGSTER_HOME"))}
    env.update(SORA_CATALOG_URI=project["catalog_uri"], SORA_WAREHOUSE_URI=project["warehouse_uri"],
               SORA_POLL_INTERVAL="0.1")
    proc = subprocess.run([sys.executable, "-m", "sora_pipeline.demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    out = proc.stdout
    assert "video_metadata: 2 video(s)" in out and "generation_summary" in out and "all days" in out
    assert "rejected 2026-11-20: row 2 (item_id='bad0'): duration" in out
    assert " - dagster - " not in out + proc.stderr  # Dagster's console log lines are silenced
    assert "DEBUG" not in out + proc.stderr and "STEP_SUCCESS" not in out + proc.stderr
