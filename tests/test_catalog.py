"""Tests of sora_pipeline.catalog: layouts (file, folder, hive, memory://), row rules, pushdown, fingerprints."""

from __future__ import annotations

import hashlib
import os
import uuid
from datetime import date, timedelta
from pathlib import Path

import fsspec
import pandas
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from sora_pipeline.catalog import (CatalogError, catalog_fingerprints, image_roots_from_env, open_catalog,
                                   read_catalog_day)
from sora_pipeline.fal import image_sources
from sora_pipeline.fal.models import AspectRatio, Duration, Resolution

D1, D2, D3 = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22)
SCHEMA = pa.schema([("item_id", pa.string()), ("prompt", pa.string()), ("image_uri", pa.string()),
                    ("scheduled_date", pa.date32()), ("resolution", pa.string()), ("aspect_ratio", pa.string()),
                    ("duration", pa.int64())])


NOT_ALLOWED = ("is not an allowed image source (allowed: https, data:image URIs, local files under the catalog "
               "folder or SORA_IMAGE_ROOTS, memory://, s3/gs/az with their driver)")


def row(item_id, day=D1, image_uri="images/sun.png", prompt="a sunrise over hills", **extra):
    return {"item_id": item_id, "prompt": prompt, "image_uri": image_uri, "scheduled_date": day, **extra}


def write(path, rows, schema=SCHEMA, fs=None, **kwargs):
    names = {k for r in rows for k in r}
    fields = [f for f in schema if f.name in names] + [pa.field(n, pa.string()) for n in sorted(names)
                                                        if n not in schema.names]
    table = pa.Table.from_pylist(rows, schema=pa.schema(fields))
    if fs is None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, filesystem=fs, **kwargs)


@pytest.fixture
def data(tmp_path) -> Path:
    """tmp/data/{catalog/images/sun.png, images/moon.png}, tmp/outside/secret.png"""
    for rel in ("data/catalog/images/sun.png", "data/images/moon.png", "outside/secret.png"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\x89PNG fake")
    return tmp_path / "data"


def reasons(sl):
    return [r.reason for r in sl.rejected]


def test_single_file_catalog(data):
    uri = str(data / "catalog" / "catalog.parquet")
    write(uri, [row("a", resolution="1080p", aspect_ratio="9:16", duration=8), row("b"),
                row("c", day=D2), row("d", image_uri="../images/moon.png")])
    sl = read_catalog_day(uri, D1)
    assert sl.day == D1 and sl.catalog_uri == uri and sl.rows_scanned == 3
    a, b = sl.valid
    assert (a.item_id, a.resolution, a.aspect_ratio, a.duration, a.row_index) == (
        "a", Resolution.P1080, AspectRatio.PORTRAIT, Duration.S8, 0)
    assert (b.resolution, b.aspect_ratio, b.duration) == (Resolution.AUTO, AspectRatio.AUTO, Duration.S4)
    assert a.image_uri == "images/sun.png"
    assert a.image_ref == os.path.realpath(data / "catalog" / "images" / "sun.png")
    assert a.scheduled_date == D1
    # for a FILE catalog only the file's folder is allowed (the parent rule is for directory catalogs)
    assert reasons(sl) == ["row 2 (item_id='d'): image_uri: '../images/moon.png' resolves outside the catalog "
                           "folder and SORA_IMAGE_ROOTS"]


def test_directory_of_files_with_differing_columns(data):
    cat = data / "catalog"
    write(cat / "part-0.parquet", [row("a"), row("b", day=D2)])
    # a later file has no optional columns but an extra one; the parent folder of a directory catalog is allowed
    write(cat / "part-1.parquet", [row("c", image_uri="../images/moon.png", note="hi")],
          schema=pa.schema([f for f in SCHEMA if f.name in ("item_id", "prompt", "image_uri", "scheduled_date")]))
    write(cat / "part-2.parquet", [row("e", duration=12, resolution="720p")])
    (cat / "_SUCCESS").write_text("")
    sl = read_catalog_day(str(cat), D1)
    assert not sl.rejected
    assert [(i.item_id, i.duration, i.resolution, i.row_index) for i in sl.valid] == [
        ("a", Duration.S4, Resolution.AUTO, 0), ("c", Duration.S4, Resolution.AUTO, 1),
        ("e", Duration.S12, Resolution.P720, 2)]
    assert sl.valid[1].image_ref == os.path.realpath(data / "images" / "moon.png")
    assert [i.item_id for i in read_catalog_day(str(cat), D2).valid] == ["b"]
    assert read_catalog_day(str(cat), D3).valid == []


def test_hive_partitioned_catalog(data):
    cat = data / "catalog"
    no_date = pa.schema([f for f in SCHEMA if f.name != "scheduled_date"])
    for day, ids in ((D1, ["a", "b"]), (D2, ["c"])):
        rows = [{k: v for k, v in row(i, day=day).items() if k != "scheduled_date"} for i in ids]
        write(cat / f"scheduled_date={day.isoformat()}" / "part-0.parquet", rows, schema=no_date)
    (cat / ".hidden").mkdir()
    (cat / ".hidden" / "junk.parquet").write_bytes(b"not parquet")
    sl = read_catalog_day(str(cat), D1)
    assert [i.item_id for i in sl.valid] == ["a", "b"] and not sl.rejected
    assert all(i.scheduled_date == D1 for i in sl.valid)
    assert sl.valid[0].image_ref == os.path.realpath(cat / "images" / "sun.png")  # relative to the root
    assert [i.item_id for i in read_catalog_day(str(cat), D2).valid] == ["c"]
    assert set(catalog_fingerprints(str(cat))) == {"2026-11-20", "2026-11-21"}


def test_memory_catalog_resolves_inside_its_filesystem():
    root = f"/cat-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    try:
        write(f"{root}/catalog/part-0.parquet", [
            row("a", image_uri="images/x.png"), row("b", image_uri="s3://bucket/x.png"),
            row("c", image_uri="memory://elsewhere/y.png"), row("d", image_uri="../shared/z.png"),
            row("e", image_uri="file:///etc/passwd")], fs=fs)
        uri = f"memory://{root}/catalog"
        got, path = open_catalog(uri)
        assert isinstance(got, MemoryFileSystem) and path == f"{root}/catalog"
        with pytest.MonkeyPatch.context() as mp:  # s3:// is allowed when s3fs is installed
            mp.setattr(image_sources, "driver_installed", lambda module: True)
            sl = read_catalog_day(uri, D1)
        refs = {i.item_id: i.image_ref for i in sl.valid}
        assert refs == {"a": f"memory://{root}/catalog/images/x.png", "b": "s3://bucket/x.png",
                        "c": "memory://elsewhere/y.png", "d": f"memory://{root}/shared/z.png"}
        assert [r.field for r in sl.rejected] == ["image_uri"]  # a local file from a catalog someone sent
        with pytest.MonkeyPatch.context() as mp:  # ... and rejected (naming what to install) when it is not
            mp.setattr(image_sources, "driver_installed", lambda module: False)
            sl = read_catalog_day(uri, D1)
        assert [r.reason for r in sl.rejected][0] == (
            "row 1 (item_id='b'): image_uri: s3:// needs s3fs: pip install 'sora_pipeline[s3]'")
        assert fsspec.core.url_to_fs(refs["a"])[1] == f"{root}/catalog/images/x.png"
    finally:
        fs.rm(root, recursive=True)


def test_every_rejection_reason(data, tmp_path):
    cat = data / "catalog"
    (cat / "images" / "leak.png").symlink_to(tmp_path / "outside" / "secret.png")
    rows = [
        row(None), row("  "), row("p1", prompt=None), row("p2", prompt=" \n "),
        row("u1", image_uri=None), row("u2", image_uri="http://example.com/a.png"),
        row("u3", image_uri="data:text/plain;base64,aGVsbG8="), row("u4", image_uri="data:image/png;base64,!!"),
        row("u5", image_uri="simplecache::file:///etc/passwd"), row("u6", image_uri="zip://x.png"),
        row("u7", image_uri="nosuch://x.png"), row("u8", image_uri="../../etc/passwd"),
        row("u9", image_uri="/etc/passwd"), row("u10", image_uri="file:///etc/passwd"),
        row("u11", image_uri="images/leak.png"), row("u12", image_uri="images/missing.png"),
        row("u13", image_uri="https:///nohost.png"),
        row("r1", resolution="480p"), row("r2", aspect_ratio="4:3"), row("r3", duration=5),
        row("ok", image_uri="data:image/png;base64,iVBORw0KGgo=", resolution=" 720P ", aspect_ratio="16:9"),
    ]
    write(cat / "catalog.parquet", rows)
    sl = read_catalog_day(str(cat), D1)
    assert [i.item_id for i in sl.valid] == ["ok"] and sl.valid[0].resolution == "720p"
    got = {r.row_index: (r.field, r.reason) for r in sl.rejected}
    missing = str((cat / "images" / "missing.png").resolve())
    assert got == {
        0: ("item_id", "row 0 (item_id=None): item_id: missing"),
        1: ("item_id", "row 1 (item_id='  '): item_id: must be a non-empty string"),
        2: ("prompt", "row 2 (item_id='p1'): prompt: missing"),
        3: ("prompt", "row 3 (item_id='p2'): prompt: empty after stripping whitespace"),
        4: ("image_uri", "row 4 (item_id='u1'): image_uri: missing"),
        5: ("image_uri", "row 5 (item_id='u2'): image_uri: 'http://example.com/a.png' uses plain http:// "
                         "(only https:// URLs are allowed)"),
        6: ("image_uri", "row 6 (item_id='u3'): image_uri: 'data:text/plain;base64,<8 chars>' is not a "
                         "data:image/<type>;base64,<data> URI"),
        7: ("image_uri", "row 7 (item_id='u4'): image_uri: 'data:image/png;base64,<2 chars>' is not a "
                         "data:image/<type>;base64,<data> URI"),
        8: ("image_uri", "row 8 (item_id='u5'): image_uri: 'simplecache::file:///etc/passwd' is a chained "
                         "fsspec URL (not allowed)"),
        9: ("image_uri", f"row 9 (item_id='u6'): image_uri: zip:// {NOT_ALLOWED}"),
        10: ("image_uri", f"row 10 (item_id='u7'): image_uri: nosuch:// {NOT_ALLOWED}"),
        11: ("image_uri", "row 11 (item_id='u8'): image_uri: '../../etc/passwd' resolves outside the catalog "
                          "folder and SORA_IMAGE_ROOTS"),
        12: ("image_uri", "row 12 (item_id='u9'): image_uri: '/etc/passwd' resolves outside the catalog folder "
                          "and SORA_IMAGE_ROOTS"),
        13: ("image_uri", "row 13 (item_id='u10'): image_uri: 'file:///etc/passwd' resolves outside the catalog "
                          "folder and SORA_IMAGE_ROOTS"),
        14: ("image_uri", "row 14 (item_id='u11'): image_uri: 'images/leak.png' resolves outside the catalog "
                          "folder and SORA_IMAGE_ROOTS"),
        15: ("image_uri", f"row 15 (item_id='u12'): image_uri: 'images/missing.png' does not exist (resolved "
                          f"to {missing})"),
        16: ("image_uri", "row 16 (item_id='u13'): image_uri: 'https:///nohost.png' has no host"),
        17: ("resolution", "row 17 (item_id='r1'): resolution: '480p' is not one of auto, 720p, 1080p (the values fal-ai/sora-2/image-to-video/pro accepts)"),
        18: ("aspect_ratio", "row 18 (item_id='r2'): aspect_ratio: '4:3' is not one of auto, 9:16, 16:9 (the values fal-ai/sora-2/image-to-video/pro accepts)"),
        19: ("duration", "row 19 (item_id='r3'): duration: 5 is not one of 4, 8, 12 (the values fal-ai/sora-2/image-to-video/pro accepts)"),
    }
    assert all("\n" not in r.reason and r.scheduled_date == D1 for r in sl.rejected)
    assert sl.rejected[2].raw == {"item_id": "p1", "prompt": None, "image_uri": "images/sun.png",
                                  "scheduled_date": "2026-11-20", "resolution": None, "aspect_ratio": None,
                                  "duration": None}


def test_float_durations_and_nulls(data):
    schema = SCHEMA.set(SCHEMA.get_field_index("duration"), pa.field("duration", pa.float64()))
    write(data / "catalog" / "c.parquet", [row("a", duration=8.0), row("b", duration=None), row("c", duration=12.0),
                                            row("d", duration=5.0), row("e", duration=4.5)], schema=schema)
    sl = read_catalog_day(str(data / "catalog"), D1)
    assert [(i.item_id, i.duration) for i in sl.valid] == [("a", Duration.S8), ("b", Duration.S4),
                                                           ("c", Duration.S12)]
    assert reasons(sl) == ["row 3 (item_id='d'): duration: 5 is not one of 4, 8, 12 (the values fal-ai/sora-2/image-to-video/pro accepts)",
                           "row 4 (item_id='e'): duration: 4.5 is not one of 4, 8, 12 (the values fal-ai/sora-2/image-to-video/pro accepts)"]


def test_duplicates_across_the_whole_catalog(data):
    cat = data / "catalog"
    write(cat / "a.parquet", [row("x"), row("y"), row("z"), row("solo")])
    write(cat / "b.parquet", [row("x", day=D2), row("y", day=D2), row("y", day=D3)])
    sl = read_catalog_day(str(cat), D1)
    assert [i.item_id for i in sl.valid] == ["z", "solo"]
    assert reasons(sl) == [
        "row 0 (item_id='x'): item_id: 'x' is shared by 2 rows of the catalog (must be unique)",
        "row 1 (item_id='y'): item_id: 'y' is shared by 3 rows of the catalog (must be unique)"]
    assert [r.item_id for r in read_catalog_day(str(cat), D2).rejected] == ["x", "y"]
    assert [r.item_id for r in read_catalog_day(str(cat), D3).rejected] == ["y"]


def test_image_roots(data, tmp_path):
    outside = tmp_path / "outside"
    write(data / "catalog" / "c.parquet", [row("a", image_uri=str(outside / "secret.png")),
                                           row("b", image_uri=f"file://{outside}/secret.png")])
    assert len(read_catalog_day(str(data / "catalog"), D1).rejected) == 2
    sl = read_catalog_day(str(data / "catalog"), "2026-11-20", image_roots=[str(outside)])
    assert [i.image_ref for i in sl.valid] == [str((outside / "secret.png").resolve())] * 2
    assert image_roots_from_env(None) == [] and image_roots_from_env("") == []
    assert image_roots_from_env(" /a/b , ,/c,") == ["/a/b", "/c"]
    assert image_roots_from_env("~/imgs") == [os.path.expanduser("~/imgs")]


def test_raw_and_reason_never_carry_secrets(data):
    write(data / "catalog" / "c.parquet", [row(
        "a\nb", prompt="use key sk-abcdefghijklmnopqrstuvwx please", duration=5,
        image_uri="https://user:hunter2@example.com/x.png?X-Amz-Signature=deadbeef&size=2",
        api_key="fal-super-secret")])
    (rej,) = read_catalog_day(str(data / "catalog"), D1).rejected
    assert rej.reason == "row 0 (item_id='a\\nb'): duration: 5 is not one of 4, 8, 12 (the values fal-ai/sora-2/image-to-video/pro accepts)"
    assert set(rej.raw) == {"item_id", "prompt", "image_uri", "scheduled_date", "resolution", "aspect_ratio",
                            "duration"}
    text = repr(rej)
    for secret in ("hunter2", "deadbeef", "sk-abcdefghijkl", "fal-super-secret"):
        assert secret not in text
    assert rej.raw["image_uri"] == "https://***@example.com/x.png?X-Amz-Signature=***&size=2"


def test_long_item_ids_are_kept_but_opaque_tokens_elsewhere_are_masked(data):
    long_id = hashlib.sha256(b"x").hexdigest()
    token = "ghp" + "A1b2C3d4" * 6
    write(data / "catalog" / "c.parquet", [row(long_id, prompt=f"token {token} here", resolution="8k")])
    (rej,) = read_catalog_day(str(data / "catalog"), D1).rejected
    assert rej.item_id == long_id and rej.raw["item_id"] == long_id
    assert rej.reason == f"row 0 (item_id='{long_id}'): resolution: '8k' is not one of auto, 720p, 1080p (the values fal-ai/sora-2/image-to-video/pro accepts)"
    assert rej.raw["prompt"] == "token *** here"


def test_catalog_errors(data, tmp_path):
    cat = data / "catalog"
    write(cat / "c.parquet", [{k: v for k, v in row("a").items() if k != "prompt"}])
    with pytest.raises(CatalogError, match=r"missing required column\(s\): 'prompt'") as info:
        read_catalog_day(str(cat), D1)
    assert str(cat) in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(CatalogError, match="does not exist"):
        read_catalog_day(str(tmp_path / "nope"), D1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match="no Parquet files"):
        read_catalog_day(str(tmp_path / "empty"), D1)
    (tmp_path / "bad.parquet").write_text("nope")
    with pytest.raises(CatalogError, match="not a readable Parquet dataset"):
        read_catalog_day(str(tmp_path / "bad.parquet"), D1)


def test_string_scheduled_date_column(data):
    schema = SCHEMA.set(SCHEMA.get_field_index("scheduled_date"), pa.field("scheduled_date", pa.string()))
    write(data / "catalog" / "c.parquet", [row("a", day="2026-11-20"), row("b", day="2026-11-21")], schema=schema)
    assert [i.item_id for i in read_catalog_day(str(data / "catalog"), D1).valid] == ["a"]


class CountingFS(MemoryFileSystem):
    """A memory filesystem that counts the bytes pyarrow reads from it."""

    protocol = "countmem"
    store: dict = {}
    pseudo_dirs = [""]
    bytes_read = 0

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path[len("countmem://"):] if path.startswith("countmem://") else path)

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        if "r" in mode:
            read, readinto = f.read, f.readinto

            def counted_read(n=-1):
                out = read(n)
                CountingFS.bytes_read += len(out)
                return out

            def counted_readinto(buf):
                n = readinto(buf)
                CountingFS.bytes_read += n or 0
                return n

            f.read, f.readinto = counted_read, counted_readinto
        return f


def test_day_filter_is_pushed_down_and_pandas_is_not_used(monkeypatch):
    fsspec.register_implementation("countmem", CountingFS, clobber=True)
    fs = CountingFS()
    days = [D1 + timedelta(days=i) for i in range(24)]
    noise = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1500)]  # incompressible prompts
    rows = [row(f"{d.isoformat()}-{i:05d}", day=d, image_uri=f"https://img.example/{d}/{i}.png",
                prompt=f"{d} {noise[i]} {noise[-i]}", duration=[4, 8, 12][i % 3]) for d in days for i in range(1500)]
    write("/big/catalog.parquet", rows, fs=fs, row_group_size=1500)
    size = fs.size("/big/catalog.parquet")

    def no_pandas(*args, **kwargs):
        raise AssertionError("pandas must not be used to scan the catalog")

    monkeypatch.setattr(pandas.DataFrame, "__init__", no_pandas)
    CountingFS.bytes_read = 0
    sl = read_catalog_day("countmem:///big/catalog.parquet", days[5])
    assert sl.rows_scanned == 1500 and len(sl.valid) == 1500 and not sl.rejected
    assert {i.scheduled_date for i in sl.valid} == {days[5]}
    assert CountingFS.bytes_read < size / 4, (CountingFS.bytes_read, size)  # only a slice of the file was read
    fs.rm("/big", recursive=True)


def test_fingerprints(data):
    cat = data / "catalog"
    rows = [row("a"), row("b"), row("c", day=D2), row("d", day=D3, note="x")]
    write(cat / "c.parquet", rows)
    first = catalog_fingerprints(str(cat))
    assert list(first) == ["2026-11-20", "2026-11-21", "2026-11-22"]
    assert all(len(v) == 64 for v in first.values())
    assert catalog_fingerprints(str(cat)) == first  # stable
    write(cat / "c.parquet", list(reversed(rows[:3])) + [row("d", day=D3, note="changed, not a contract column")])
    assert catalog_fingerprints(str(cat)) == first  # row order and extra columns don't matter
    write(cat / "c.parquet", [row("a"), row("b", prompt="a sunset"), rows[2], rows[3]])
    changed = catalog_fingerprints(str(cat))
    assert changed["2026-11-20"] != first["2026-11-20"]
    assert {k: v for k, v in changed.items() if k != "2026-11-20"} == {
        k: v for k, v in first.items() if k != "2026-11-20"}
    write(cat / "more.parquet", [row("e", day=date(2026, 11, 23))])
    assert set(catalog_fingerprints(str(cat))) == {"2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23"}


def test_committed_sample_data_and_its_generator(tmp_path):
    import runpy

    repo = Path(__file__).resolve().parents[1]
    per_day = {d: read_catalog_day(str(repo / "data" / "catalog"), d) for d in (D1, D2, D3)}
    assert sum(len(s.valid) for s in per_day.values()) == 11
    assert [r.field for s in per_day.values() for r in s.rejected] == ["duration"]
    assert {i.image_ref for s in per_day.values() for i in s.valid} == {
        str((repo / "data" / "images" / f"{n}.png").resolve()) for n in ("sunrise", "ocean", "city", "forest")}
    module = runpy.run_path(str(repo / "scripts" / "make_sample_data.py"))
    images, catalog = module["make"](tmp_path / "data")
    assert pq.read_table(catalog).equals(pq.read_table(repo / "data" / "catalog" / "catalog.parquet"))
    from PIL import Image

    for image in images:  # deterministic drawings (compare pixels: PNG bytes may differ across zlib versions)
        with Image.open(image) as new, Image.open(repo / "data" / "images" / image.name) as old:
            assert (new.size, new.tobytes()) == (old.size, old.tobytes())


def test_catalog_signature_changes_only_when_files_do(tmp_path):
    """The sensor's shortcut: one listing, no Parquet read; a rewrite, a new file or a removal changes it."""
    import time

    from sora_pipeline.catalog import catalog_signature

    folder = tmp_path / "catalog"
    folder.mkdir()
    table = pa.table({"item_id": ["a"], "prompt": ["p"], "image_uri": ["https://x.example.com/a.png"],
                      "scheduled_date": [D1]})
    pq.write_table(table, folder / "part-0.parquet")
    first = catalog_signature(str(folder))
    assert first and first == catalog_signature(str(folder))
    (folder / "_SUCCESS").write_text("")  # not a data file
    assert catalog_signature(str(folder)) == first
    pq.write_table(table, folder / "part-1.parquet")
    second = catalog_signature(str(folder))
    assert second != first
    time.sleep(0.01)
    pq.write_table(table, folder / "part-1.parquet")  # same size, rewritten
    assert catalog_signature(str(folder)) != second
    (folder / "part-1.parquet").unlink()
    assert catalog_signature(str(folder)) == first
    assert catalog_signature(str(tmp_path / "missing")) is None

