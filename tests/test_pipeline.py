"""End-to-end materializations through Dagster against the real simulator on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pyarrow.parquet as pq
import pytest

from sora_pipeline.media.probe import probe_video
from sora_pipeline.warehouse.tables import read_day_partition
from tests.support.fixtures import (DAY, catalog_rows, make_project, materialize_day, resources, write_catalog,
                                    write_images)
from tests.pipeline_helpers import check_results, materializations

EXPECTED_DIMS = {"it0": (1280, 720), "it1": (720, 1280), "it2": (720, 1280), "it3": (1920, 1080)}


@pytest.mark.parametrize("include_metadata", [True, False])
def test_sample_day_metadata_equals_the_files(tmp_path, make_simulator, include_metadata):
    sim = make_simulator(include_metadata=include_metadata)
    project = make_project(tmp_path)
    result = materialize_day(resources(sim.base_url, project))
    assert result.success
    table = read_day_partition(project["warehouse_uri"], "video_metadata", DAY).to_pylist()
    assert sorted(r["item_id"] for r in table) == ["it0", "it1", "it2", "it3"]
    for row in table:
        probe = probe_video(row["archive_uri"])  # the archived file, probed independently
        assert (row["width"], row["height"]) == (probe.width, probe.height) == EXPECTED_DIMS[row["item_id"]]
        assert row["num_frames"] == probe.num_frames and row["fps"] == probe.fps
        assert abs(row["duration"] - probe.duration) < 1e-6
        assert abs(row["duration"] - row["requested_duration"]) <= 0.5
        assert row["metadata_source"] == ("api+probe" if include_metadata else "probe")
        assert row["backend"] == "simulator" and row["endpoint_id"] == "fal-ai/sora-2/image-to-video/pro"
        assert row["file_size"] == os.path.getsize(row["archive_uri"]) and len(row["sha256"]) == 64
        assert row["submitted_at"] <= row["completed_at"]
    checks = check_results(result)
    # the sample day asks `auto` (estimated at the dearest tier) and gets 720p: its money check warns (tests/test_billing.py)
    assert checks.pop("fal_billing_matches_estimate") is False
    assert checks == {name: True for name in (
        "video_dimensions_match_request", "frame_count_consistent", "duration_matches_request", "item_id_unique",
        "no_rejected_rows", "catalog_dates")}, check_results(result)
    # the contract's column types
    schema = pq.read_schema(next((tmp_path / "warehouse/video_metadata" / f"date={DAY}").glob("*.parquet")))
    assert str(schema.field("width").type) == "int32" and str(schema.field("num_frames").type) == "int64"
    assert str(schema.field("submitted_at").type) == "timestamp[us, tz=UTC]"


def test_lineage_and_observability_metadata(tmp_path, simulator):
    result = materialize_day(resources(simulator.base_url, make_project(tmp_path)))
    for key in ("catalog_items", "rejected_items", "generations", "failed_generations", "video_metadata"):
        (mat,) = materializations(result, key)
        md = mat.metadata
        assert {"dagster/row_count", "dagster/column_schema", "dagster/table_name", "dagster/uri"} <= set(md)
        assert all(c.description for c in md["dagster/column_schema"].schema.columns)
    lineage = materializations(result, "video_metadata")[0].metadata["dagster/column_lineage"].column_lineage
    deps = {d.column_name for d in lineage.deps_by_column["requested_duration"]}
    assert deps == {"duration"}
    gen = materializations(result, "generations")[0].metadata
    assert gen["estimated_cost_usd"].value == pytest.approx(0.3 * 4 + 0.5 * 4 + 0.5 * 8 + 0.5 * 4)
    defs = __import__("sora_pipeline.definitions", fromlist=["defs"]).defs
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if node.is_materializable:
            assert node.code_version and node.group_name and node.description, key


def test_bad_rows_are_rejected_and_the_day_still_runs(tmp_path, simulator):
    rows = catalog_rows(n=2) + [
        dict(catalog_rows(n=1, prefix="dur")[0], duration=5),
        dict(catalog_rows(n=1, prefix="blank")[0], prompt="   "),
        dict(catalog_rows(n=1, prefix="trav")[0], image_uri="../../../../etc/passwd"),
        dict(catalog_rows(n=1, prefix="res")[0], resolution="4k"),
    ]
    project = make_project(tmp_path, rows)
    result = materialize_day(resources(simulator.base_url, project))
    assert result.success
    rejected = read_day_partition(project["warehouse_uri"], "rejected_items", DAY).to_pylist()
    by_id = {r["item_id"]: r for r in rejected}
    assert set(by_id) == {"dur0", "blank0", "trav0", "res0"}
    assert by_id["dur0"]["field"] == "duration" and "dur0" in by_id["dur0"]["reason"]
    assert by_id["trav0"]["field"] == "image_uri" and by_id["blank0"]["field"] == "prompt"
    assert all("\n" not in r["reason"] for r in rejected)
    assert len(read_day_partition(project["warehouse_uri"], "video_metadata", DAY)) == 2
    assert check_results(result)["no_rejected_rows"] is False  # a warning, the run still succeeds


def test_undecodable_image_fails_the_item_not_the_day(tmp_path, simulator):
    rows = catalog_rows(n=2)
    project = make_project(tmp_path, rows + [dict(catalog_rows(n=1, prefix="junk")[0],
                                                  image_uri="../images/junk.png")])
    (tmp_path / "data/images/junk.png").write_bytes(b"definitely not a png")
    result = materialize_day(resources(simulator.base_url, project))
    assert result.success
    failed = read_day_partition(project["warehouse_uri"], "failed_generations", DAY).to_pylist()
    assert [(f["item_id"], f["status"]) for f in failed] == [("junk0", "failed")]
    assert "image_uri" in failed[0]["reason"] and "decode" in failed[0]["reason"]
    assert simulator.stats()["submits"] == 2


def test_memory_catalog_and_warehouse(tmp_path, simulator):
    import fsspec

    fsspec.filesystem("memory").rm("/sora-test", recursive=True) if fsspec.filesystem("memory").exists(
        "/sora-test") else None
    write_images("memory://sora-test/data")
    write_catalog("memory://sora-test/data/catalog", catalog_rows(n=2))
    project = {"catalog_uri": "memory://sora-test/data/catalog", "warehouse_uri": "memory://sora-test/warehouse",
               "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}"}
    result = materialize_day(resources(simulator.base_url, project))
    assert result.success
    rows = read_day_partition("memory://sora-test/warehouse", "video_metadata", DAY).to_pylist()
    assert len(rows) == 2
    fs = fsspec.filesystem("memory")
    assert all(fs.exists(r["archive_uri"]) and fs.size(r["archive_uri"]) == r["file_size"] for r in rows)


def test_rematerializing_a_completed_day_submits_nothing(tmp_path, simulator):
    project = make_project(tmp_path)
    res = resources(simulator.base_url, project)
    assert materialize_day(res).success
    first = read_day_partition(project["warehouse_uri"], "video_metadata", DAY)
    submits = simulator.stats()["submits"]
    result = materialize_day(res)
    assert result.success and simulator.stats()["submits"] == submits == 4
    assert read_day_partition(project["warehouse_uri"], "video_metadata", DAY).equals(first)
    gen = materializations(result, "generations")[0].metadata
    assert gen["decision_counts"].data == {"reused": 4}


def test_definitions_load_and_automation(tmp_path, monkeypatch):
    from sora_pipeline.defs.automation import catalog_change_sensor, daily_generation_schedule
    from sora_pipeline.definitions import defs
    from tests.support.fixtures import warehouse_resource

    defs.resolve_all_job_defs()
    assert defs.resolve_job_def("daily_generation_job").partitions_def is not None
    ctx = dg.build_schedule_context(scheduled_execution_time=__import__("datetime").datetime(
        2026, 11, 21, 0, 15, tzinfo=__import__("datetime").timezone.utc))
    (request,) = list(daily_generation_schedule.evaluate_tick(ctx).run_requests)
    assert request.partition_key == "2026-11-21"
    assert daily_generation_schedule.default_status == dg.DefaultScheduleStatus.STOPPED

    project = make_project(tmp_path, catalog_rows(n=2) + catalog_rows(day="2026-11-21", n=1, prefix="b"))
    wh = warehouse_resource(project)
    with dg.build_sensor_context(resources={"warehouse": wh}) as ctx:
        first = catalog_change_sensor(ctx)
        assert sorted(r.partition_key for r in first) == ["2026-11-20", "2026-11-21"]
        ctx.update_cursor(ctx.cursor)
        with monkeypatch.context() as m:  # nothing written: decided from the file listing, no row read
            m.setattr("sora_pipeline.defs.automation.catalog_fingerprints", lambda *a, **k: pytest.fail("rows read"))
            assert isinstance(catalog_change_sensor(ctx), dg.SkipReason)  # no duplicate requests
        write_catalog(project["catalog_uri"], [dict(catalog_rows(day="2026-11-21", n=1, prefix="c")[0])],
                      name="part-1.parquet")
        (again,) = catalog_change_sensor(ctx)
        assert again.partition_key == "2026-11-21"
        days = json.loads(ctx.cursor)["days"]
        ctx.update_cursor(json.dumps(days))  # a cursor from before the file signature: rows are compared
        assert isinstance(catalog_change_sensor(ctx), dg.SkipReason)


def test_cli_materialize_with_embedded_simulator(tmp_path):
    project = make_project(tmp_path, catalog_rows(n=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORA_", "FAL_"))}
    env.update(SORA_CATALOG_URI=project["catalog_uri"], SORA_WAREHOUSE_URI=project["warehouse_uri"],
               SORA_POLL_INTERVAL="0.1", DAGSTER_HOME=str(tmp_path / "dh"))
    os.makedirs(env["DAGSTER_HOME"])
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "dagster"), "asset", "materialize",
                           "-m", "sora_pipeline.definitions", "--select", "+video_metadata", "--partition", DAY],
                          env=env, capture_output=True, text=True, timeout=300, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EMBEDDED fal SIMULATOR" in proc.stderr
    rows = read_day_partition(project["warehouse_uri"], "video_metadata", DAY).to_pylist()
    assert len(rows) == 2 and {r["backend"] for r in rows} == {"simulator"}
    assert json.loads(json.dumps([r["item_id"] for r in rows])) == ["it0", "it1"]
