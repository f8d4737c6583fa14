"""Parquet Bloom filters written by pyarrow, read by `parquet_bloom`, and the catalog's uniqueness check that
uses them to skip row groups (the result must equal a full scan's)."""

from __future__ import annotations

import random
from datetime import date, timedelta

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from sora_pipeline.catalog import bloom as parquet_bloom
from sora_pipeline.catalog import ids as catalog_ids
from sora_pipeline.catalog import read_catalog_day, write_catalog

DAY0 = date(2026, 3, 1)


def ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"itm-{rng.getrandbits(64):016x}" for _ in range(n)]


def catalog_table(per_day: int, days: int, seed: int = 1, extra: list[tuple[str, date]] = ()) -> pa.Table:
    rows = [{"item_id": i, "prompt": "a fox", "image_uri": f"https://img.example.com/{i}.png",
             "scheduled_date": DAY0 + timedelta(days=d)}
            for d in range(days) for i in ids(per_day, seed * 1000 + d)]
    rows += [{"item_id": i, "prompt": "a fox", "image_uri": "https://img.example.com/x.png", "scheduled_date": d}
             for i, d in extra]
    return pa.Table.from_pylist(rows)


def test_filters_hold_every_member_and_rule_out_most_others(tmp_path):
    path = tmp_path / "c.parquet"
    write_catalog(catalog_table(400, 6), str(path))
    meta = pq.ParquetFile(path).metadata
    raw = path.read_bytes()
    assert meta.num_row_groups == 6  # one per day
    members = [pq.ParquetFile(path).read_row_group(g, columns=["item_id"]).column(0).to_pylist()
               for g in range(6)]
    for g in range(6):
        col = meta.row_group(g).column(0)
        assert col.path_in_schema == "item_id" and col.bloom_filter_length
        blocks = parquet_bloom.parse_filter(raw[col.bloom_filter_offset:col.bloom_filter_offset + col.bloom_filter_length])
        own = parquet_bloom.Probe(parquet_bloom.hashes(members[g]))
        assert own.may_contain(blocks).all() and own.any_in(blocks)  # no false negatives, ever
        others = parquet_bloom.Probe(parquet_bloom.hashes([i for h, m in enumerate(members) if h != g for i in m]))
        assert others.may_contain(blocks).mean() < 0.001  # sized for fpp 1e-7 per id
        assert not parquet_bloom.Probe(parquet_bloom.hashes(ids(50, 99))).any_in(blocks)
    with pytest.raises(ValueError):
        parquet_bloom.parse_filter(b"\x15\x02\x00" + b"\x00" * 10)  # 1 byte of bitset: not a block filter


@pytest.mark.parametrize("layout", ["one_file", "hive"])
def test_uniqueness_with_filters_equals_a_full_scan(tmp_path, monkeypatch, layout):
    dup_a, dup_b = "itm-dup-a", "itm-dup-b"
    table = catalog_table(300, 8, extra=[(dup_a, DAY0), (dup_a, DAY0 + timedelta(days=5)),
                                         (dup_b, DAY0), (dup_b, DAY0)])
    root = tmp_path / "catalog"
    root.mkdir()
    if layout == "one_file":
        write_catalog(table, str(root / "catalog.parquet"))
    else:
        for d in range(8):
            day = DAY0 + timedelta(days=d)
            part = table.filter(pa.compute.equal(table["scheduled_date"], pa.scalar(day, pa.date32())))
            folder = root / f"scheduled_date={day.isoformat()}"
            folder.mkdir()
            pq.write_table(part.drop_columns(["scheduled_date"]), folder / "p.parquet",
                           bloom_filter_options={"item_id": {"ndv": 400, "fpp": 1e-6}})
    scanned = []
    real = catalog_ids._bloom_candidates

    def spy(*args):
        kept = real(*args)
        scanned.append(None if kept is None else sum(len(f.row_groups) for f in kept))
        return kept

    monkeypatch.setattr(catalog_ids, "_bloom_candidates", spy)
    sl = read_catalog_day(str(root), DAY0)
    assert sorted(r.item_id for r in sl.rejected) == [dup_a, dup_b, dup_b]
    assert any("shared by 2 rows" in r.reason for r in sl.rejected)
    assert len(sl.valid) == 300
    assert scanned[-1] is not None and scanned[-1] <= 2  # the one holding dup_a (+ a rare false positive)
    later = read_catalog_day(str(root), DAY0 + timedelta(days=5))
    assert [r.item_id for r in later.rejected] == [dup_a]
    # the same answers without the filters (full scan)
    monkeypatch.setattr(catalog_ids, "_bloom_candidates", lambda *a: None)
    assert [r.reason for r in read_catalog_day(str(root), DAY0).rejected] == [r.reason for r in sl.rejected]


def test_files_without_filters_fall_back_to_a_full_scan(tmp_path):
    root = tmp_path / "catalog"
    root.mkdir()
    table = catalog_table(50, 3, extra=[("itm-dup", DAY0), ("itm-dup", DAY0 + timedelta(days=2))])
    pq.write_table(table.sort_by("scheduled_date"), root / "plain.parquet", row_group_size=52)  # no filters
    dataset = ds.dataset(root, format="parquet")
    day_filter = ds.field("scheduled_date") == pa.scalar(DAY0, pa.date32())
    parts = catalog_ids.day_row_groups(dataset, day_filter)
    assert catalog_ids._bloom_candidates(dataset, ["itm-dup"], parts, ~day_filter) is None
    assert [r.item_id for r in read_catalog_day(str(root), DAY0).rejected] == ["itm-dup"]


def test_an_unreadable_filter_falls_back_to_a_scan(tmp_path, monkeypatch):
    root = tmp_path / "catalog"
    root.mkdir()
    write_catalog(catalog_table(50, 3, extra=[("itm-dup", DAY0), ("itm-dup", DAY0 + timedelta(days=2))]),
                  str(root / "c.parquet"))

    def garbled(data):
        raise ValueError("not a split-block Bloom filter")

    monkeypatch.setattr(parquet_bloom, "_header", garbled)
    dataset = ds.dataset(root, format="parquet")
    day_filter = ds.field("scheduled_date") == pa.scalar(DAY0, pa.date32())
    parts = catalog_ids.day_row_groups(dataset, day_filter)
    assert catalog_ids._bloom_candidates(dataset, ["itm-dup"], parts, ~day_filter) is None
    assert [r.item_id for r in read_catalog_day(str(root), DAY0).rejected] == ["itm-dup"]


def test_any_in_each_agrees_with_testing_each_hash(tmp_path):
    """The two-stage batch test gives the same answers as the per-hash definition, for filters of two sizes."""
    path = tmp_path / "c.parquet"
    table = pa.concat_tables([catalog_table(300, 4), catalog_table(40, 3, seed=7)]).combine_chunks()
    pq.write_table(table, path, row_group_size=300, bloom_filter_options={"item_id": {"ndv": 300, "fpp": 1e-6}})
    meta = pq.ParquetFile(path).metadata
    raw = path.read_bytes()
    filters = [parquet_bloom.parse_filter(raw[c.bloom_filter_offset:c.bloom_filter_offset + c.bloom_filter_length])
               for c in (meta.row_group(g).column(0) for g in range(meta.num_row_groups))]
    members = table.column("item_id").to_pylist()
    for wanted in (members[:5], members[450:460], ids(2000, 42), [members[-1]] + ids(100, 43)):
        probe = parquet_bloom.Probe(parquet_bloom.hashes(wanted))
        assert probe.any_in_each(filters) == [bool(probe.may_contain(f).any()) for f in filters]
    assert parquet_bloom.Probe(parquet_bloom.hashes(members[:5])).any_in_each(filters)[0]


def test_filters_written_back_to_back_are_read_in_one_range(tmp_path):
    path = tmp_path / "c.parquet"
    write_catalog(catalog_table(200, 10), str(path))
    meta = pq.ParquetFile(path).metadata
    raw = path.read_bytes()
    calls = []

    def read_range(offset, length):
        calls.append((offset, length))
        return raw[offset:offset + length]

    chunks = [(g, meta.row_group(g).column(0).bloom_filter_offset, meta.row_group(g).column(0).bloom_filter_length)
              for g in range(10)]
    day3 = pq.ParquetFile(path).read_row_group(3, columns=["item_id"]).column(0).to_pylist()
    probe = parquet_bloom.Probe(parquet_bloom.hashes(day3[:20]))
    assert 3 in parquet_bloom.row_groups_that_may_contain(read_range, chunks, probe)
    assert len(calls) == 1
    assert parquet_bloom.row_groups_that_may_contain(read_range, chunks[:2] + [(2, None, None)], probe) is None


def test_uniqueness_on_an_fsspec_catalog_reads_filters_by_range(monkeypatch):
    """memory:// (any non-local filesystem): filters come through ranged reads and rule out the other days."""
    import fsspec

    kept = []
    real = catalog_ids._bloom_candidates
    monkeypatch.setattr(catalog_ids, "_bloom_candidates", lambda *a: kept.append(real(*a)) or kept[-1])

    fs = fsspec.filesystem("memory")
    path = "/bloom-test/catalog.parquet"
    table = catalog_table(100, 5, extra=[("itm-dup", DAY0 + timedelta(days=1)), ("itm-dup", DAY0 + timedelta(days=4))])
    write_catalog(table, path, filesystem=fs)
    try:
        sl = read_catalog_day("memory://" + path, DAY0 + timedelta(days=1))
        assert [r.item_id for r in sl.rejected] == ["itm-dup"] and "shared by 2 rows" in sl.rejected[0].reason
        assert len(sl.valid) == 100
        assert [g.id for f in kept[0] for g in f.row_groups] == [4]  # the other copy's row group only
    finally:
        fs.rm("/bloom-test", recursive=True)


@pytest.mark.parametrize("bloom", [True, False])
def test_ids_shared_with_other_days_in_the_same_row_group_or_undated_rows(tmp_path, bloom):
    """The day's own ids are counted from the rows already read; the other rows of a row group that mixes days,
    and rows without a date, are still scanned."""
    table = catalog_table(30, 2, extra=[("itm-a", DAY0), ("itm-a", DAY0 + timedelta(days=1)),
                                        ("itm-b", DAY0), ("itm-b", None), ("itm-c", DAY0)])
    options = {"bloom_filter_options": {"item_id": {"ndv": 100, "fpp": 1e-6}}} if bloom else {}
    pq.write_table(table, tmp_path / "mixed.parquet", row_group_size=1000, **options)  # one row group, 3 days
    sl = read_catalog_day(str(tmp_path / "mixed.parquet"), DAY0)
    assert sorted(r.item_id for r in sl.rejected) == ["itm-a", "itm-b"]
    assert all("shared by 2 rows" in r.reason for r in sl.rejected)
    assert len(sl.valid) == 31
