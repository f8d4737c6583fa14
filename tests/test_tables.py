"""Tests of sora_pipeline.warehouse.tables: per-day Parquet partitions swapped through a manifest, crash safety,
the old layout, garbage collection (local disk and fsspec's memory store; S3 in test_object_store.py)."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from datetime import date

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sora_pipeline.warehouse import tables
from sora_pipeline.warehouse.manifest import DATA_RE, MANIFEST, MIRROR, ORPHAN_AGE_S
from sora_pipeline.warehouse.files import Store
from sora_pipeline.warehouse.tables import (collect_table_garbage, current_files, file_uri_for, partition_uri,
                                            read_day_partition, read_table, table_uri, write_day_partition)

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


def _version_names(warehouse: str, table: str, day) -> list[str]:
    """The day's versions (`<warehouse>/_versions/<table>/date=D/`)."""
    return _day_names(file_uri_for(warehouse, "_versions"), table, day)


def _day_names(warehouse: str, table: str, day) -> list[str]:
    fs, path = fsspec.core.url_to_fs(partition_uri(warehouse, table, day))
    fs.invalidate_cache()
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.find(path)) if fs.exists(path) else []


def _put(warehouse: str, rel: str, data: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(file_uri_for(warehouse, rel))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)


def _parquet_bytes(t: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink)
    return sink.getvalue().to_pybytes()


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
    # re-materializing a day replaces it and leaves the other days alone
    write_day_partition(warehouse, "t", D1, _table(1, start=100))
    assert read_day_partition(warehouse, "t", "2026-11-20").to_pylist() == [{"item_id": "i100", "num_frames": 100}]
    assert read_day_partition(warehouse, "t", D2).num_rows == 2
    names = _day_names(warehouse, "t", D1)  # the manifest and the plain readers' copy; the versions are elsewhere
    assert names == [MANIFEST, MIRROR]
    assert sum(bool(DATA_RE.match(n)) for n in _version_names(warehouse, "t", D1)) == 2  # current + retired
    manifest = json.loads(fsspec.open(file_uri_for(partition_uri(warehouse, "t", D1), MANIFEST)).open().read())
    assert manifest["rows"] == 1 and len(manifest["files"]) == 1 and len(manifest["retired"]) == 1
    everything = read_table(warehouse, "t")
    assert everything.schema.field("date").type == pa.date32()
    assert sorted(zip(everything.column("date").to_pylist(), everything.column("item_id").to_pylist())) == [
        (D1, "i100"), (D2, "i10"), (D2, "i11")]
    files = current_files(warehouse, "t")
    assert sorted(files) == ["2026-11-20", "2026-11-21"] and all(len(f) == 1 for f in files.values())
    assert files["2026-11-20"][0].endswith(manifest["files"][0])


def test_named_columns_read_only_those_the_day_has(warehouse):
    write_day_partition(warehouse, "t", D1, _table(3))  # item_id, num_frames
    got = read_day_partition(warehouse, "t", D1, columns=["num_frames", "endpoint_id"])  # a column added later
    assert got.column_names == ["num_frames"] and got.num_rows == 3


def test_missing_day_and_table(warehouse):
    assert read_day_partition(warehouse, "nothing", D1) is None
    assert read_table(warehouse, "nothing") is None
    assert current_files(warehouse, "nothing") == {}
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


def test_crash_before_the_swap_leaves_the_old_day_and_an_ignored_orphan(warehouse, monkeypatch):
    write_day_partition(warehouse, "t", D1, _table(3))
    monkeypatch.setattr(tables, "_publish", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    monkeypatch.setattr(Store, "delete", lambda self, path: None)  # a killed process cleans nothing up
    with pytest.raises(Crash):
        write_day_partition(warehouse, "t", D1, _table(5, start=50))
    monkeypatch.undo()
    assert sum(bool(DATA_RE.match(n)) for n in _version_names(warehouse, "t", D1)) == 2  # the orphan is there...
    assert read_day_partition(warehouse, "t", D1).num_rows == 3  # ...and ignored by every reader
    assert read_table(warehouse, "t").num_rows == 3
    assert collect_table_garbage(warehouse, "t") == []  # young: it could be a live writer's upload
    gone = collect_table_garbage(warehouse, "t", now=time.time() + ORPHAN_AGE_S + 1)
    assert len(gone) == 1 and read_day_partition(warehouse, "t", D1).num_rows == 3
    assert sum(bool(DATA_RE.match(n)) for n in _version_names(warehouse, "t", D1)) == 1


def test_ordinary_error_before_the_swap_cleans_up(warehouse, monkeypatch):
    write_day_partition(warehouse, "t", D1, _table(3))
    monkeypatch.setattr(tables, "_publish", lambda *a, **k: (_ for _ in ()).throw(OSError("disk on fire")))
    with pytest.raises(OSError, match="disk on fire"):
        write_day_partition(warehouse, "t", D1, _table(5))
    monkeypatch.undo()
    assert read_day_partition(warehouse, "t", D1).num_rows == 3
    assert sum(bool(DATA_RE.match(n)) for n in _version_names(warehouse, "t", D1)) == 1


def test_crash_while_writing_the_data_file_leaves_the_old_day(warehouse, monkeypatch):
    write_day_partition(warehouse, "t", D1, _table(3))
    real = Store.write_parquet

    def half_write(self, path, data):
        real(self, path, data.slice(0, 1))
        raise Crash()

    monkeypatch.setattr(Store, "write_parquet", half_write)
    with pytest.raises(Crash):
        write_day_partition(warehouse, "t", D1, _table(9))
    monkeypatch.undo()
    assert read_day_partition(warehouse, "t", D1).num_rows == 3


def test_a_writer_that_lost_its_lock_does_not_publish(warehouse):
    write_day_partition(warehouse, "t", D1, _table(3))
    entered = []

    class Lost:
        def ensure_held(self):
            raise RuntimeError("lease lost")

    @contextlib.contextmanager
    def lock():
        entered.append(1)
        yield Lost()

    with pytest.raises(RuntimeError, match="lease lost"):
        write_day_partition(warehouse, "t", D1, _table(7), lock=lock())
    assert entered == [1] and read_day_partition(warehouse, "t", D1).num_rows == 3
    assert sum(bool(DATA_RE.match(n)) for n in _version_names(warehouse, "t", D1)) == 1


def test_retired_files_stay_readable_for_the_grace_period_then_go(warehouse):
    write_day_partition(warehouse, "t", D1, _table(3))
    old_files = current_files(warehouse, "t")["2026-11-20"]  # a reader that read the old manifest...
    write_day_partition(warehouse, "t", D1, _table(4, start=10))
    write_day_partition(warehouse, "t", D1, _table(5, start=20))
    with fsspec.open(old_files[0], "rb") as fh:
        assert pq.read_table(fh).num_rows == 3  # ...still reads its file
    assert sum(bool(DATA_RE.match(n)) for n in _version_names(warehouse, "t", D1)) == 3
    assert collect_table_garbage(warehouse, "t") == []
    gone = collect_table_garbage(warehouse, "t", now=time.time() + tables.GC_GRACE_S + 1)
    assert len(gone) == 2 and old_files[0] in gone
    assert sum(bool(DATA_RE.match(n)) for n in _version_names(warehouse, "t", D1)) == 1
    assert read_day_partition(warehouse, "t", D1).column("item_id").to_pylist()[0] == "i20"
    write_day_partition(warehouse, "t", D1, _table(1), gc_grace_s=0)  # no grace: the old file goes at once
    assert sum(bool(DATA_RE.match(n)) for n in _version_names(warehouse, "t", D1)) == 1


def test_old_layout_is_read_and_upgraded_by_the_next_write(warehouse):
    _put(warehouse, "t/date=2026-11-20/part-0123456789abcdef0123456789abcdef.parquet", _parquet_bytes(_table(3)))
    _put(warehouse, "t/date=2026-11-20/_SUCCESS", b"")
    _put(warehouse, "t/date=2026-11-21/part-0.parquet", _parquet_bytes(_table(2, start=5)))
    assert read_day_partition(warehouse, "t", D1).num_rows == 3
    assert read_table(warehouse, "t").num_rows == 5
    write_day_partition(warehouse, "t", D1, _table(4, start=40))  # the old files are replaced, not mixed in
    assert read_day_partition(warehouse, "t", D1).column("item_id").to_pylist() == ["i40", "i41", "i42", "i43"]
    assert "part-0123456789abcdef0123456789abcdef.parquet" not in _day_names(warehouse, "t", D1)
    assert read_table(warehouse, "t").num_rows == 6
    collect_table_garbage(warehouse, "t", now=time.time() + tables.GC_GRACE_S + 1)
    assert [n for n in _day_names(warehouse, "t", D1) if not DATA_RE.match(n)] == ["_SUCCESS", MANIFEST, MIRROR]


def test_old_layout_interrupted_swap_is_repaired_by_a_reader(warehouse):
    _put(warehouse, "t/.staging/date=2026-11-20.old-17000-abcd1234/part-x.parquet", _parquet_bytes(_table(3)))
    _put(warehouse, "t/date=2026-11-21/part-y.parquet", _parquet_bytes(_table(2)))
    assert read_day_partition(warehouse, "t", D1).num_rows == 3  # the moved-aside copy, put back
    assert read_table(warehouse, "t").num_rows == 5
    assert "part-x.parquet" in _day_names(warehouse, "t", D1)


def test_readers_ignore_unnamed_hidden_and_staging_files(tmp_path):
    wh = str(tmp_path / "wh")
    write_day_partition(wh, "t", D1, _table(2))
    tdir = tmp_path / "wh" / "t"
    junk = tdir / ".staging" / "date=2026-11-20-deadbeef"
    junk.mkdir(parents=True)
    (junk / "part-x.parquet").write_bytes(b"half a parquet file")
    (tdir / "date=2026-11-20" / "_SUCCESS").write_text("")
    (tdir / "date=2026-11-20" / ".part-y.parquet.crc").write_text("")
    (tdir / "date=2026-11-20" / "stray.parquet").write_bytes(_parquet_bytes(_table(9)))  # named by no manifest
    assert read_day_partition(wh, "t", D1).num_rows == 2
    assert read_table(wh, "t").num_rows == 2
    assert len(current_files(wh, "t")["2026-11-20"]) == 1


def test_duckdb_reads_the_layout(tmp_path):
    wh = str(tmp_path / "wh")
    write_day_partition(wh, "video_metadata", D1, _table(3))
    write_day_partition(wh, "video_metadata", D2, _table(2, start=3))
    write_day_partition(wh, "video_metadata", date(2026, 11, 22), _table(0))
    con = duckdb.connect()
    rows = con.execute(  # a day written once is one file: even a plain glob reads it right
        f"select date, count(*), sum(num_frames) from read_parquet('{wh}/video_metadata/*/*.parquet', "
        "hive_partitioning=true) group by date order by date").fetchall()
    assert rows == [(D1, 3, 3), (D2, 2, 7)]
    kinds = dict(con.execute(f"select column_name, column_type from (describe select * from read_parquet("
                             f"'{wh}/video_metadata/*/*.parquet', hive_partitioning=true))").fetchall())
    assert kinds["date"] == "DATE"


def test_plain_parquet_readers_see_one_whole_version_of_each_day(warehouse):
    """The contract's layout for everyone else: `<table>/date=D/*.parquet` holds one version of the day and the
    table's folder nothing else (the versions the manifest keeps for its own readers live outside it), so pyarrow,
    pandas or DuckDB reading the folders — recursively or not — never count a re-materialized day twice."""
    import duckdb
    import pyarrow.dataset as pads

    fs, root = fsspec.core.url_to_fs(table_uri(warehouse, "t"))
    for k in range(3):
        write_day_partition(warehouse, "t", D1, _table(3, start=10 * k))
        write_day_partition(warehouse, "t", D2, _table(2, start=10 * k))
        fs.invalidate_cache()
        plain = pads.dataset(root, filesystem=fs, format="parquet", partitioning="hive").to_table()
        assert sorted(plain.column("item_id").to_pylist()) == sorted(
            [f"i{10 * k + i}" for i in range(3)] + [f"i{10 * k + i}" for i in range(2)])
        for pattern in ("date=*/*.parquet", "**/*.parquet"):  # the whole table folder holds one file a day
            visible = fs.glob(f"{root}/{pattern}")
            assert len(visible) == 2 and all(p.endswith(f"/{MIRROR}") for p in visible), (pattern, visible)
    if fs.protocol in ("file", ("file", "local")) or "file" in fs.protocol:
        con = duckdb.connect()
        for pattern in ("date=*/*.parquet", "**/*.parquet"):
            got = con.execute(f"SELECT count(*) FROM read_parquet('{root}/{pattern}', hive_partitioning=true)")
            assert got.fetchone()[0] == 5, pattern
