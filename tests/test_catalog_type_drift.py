"""A catalog whose Parquet files disagree on a column's type (duration int64 here, string there; scheduled_date
date32 / string / timestamp; item_id string / int64) still runs every day: well-typed rows go through, a value
that cannot be used is a rejected row naming the row, the field, the file and its type, and the catalog-wide
item_id check spans every file. Uniform catalogs keep the one-scan fast path."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sora_pipeline.catalog import reader as catalog_mod
from sora_pipeline.catalog import catalog_fingerprints, read_catalog_day, write_catalog
from sora_pipeline.fal.models import Duration
from sora_pipeline.warehouse.tables import read_day_partition
from tests.support.fixtures import DAY, make_project, materialize_day, resources

D1, D2 = date(2026, 11, 20), date(2026, 11, 21)
IMG = "https://img.example.com/a.png"


def table(columns: dict, types: dict | None = None) -> pa.Table:
    n = len(next(iter(columns.values())))
    base = {"prompt": ["a fox at dawn"] * n, "image_uri": [IMG] * n}
    types = {"item_id": pa.string(), "prompt": pa.string(), "image_uri": pa.string(),
             "scheduled_date": pa.date32(), "duration": pa.int64(), **(types or {})}
    cols = {**base, **columns}
    return pa.table({k: pa.array(v, type=types.get(k)) for k, v in cols.items()})


@pytest.fixture
def drifting(tmp_path) -> Path:
    """Three files: the usual types; duration and scheduled_date as strings; item_id as int64."""
    cat = tmp_path / "catalog"
    cat.mkdir()
    pq.write_table(table({"item_id": ["a", "dup", "7", "b"], "scheduled_date": [D1, D1, D1, D2],
                          "duration": [4, 8, None, 12]}), cat / "part-0.parquet")
    pq.write_table(table({"item_id": ["s1", "s2", "s3", "s4", "dup", "s6"],
                          "scheduled_date": ["2026-11-20", " 2026-11-20T08:00 ", "2026-11-20", "someday",
                                             "2026-11-21", None],
                          "duration": ["8", "x", None, "4", "4", "4"]},
                         {"scheduled_date": pa.string(), "duration": pa.string()}), cat / "part-1.parquet")
    (cat / "sub").mkdir()
    pq.write_table(table({"item_id": [7, 8, None], "scheduled_date": [D2, D1, D1], "duration": [4, 4, 4],
                          "note": [1, 2, 3]},  # a non-contract column of another type as well
                         {"item_id": pa.int64()}), cat / "sub" / "part-2.parquet")
    return cat


def test_a_drifting_catalog_reads_each_day(drifting):
    sl = read_catalog_day(str(drifting), D1)
    assert [(i.item_id, i.duration, i.row_index) for i in sl.valid] == [
        ("a", Duration.S4, 0), ("s1", Duration.S8, 3), ("s3", Duration.S4, 5)]
    assert sl.rows_scanned == 8
    assert {r.row_index: (r.field, r.reason) for r in sl.rejected} == {
        1: ("item_id", "row 1 (item_id='dup'): item_id: 'dup' is shared by 2 rows of the catalog (must be unique)"),
        2: ("item_id", "row 2 (item_id='7'): item_id: '7' is shared by 2 rows of the catalog (must be unique)"),
        4: ("duration", "row 4 (item_id='s2'): duration: 'x' is string in catalog file 'part-1.parquet' "
                        "(expected a whole number of seconds)"),
        6: ("item_id", "row 6 (item_id=8): item_id: 8 is int64 in catalog file 'sub/part-2.parquet' "
                       "(expected a string)"),
        7: ("item_id", "row 7 (item_id=None): item_id: missing"),
    }
    by_row = {r.row_index: r for r in sl.rejected}
    assert by_row[6].item_id is None and by_row[6].raw["item_id"] == "8"  # the value as the file holds it
    assert by_row[4].raw["duration"] == "x" and by_row[4].raw["scheduled_date"] == "2026-11-20"

    sl2 = read_catalog_day(str(drifting), D2)
    assert [i.item_id for i in sl2.valid] == ["b"]
    assert {r.row_index: r.reason for r in sl2.rejected} == {
        1: "row 1 (item_id='dup'): item_id: 'dup' is shared by 2 rows of the catalog (must be unique)",
        2: "row 2 (item_id=7): item_id: 7 is int64 in catalog file 'sub/part-2.parquet' (expected a string)"}
    assert read_catalog_day(str(drifting), date(2026, 11, 22)).valid == []


def test_fingerprints_of_a_drifting_catalog(drifting):
    first = catalog_fingerprints(str(drifting))
    assert list(first) == ["2026-11-20", "2026-11-21"] and first == catalog_fingerprints(str(drifting))
    pq.write_table(table({"item_id": [7, 8, None], "scheduled_date": [D2, D1, D1], "duration": [4, 8, 4]},
                         {"item_id": pa.int64()}), drifting / "sub" / "part-2.parquet")
    changed = catalog_fingerprints(str(drifting))
    assert changed["2026-11-20"] != first["2026-11-20"] and changed["2026-11-21"] == first["2026-11-21"]


@pytest.mark.parametrize("first, second", [
    (pa.date32(), pa.timestamp("us")), (pa.date32(), pa.string()), (pa.timestamp("ms", tz="UTC"), pa.string())])
def test_scheduled_date_types_disagree(tmp_path, first, second):
    def day(typ, d):
        return d.isoformat() if pa.types.is_string(typ) else (
            datetime(d.year, d.month, d.day, 9) if pa.types.is_timestamp(typ) else d)

    pq.write_table(table({"item_id": ["a", "b"], "scheduled_date": [day(first, D1), day(first, D2)]},
                         {"scheduled_date": first}), tmp_path / "a.parquet")
    pq.write_table(table({"item_id": ["c", "b"], "scheduled_date": [day(second, D1), day(second, D1)]},
                         {"scheduled_date": second}), tmp_path / "b.parquet")
    sl = read_catalog_day(str(tmp_path), D1)
    assert [i.item_id for i in sl.valid] == ["a", "c"]
    assert [r.reason for r in sl.rejected] == [
        "row 2 (item_id='b'): item_id: 'b' is shared by 2 rows of the catalog (must be unique)"]
    assert [r.item_id for r in read_catalog_day(str(tmp_path), D2).rejected] == ["b"]


def test_bloom_filtered_files_of_different_types(tmp_path, monkeypatch):
    """Catalogs written by `write_catalog` (Bloom filters on item_id): the id check still reads the filters, group
    by group, and finds an id shared across files of different types."""
    from sora_pipeline.catalog import ids as catalog_ids

    real, used = catalog_ids._bloom_candidates, []
    monkeypatch.setattr(catalog_ids, "_bloom_candidates", lambda *a: used.append(real(*a)) or used[-1])
    write_catalog(table({"item_id": ["a", "shared", "c"], "scheduled_date": [D1, D1, D2], "duration": [4, 4, 4]}),
                  str(tmp_path / "x.parquet"))
    write_catalog(table({"item_id": ["shared", "e"], "scheduled_date": [D2, D2], "duration": ["4", "8"]},
                        {"duration": pa.string()}), str(tmp_path / "y.parquet"))
    sl = read_catalog_day(str(tmp_path), D1)
    assert [i.item_id for i in sl.valid] == ["a"]
    assert [r.reason for r in sl.rejected] == [
        "row 1 (item_id='shared'): item_id: 'shared' is shared by 2 rows of the catalog (must be unique)"]
    assert len(used) == 1 and used[0] is not None  # (the files agree on item_id and scheduled_date: one group)
    sl2 = read_catalog_day(str(tmp_path), D2)
    assert [(i.item_id, i.duration) for i in sl2.valid] == [("c", Duration.S4), ("e", Duration.S8)]


def test_values_beyond_the_unified_type_fall_back_to_file_by_file(tmp_path):
    """int64 and uint64 unify (as int64), but a uint64 beyond int64 fails the scan: then each file is read on its
    own and the value is judged by the rules."""
    pq.write_table(table({"item_id": ["a"], "scheduled_date": [D1], "duration": [4]}), tmp_path / "a.parquet")
    pq.write_table(table({"item_id": ["b", "c"], "scheduled_date": [D1, D1], "duration": [2**63 + 5, 8]},
                         {"duration": pa.uint64()}), tmp_path / "b.parquet")
    sl = read_catalog_day(str(tmp_path), D1)
    assert [(i.item_id, i.duration) for i in sl.valid] == [("a", Duration.S4), ("c", Duration.S8)]
    assert [r.field for r in sl.rejected] == ["duration"]


def test_uniform_catalogs_keep_the_fast_path(tmp_path, monkeypatch):
    def no_per_file(*args, **kwargs):
        raise AssertionError("a uniform catalog must be read in one scan")

    monkeypatch.setattr(catalog_mod, "_read_day_per_file", no_per_file)
    pq.write_table(table({"item_id": ["a"], "scheduled_date": [D1], "note": ["x"]}), tmp_path / "a.parquet")
    # another type for a column that is not the contract's, and a float duration (int64 and double unify)
    pq.write_table(table({"item_id": ["b"], "scheduled_date": [D1], "note": [1.5], "duration": [8.0]},
                         {"duration": pa.float64()}), tmp_path / "b.parquet")
    sl = read_catalog_day(str(tmp_path), D1)
    assert [(i.item_id, i.duration) for i in sl.valid] == [("a", Duration.S4), ("b", Duration.S8)]
    assert not sl.rejected and set(catalog_fingerprints(str(tmp_path))) == {"2026-11-20"}


def test_a_malformed_string_date_is_no_days_not_every_days_failure(tmp_path):
    pq.write_table(table({"item_id": ["a", "b", "c"], "scheduled_date": ["2026-11-20", "tomorrow", "2026-11-21"]},
                         {"scheduled_date": pa.string()}), tmp_path / "a.parquet")
    assert [i.item_id for i in read_catalog_day(str(tmp_path / "a.parquet"), D1).valid] == ["a"]
    assert [i.item_id for i in read_catalog_day(str(tmp_path / "a.parquet"), D2).valid] == ["c"]
    assert set(catalog_fingerprints(str(tmp_path / "a.parquet"))) == {"2026-11-20", "2026-11-21"}


def test_a_drifting_catalog_runs_its_day_in_the_pipeline(tmp_path, simulator):
    project = make_project(tmp_path)  # part-0.parquet: it0..it3 with local images, duration int64
    catalog = Path(project["catalog_uri"])
    pq.write_table(table({"item_id": ["s1", "s2"], "scheduled_date": [DAY, DAY], "duration": ["8", "eight"],
                          "image_uri": ["../images/land.png"] * 2},
                         {"scheduled_date": pa.string(), "duration": pa.string()}), catalog / "part-1.parquet")
    pq.write_table(table({"item_id": [99], "scheduled_date": [date.fromisoformat(DAY)]}, {"item_id": pa.int64()}),
                   catalog / "part-2.parquet")
    result = materialize_day(resources(simulator.base_url, project))
    assert result.success
    rejected = read_day_partition(project["warehouse_uri"], "rejected_items", DAY).to_pylist()
    assert sorted((r["row_index"], r["field"]) for r in rejected) == [(5, "duration"), (6, "item_id")]
    assert "'part-1.parquet'" in rejected[0]["reason"] and "string" in rejected[0]["reason"]
    videos = read_day_partition(project["warehouse_uri"], "video_metadata", DAY).to_pylist()
    assert sorted(v["item_id"] for v in videos) == ["it0", "it1", "it2", "it3", "s1"]
