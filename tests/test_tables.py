"""Tests of sora_pipeline.warehouse.tables: per-day Parquet partitions, atomic replacement, crash recovery."""

from __future__ import annotations

import os
import uuid
from datetime import date

import duckdb
import fsspec
import pyarrow as pa
import pytest

from sora_pipeline.warehouse import tables
from sora_pipeline.warehouse.tables import (file_uri_for, partition_uri, read_day_partition, read_table, table_uri,
                                  write_day_partition)

D1, D2 = date(2026, 11, 20), date(2026, 11, 21)


class Crash(BaseException):
    """Simulates the process dying (not an ordinary exception the writer could clean up after)."""


@pytest.fixture(params=["local", "memory"])
def warehouse(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "warehouse")
    else:
        root = f"memory://wh-{uuid.uuid4().hex}"
        yield root
        fs = fsspec.filesystem("memory")
        if fs.exists(root.replace("memory://", "/")):
            fs.rm(root.replace("memory://", "/"), recursive=True)


def _table(n: int, start: int = 0) -> pa.Table:
    return pa.table({"item_id": [f"i{i}" for i in range(start, start + n)],
                     "num_frames": pa.array(range(start, start + n), pa.int64())})


def _fs_files(warehouse: str, table: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(table_uri(warehouse, table))
    return sorted(fs.find(path))


def test_uri_helpers():
    assert file_uri_for("s3://bucket/wh", "t", "date=2026-11-20") == "s3://bucket/wh/t/date=2026-11-20"
    assert file_uri_for("memory://", "wh", "/t/") == "memory://wh/t"
    assert file_uri_for("memory://wh/", "t") == "memory://wh/t"
    assert file_uri_for("file:///tmp/wh", "t") == "file:///tmp/wh/t"
    assert file_uri_for("data/warehouse", "t", "x.parquet") == os.path.join("data/warehouse", "t", "x.parquet")
    assert table_uri("s3://b/w", "video_metadata") == "s3://b/w/video_metadata"
    assert partition_uri("s3://b/w", "t", D1) == partition_uri("s3://b/w", "t", "2026-11-20") == \
        "s3://b/w/t/date=2026-11-20"
    for bad in ("", ".staging", "_tmp", "a/b", "../x"):
        with pytest.raises(ValueError):
            table_uri("w", bad)
    with pytest.raises(ValueError):
        partition_uri("w", "t", "2026-13-01")


def test_write_read_and_replace(warehouse):
    uri = write_day_partition(warehouse, "t", D1, _table(3))
    assert uri == partition_uri(warehouse, "t", D1)
    write_day_partition(warehouse, "t", "2026-11-21", _table(2, start=10))
    assert read_day_partition(warehouse, "t", D1).column("item_id").to_pylist() == ["i0", "i1", "i2"]
    # re-materializing a day replaces its files and leaves the other days alone
    write_day_partition(warehouse, "t", D1, _table(1, start=100))
    assert read_day_partition(warehouse, "t", "2026-11-20").to_pylist() == [{"item_id": "i100", "num_frames": 100}]
    assert read_day_partition(warehouse, "t", D2).num_rows == 2
    files = _fs_files(warehouse, "t")
    assert [f for f in files if "/date=2026-11-20/" in f.replace(os.sep, "/")].__len__() == 1
    assert not [f for f in files if "/.staging/" in f.replace(os.sep, "/")]
    everything = read_table(warehouse, "t")
    assert everything.schema.field("date").type == pa.date32()
    assert sorted(zip(everything.column("date").to_pylist(), everything.column("item_id").to_pylist())) == [
        (D1, "i100"), (D2, "i10"), (D2, "i11")]


def test_missing_day_and_table(warehouse):
    assert read_day_partition(warehouse, "nothing", D1) is None
    assert read_table(warehouse, "nothing") is None
    write_day_partition(warehouse, "t", D1, _table(1))
    assert read_day_partition(warehouse, "t", D2) is None


def test_empty_table_is_a_valid_day(warehouse):
    empty = _table(0)
    write_day_partition(warehouse, "t", D1, empty)
    got = read_day_partition(warehouse, "t", D1)
    assert got is not None and got.num_rows == 0 and got.schema == empty.schema
    write_day_partition(warehouse, "t", D2, _table(2))
    assert read_table(warehouse, "t").num_rows == 2
    write_day_partition(warehouse, "t", D2, empty)  # a day can shrink to nothing
    assert read_day_partition(warehouse, "t", D2).num_rows == 0


def test_rejects_bad_input(warehouse):
    with pytest.raises(ValueError, match="partition column"):
        write_day_partition(warehouse, "t", D1, pa.table({"date": [D1]}))
    with pytest.raises(TypeError):
        write_day_partition(warehouse, "t", D1, [{"a": 1}])  # type: ignore[arg-type]


def test_crash_between_move_aside_and_move_in_recovers_on_read(warehouse, monkeypatch):
    write_day_partition(warehouse, "t", D1, _table(3))

    def crash(*args, **kwargs):
        raise Crash()

    monkeypatch.setattr(tables, "_move_in", crash)
    with pytest.raises(Crash):
        write_day_partition(warehouse, "t", D1, _table(5, start=50))
    monkeypatch.undo()
    fs, path = fsspec.core.url_to_fs(partition_uri(warehouse, "t", D1))
    assert not fs.exists(path) or not fs.find(path)  # the window: old copy aside, new one not in yet
    assert read_day_partition(warehouse, "t", D1).num_rows == 3  # recovered: the complete old data
    assert fs.exists(path)
    assert not [f for f in _fs_files(warehouse, "t") if "/.staging/" in f.replace(os.sep, "/") and ".old-" in f]


def test_crash_window_recovered_by_read_table_and_next_write(warehouse, monkeypatch):
    write_day_partition(warehouse, "t", D1, _table(3))
    write_day_partition(warehouse, "t", D2, _table(2))
    monkeypatch.setattr(tables, "_move_in", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        write_day_partition(warehouse, "t", D1, _table(5))
    monkeypatch.undo()
    assert read_table(warehouse, "t").num_rows == 5  # 3 old rows of D1 restored + 2 of D2

    monkeypatch.setattr(tables, "_move_in", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        write_day_partition(warehouse, "t", D2, _table(7))
    monkeypatch.undo()
    write_day_partition(warehouse, "t", D2, _table(4, start=20))  # the next write recovers first, then swaps
    assert read_day_partition(warehouse, "t", D2).column("item_id").to_pylist() == ["i20", "i21", "i22", "i23"]
    assert len([f for f in _fs_files(warehouse, "t") if "date=2026-11-21" in f]) == 1


def test_ordinary_error_in_swap_puts_old_data_back(warehouse, monkeypatch):
    write_day_partition(warehouse, "t", D1, _table(3))
    monkeypatch.setattr(tables, "_move_in", lambda *a, **k: (_ for _ in ()).throw(OSError("disk on fire")))
    with pytest.raises(OSError, match="disk on fire"):
        write_day_partition(warehouse, "t", D1, _table(5))
    monkeypatch.undo()
    fs, path = fsspec.core.url_to_fs(partition_uri(warehouse, "t", D1))
    assert fs.exists(path)
    assert read_day_partition(warehouse, "t", D1).num_rows == 3
    assert not [f for f in _fs_files(warehouse, "t") if "/.staging/" in f.replace(os.sep, "/")]


def test_crash_while_writing_staging_leaves_old_files(warehouse, monkeypatch):
    write_day_partition(warehouse, "t", D1, _table(3))
    real = tables._Ops.write_parquet

    def half_write(self, path, data):
        real(self, path, data.slice(0, 1))
        raise Crash()

    monkeypatch.setattr(tables._Ops, "write_parquet", half_write)
    with pytest.raises(Crash):
        write_day_partition(warehouse, "t", D1, _table(9))
    monkeypatch.undo()
    assert read_day_partition(warehouse, "t", D1).num_rows == 3


def test_readers_ignore_leftover_staging_and_hidden_files(tmp_path):
    wh = str(tmp_path / "wh")
    write_day_partition(wh, "t", D1, _table(2))
    tdir = tmp_path / "wh" / "t"
    junk = tdir / ".staging" / "date=2026-11-20-deadbeef"
    junk.mkdir(parents=True)
    (junk / "part-x.parquet").write_bytes(b"half a parquet file")
    (tdir / "date=2026-11-20" / "_SUCCESS").write_text("")
    (tdir / "date=2026-11-20" / ".part-y.parquet.crc").write_text("")
    assert read_day_partition(wh, "t", D1).num_rows == 2
    assert read_table(wh, "t").num_rows == 2
    con = duckdb.connect()
    assert con.execute(f"select count(*) from read_parquet('{tdir}/*/*.parquet', hive_partitioning=true)"
                       ).fetchone() == (2,)


def test_moved_aside_copy_left_after_successful_swap_is_cleaned(tmp_path, monkeypatch):
    wh = str(tmp_path / "wh")
    write_day_partition(wh, "t", D1, _table(2))
    real = tables._Ops.rmtree
    monkeypatch.setattr(tables._Ops, "rmtree", lambda self, path: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        write_day_partition(wh, "t", D1, _table(4))  # new data is in; the old copy is still aside
    monkeypatch.setattr(tables._Ops, "rmtree", real)
    assert len(os.listdir(tmp_path / "wh" / "t" / ".staging")) == 1
    assert read_day_partition(wh, "t", D1).num_rows == 4
    assert os.listdir(tmp_path / "wh" / "t" / ".staging") == []


def test_reader_recovering_in_the_window_does_not_break_the_writer(warehouse, monkeypatch):
    write_day_partition(warehouse, "t", D1, _table(3))
    real = tables._move_aside
    calls = []

    def aside_then_reader_recovers(ops, target, aside):
        real(ops, target, aside)
        if not calls:
            calls.append(1)
            assert read_day_partition(warehouse, "t", D1).num_rows == 3  # a reader puts the old copy back

    monkeypatch.setattr(tables, "_move_aside", aside_then_reader_recovers)
    write_day_partition(warehouse, "t", D1, _table(6))
    assert read_day_partition(warehouse, "t", D1).num_rows == 6
    assert len([f for f in _fs_files(warehouse, "t") if "date=2026-11-20" in f]) == 1


def test_duckdb_reads_the_layout(tmp_path):
    wh = str(tmp_path / "wh")
    write_day_partition(wh, "video_metadata", D1, _table(3))
    write_day_partition(wh, "video_metadata", D2, _table(2, start=3))
    write_day_partition(wh, "video_metadata", date(2026, 11, 22), _table(0))
    con = duckdb.connect()
    rows = con.execute(
        f"select date, count(*), sum(num_frames) from read_parquet('{wh}/video_metadata/*/*.parquet', "
        "hive_partitioning=true) group by date order by date").fetchall()
    assert rows == [(D1, 3, 3), (D2, 2, 7)]
    kinds = dict(con.execute(f"select column_name, column_type from (describe select * from read_parquet("
                             f"'{wh}/video_metadata/*/*.parquet', hive_partitioning=true))").fetchall())
    assert kinds["date"] == "DATE"
