"""The catalog step in Dagster: a day full of rejected rows costs a bounded number of events and bytes of metadata;
the catalog's two tables are selected together; a step whose day's upstream table was never written fails saying
what to materialize first (never an empty day); rows that no day reads are named by the `catalog_dates` check."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sora_pipeline.defs.assets.catalog import catalog_slice
from sora_pipeline.defs.checks import catalog_dates_check, no_rejected_rows
from sora_pipeline.defs.code_location import defs
from sora_pipeline.warehouse.tables import read_day_partition
from tests.support.fixtures import DAILY_SELECTION, DAY, catalog_rows, make_project, resources
from tests.pipeline_helpers import check_results, materializations

N_REJECTED = 3000
KINDS = ("prompt", "resolution", "image_uri", "duration")


def rejected_rows(n: int) -> list[dict]:
    """`n` rows of the day, each breaking one rule (in turn: no prompt, 4k, plain http, 5 s)."""
    rows = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        rows.append({"item_id": f"bad{i:05d}", "prompt": None if kind == "prompt" else f"prompt {i}",
                     "image_uri": f"http://img.example/{i}.png" if kind == "image_uri" else "../images/land.png",
                     "scheduled_date": dt.date.fromisoformat(DAY), "resolution": "4k" if kind == "resolution" else
                     "720p", "aspect_ratio": "16:9", "duration": 5 if kind == "duration" else 4})
    return rows


def failure_message(result) -> str:
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return event.event_specific_data.error.message


def test_many_rejected_rows_log_a_bounded_number_of_events_and_metadata(tmp_path):
    project = make_project(tmp_path, catalog_rows(n=1) + rejected_rows(N_REJECTED))
    res = resources("http://127.0.0.1:9", project)  # the catalog step never calls fal
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:  # SQLite event log
        result = dg.materialize([catalog_slice, no_rejected_rows, catalog_dates_check], partition_key=DAY,
                                resources=res, instance=instance)
        assert result.success
        logs = instance.all_logs(result.run_id)
    assert len(logs) < 80, len(logs)  # one event per rejected row before: > 3,000
    warnings = [e.user_message for e in logs if e.level >= 30 and e.dagster_event is None]
    assert len(warnings) == 1 and warnings[0].startswith(f"{N_REJECTED:,} rows rejected (by field:")
    assert len(warnings[0].splitlines()) <= 40
    (mat,) = materializations(result, "rejected_items")
    assert mat.metadata["dagster/row_count"].value == N_REJECTED
    assert mat.metadata["rejected_by_field"].value == {k: N_REJECTED // len(KINDS) for k in KINDS}
    size = sum(len(json.dumps(str(v.value))) for v in mat.metadata.values())
    assert size < 16_000, size  # every reason in one value before: > 300 KB
    assert "… and 2,980 more" in mat.metadata["reasons"].value
    by_reason = mat.metadata["rejected_by_reason"].value
    assert f"- {N_REJECTED // len(KINDS):,} × prompt: missing" in by_reason.splitlines()
    table = read_day_partition(project["warehouse_uri"], "rejected_items", DAY)
    assert table.num_rows == N_REJECTED  # every row is in the table
    assert read_day_partition(project["warehouse_uri"], "catalog_items", DAY).num_rows == 1
    check = next(e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                 and e.event_specific_data.check_name == "no_rejected_rows")
    assert not check.passed and check.metadata["failures"].value == N_REJECTED


def test_the_catalog_tables_are_selected_together():
    graph = defs.resolve_asset_graph()
    selection = dg.AssetSelection.from_coercible(["+generation_daily_stats"])
    keys = {k.to_user_string() for k in selection.resolve(graph)}
    assert "rejected_items" in keys and "generations" in keys and "catalog_items" not in keys
    # the catalog cannot be subset: Dagster adds catalog_items (the UI asks to), or refuses the selection
    neighbors = {k.to_user_string() for k in selection.required_multi_asset_neighbors().resolve(graph)}
    assert "catalog_items" in neighbors
    job = defs.resolve_implicit_global_asset_job_def()
    with pytest.raises(dg.DagsterInvalidSubsetError, match="catalog_items"):
        job.get_subset(asset_selection=selection.resolve(graph))


def test_upstream_of_the_daily_stats_on_a_new_day_generates_the_days_items(tmp_path, simulator):
    project = make_project(tmp_path)  # 4 valid rows for DAY, never materialized
    selection = dg.AssetSelection.from_coercible(["+generation_daily_stats"]).required_multi_asset_neighbors()
    result = dg.materialize(DAILY_SELECTION, selection=selection, partition_key=DAY,
                            resources=resources(simulator.base_url, project))
    assert result.success
    generations = read_day_partition(project["warehouse_uri"], "generations", DAY).to_pylist()
    assert sorted(r["item_id"] for r in generations) == ["it0", "it1", "it2", "it3"]
    assert simulator.stats()["submits"] == 4


def test_generations_without_the_days_catalog_items_fails_naming_what_to_materialize(tmp_path, simulator):
    project = make_project(tmp_path)
    result = dg.materialize(DAILY_SELECTION, selection=["generations", "failed_generations"], partition_key=DAY,
                            resources=resources(simulator.base_url, project), raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert f"catalog_items for {DAY} does not exist" in message and "materialize catalog_items" in message
    assert "\n" not in message.strip()
    assert simulator.stats()["submits"] == 0
    assert read_day_partition(project["warehouse_uri"], "generations", DAY) is None


def test_a_day_written_with_no_rows_is_read_as_no_rows(tmp_path):
    project = make_project(tmp_path, catalog_rows(day="2026-11-21"))  # nothing for DAY: catalog_items has 0 rows
    result = dg.materialize([catalog_slice, no_rejected_rows], partition_key=DAY,
                            resources=resources("http://127.0.0.1:9", project))
    assert result.success and check_results(result) == {"no_rejected_rows": True}
    assert read_day_partition(project["warehouse_uri"], "catalog_items", DAY).num_rows == 0


def test_the_catalog_dates_check_names_rows_that_no_day_reads(tmp_path):
    project = make_project(tmp_path, catalog_rows(n=2))
    day = pa.array([DAY, "12/01/2026", None, " 2026-11-20T08:00", "2026-02-30"], pa.string())
    pq.write_table(pa.table({"item_id": ["s0", "s1", "s2", "s3", "s4"], "prompt": ["a lake at dawn"] * 5,
                             "image_uri": ["../images/land.png"] * 5, "scheduled_date": day}),
                   f"{project['catalog_uri']}/strings.parquet")
    result = dg.materialize([catalog_slice, catalog_dates_check], partition_key=DAY,
                            resources=resources("http://127.0.0.1:9", project))
    assert result.success  # a warning: the day itself runs
    items = read_day_partition(project["warehouse_uri"], "catalog_items", DAY).to_pylist()
    assert sorted(r["item_id"] for r in items) == ["it0", "it1", "s0", "s3"]  # ISO strings are dates
    (check,) = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert check.check_name == "catalog_dates" and not check.passed
    assert check.metadata["undated_rows"].value == 3
    assert check.metadata["examples"].value.splitlines() == [
        "- strings.parquet row 1 (item_id=s1): scheduled_date '12/01/2026' is not a date (use YYYY-MM-DD)",
        "- strings.parquet row 2 (item_id=s2): scheduled_date is missing",
        "- strings.parquet row 4 (item_id=s4): scheduled_date '2026-02-30' is not a date (use YYYY-MM-DD)"]
