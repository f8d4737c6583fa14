"""`check_rows`: the vectorised pre-check may only skip the full rules for rows the full rules accept as they
are — the results must be identical with and without it, whatever the values and column types."""

from __future__ import annotations

import itertools
import random
from datetime import date

import pyarrow as pa
import pytest

from sora_pipeline.catalog import rows as catalog_rows
from sora_pipeline.fal import image_sources
from sora_pipeline.catalog.rows import CatalogItem, ImageResolver, check_rows
from sora_pipeline.fal.models import AspectRatio, Duration, Resolution
from sora_pipeline.endpoints import get_profile

DAY = date(2026, 5, 1)
IDS = ["a1", "b2", " c3 ", "", "   ", "\u3000", "\x1c", None, "dup-1", "ü", "x" * 45]
PROMPTS = ["a fox at dawn", "", " \t", "\u2003", "\x1f", None, "狐", "ok 1"]
IMAGES = ["https://img.example.com/a.png", "HTTPS://IMG.example.com/a.png", "https://img.example.com/a.png  ",
          "  https://img.example.com/a.png", "https://img.example.com:8443/x?y=1", "https://img.example.com",
          "https://\u212a.example.com/a.png", "https://", "http://img.example.com/a.png", "data:image/png;base64,AAAA",
          "s3://bucket/a.png", "blockcache::s3://b/a.png", "https://img .example.com/a.png", None, "",
          # the image-source allowlist: refused schemes, stores without their driver, memory://, odd cases
          "S3://bucket/a.png", "s3a://bucket/a.png", "gs://bucket/a.png", "gcs://b/a.png", "az://c/a.png",
          "abfss://c@acct.dfs.core.windows.net/a.png", "ftp://127.0.0.2/a.png", "webhdfs://127.0.0.2:1/x.png",
          "github://org:repo@/x.png", "sftp://host/a.png", "smb://host/share/a.png", "hdfs://nn/a.png",
          "HTTP://img.example.com/a.png", "memory://elsewhere/a.png", "MEMORY://elsewhere/a.png", "images/a.png",
          "file:///etc/passwd", "zip://a.png", "ftp:a.png", "https://img.example.com/a.png?v=2",
          "HTTPS://img.example.com/a.png?v=3"]
RESOLUTIONS = ["auto", "720p", "1080p", " 720P", "480p", None, ""]
ASPECTS = ["auto", "16:9", "9:16", "16:9 ", "4:3", None]


def table(durations: list, duration_type: pa.DataType | None, n: int = 600, seed: int = 3) -> pa.Table:
    rng = random.Random(seed)
    cols = {"item_id": [rng.choice(IDS) for _ in range(n)], "prompt": [rng.choice(PROMPTS) for _ in range(n)],
            "image_uri": [rng.choice(IMAGES) for _ in range(n)], "scheduled_date": [DAY] * n,
            "resolution": [rng.choice(RESOLUTIONS) for _ in range(n)],
            "aspect_ratio": [rng.choice(ASPECTS) for _ in range(n)]}
    # the usual row, often: most of a real day takes the fast path
    for i in range(0, n, 3):
        cols["item_id"][i], cols["prompt"][i], cols["image_uri"][i] = f"id-{i}", "a fox", IMAGES[0]
        cols["resolution"][i], cols["aspect_ratio"][i] = "720p", "16:9"
    arrays = {k: pa.array(v) for k, v in cols.items()}
    if duration_type is not None:
        arrays["duration"] = pa.array([rng.choice(durations) for _ in range(n)], type=duration_type)
    return pa.table(arrays)


def resolver() -> ImageResolver:
    import fsspec

    return ImageResolver(fsspec.filesystem("memory"), "/catalog", local=False, is_dir=False, image_roots=())


@pytest.mark.parametrize("durations, duration_type", [
    ([4, 8, 12, 5, 0, None], pa.int64()), ([4, 12], pa.int8()), ([4.0, 8.0, 8.5, float("nan"), None], pa.float64()),
    (["4", " 8", "12", "x", None], pa.string()), ([True, False, None], pa.bool_()), ([4.0, 12.0, None], pa.float16()),
    ([], None)])
def test_the_fast_path_changes_nothing(monkeypatch, durations, duration_type):
    t = table(durations, duration_type)
    dups = {"dup-1": 2, "a1": 3}
    fast = check_rows(t, DAY, dups, resolver())
    assert sum(catalog_rows._plainly_valid(t, dups, catalog_rows.rules_for(get_profile()))) >= 20  # the usual rows do take it
    monkeypatch.setattr(catalog_rows, "_plainly_valid", lambda table, dups, rules: [False] * table.num_rows)
    full = check_rows(t, DAY, dups, resolver())
    assert fast[0] == full[0]
    assert [(r, r.raw) for r in fast[1]] == [(r, r.raw) for r in full[1]]
    assert len(fast[0]) + len(fast[1]) == len(t)
    for item in fast[0]:  # normalized values: the endpoint's own (exact strings, whole seconds)
        assert item.resolution in ("auto", "720p", "1080p") and item.aspect_ratio in ("auto", "9:16", "16:9")
        assert type(item.duration) is int and item.duration in (4, 8, 12)


def test_plain_rows_normalize_like_the_rules():
    t = pa.table({"item_id": ["a", "b"], "prompt": ["p", "q"],
                  "image_uri": ["https://x.example.com/1.png ", "https://x.example.com/2.png"],
                  "scheduled_date": [DAY, DAY], "resolution": [None, "1080p"], "aspect_ratio": ["9:16", None],
                  "duration": pa.array([None, 12], pa.int32())})
    valid, rejected = check_rows(t, DAY, {}, resolver())
    assert not rejected
    assert valid == [
        CatalogItem("a", "p", "https://x.example.com/1.png ", "https://x.example.com/1.png", DAY, Resolution.AUTO,
                    AspectRatio.PORTRAIT, Duration.S4, 0),
        CatalogItem("b", "q", "https://x.example.com/2.png", "https://x.example.com/2.png", DAY, Resolution.P1080,
                    AspectRatio.AUTO, Duration.S12, 1)]
    with pytest.raises(AttributeError):
        valid[0].prompt = "changed"  # an immutable record


@pytest.mark.parametrize("drivers", [False, True], ids=["no-store-drivers", "store-drivers"])
def test_every_combination_of_the_tricky_values_agrees(monkeypatch, drivers):
    """Exhaustive over ids × prompts × images (one row each): the fast path never accepts what the rules reject,
    with and without the object stores' drivers."""
    monkeypatch.setattr(image_sources, "driver_installed", lambda module: drivers)
    rows = list(itertools.product(IDS, PROMPTS, IMAGES))
    t = pa.table({"item_id": [r[0] for r in rows], "prompt": [r[1] for r in rows],
                  "image_uri": [r[2] for r in rows], "scheduled_date": [DAY] * len(rows)})
    fast = check_rows(t, DAY, {}, resolver())
    monkeypatch.setattr(catalog_rows, "_plainly_valid", lambda table, dups, rules: [False] * table.num_rows)
    assert fast == check_rows(t, DAY, {}, resolver())
    assert fast[0] and fast[1]


NOT_ALLOWED = ("is not an allowed image source (allowed: https, data:image URIs, local files under the catalog "
               "folder or SORA_IMAGE_ROOTS, memory://, s3/gs/az with their driver)")


@pytest.mark.parametrize("drivers", [False, True], ids=["no-store-drivers", "store-drivers"])
def test_image_sources_are_an_allowlist(monkeypatch, drivers):
    monkeypatch.setattr(image_sources, "driver_installed", lambda module: drivers)
    images = ["https://img.example.com/a.png", "memory://elsewhere/a.png", "images/a.png",
              "s3://b/a.png", "S3A://b/a.png", "gs://b/a.png", "gcs://b/a.png", "az://c/a.png", "abfs://c/a.png",
              "abfss://c@acct.dfs.core.windows.net/a.png",
              "ftp://127.0.0.2/a.png", "webhdfs://127.0.0.2:1/x.png", "github://org:repo@/x.png", "sftp://h/a.png",
              "smb://h/s/a.png", "http://img.example.com/a.png", "zip://a.png", "simplecache::s3://b/a.png"]
    t = pa.table({"item_id": [f"i{n}" for n in range(len(images))], "prompt": ["p"] * len(images),
                  "image_uri": images, "scheduled_date": [DAY] * len(images)})
    valid, rejected = check_rows(t, DAY, {}, resolver())
    stores = {"s3://b/a.png": "s3://b/a.png", "S3A://b/a.png": "s3a://b/a.png", "gs://b/a.png": "gs://b/a.png",
              "gcs://b/a.png": "gcs://b/a.png", "az://c/a.png": "az://c/a.png", "abfs://c/a.png": "abfs://c/a.png",
              "abfss://c@acct.dfs.core.windows.net/a.png": "abfss://c@acct.dfs.core.windows.net/a.png"}
    expected_valid = {"https://img.example.com/a.png": "https://img.example.com/a.png",
                      "memory://elsewhere/a.png": "memory://elsewhere/a.png",
                      "images/a.png": "memory:///catalog/images/a.png", **(stores if drivers else {})}
    assert {i.image_uri: i.image_ref for i in valid} == expected_valid
    got = {images[r.row_index]: r.reason.split(": ", 1)[1] for r in rejected}
    s3, gcs, az = "s3fs: pip install 'sora_pipeline[s3]'", "gcsfs: pip install 'sora_pipeline[gcs]'", \
        "adlfs: pip install 'sora_pipeline[az]'"
    install = {"s3": s3, "s3a": s3, "gs": gcs, "gcs": gcs, "az": az, "abfs": az, "abfss": az}
    expected = {} if drivers else {uri: f"image_uri: {ref.split('://')[0]}:// needs {install[ref.split('://')[0]]}"
                                   for uri, ref in stores.items()}
    expected.update({
        "ftp://127.0.0.2/a.png": f"image_uri: ftp:// {NOT_ALLOWED}",
        "webhdfs://127.0.0.2:1/x.png": f"image_uri: webhdfs:// {NOT_ALLOWED}",
        "github://org:repo@/x.png": f"image_uri: github:// {NOT_ALLOWED}",
        "sftp://h/a.png": f"image_uri: sftp:// {NOT_ALLOWED}",
        "smb://h/s/a.png": f"image_uri: smb:// {NOT_ALLOWED}",
        "zip://a.png": f"image_uri: zip:// {NOT_ALLOWED}",
        "http://img.example.com/a.png": "image_uri: 'http://img.example.com/a.png' uses plain http:// "
                                        "(only https:// URLs are allowed)",
        "simplecache::s3://b/a.png": "image_uri: 'simplecache::s3://b/a.png' is a chained fsspec URL (not allowed)",
    })
    assert got == expected
    assert all(r.field == "image_uri" for r in rejected)
    assert len(valid) + len(rejected) == len(images)


def test_a_catalog_filesystem_outside_the_allowlist_resolves_nothing():
    """Relative paths of a catalog on a filesystem that is not an image source are refused like its URIs."""
    from fsspec.implementations.memory import MemoryFileSystem

    class ElsewhereFS(MemoryFileSystem):  # stands in for a catalog on an ftp:// (or any other refused) filesystem
        protocol = "ftp"

    res = ImageResolver(ElsewhereFS(skip_instance_cache=True), "/catalog", local=False, is_dir=False,
                        image_roots=())
    assert res.resolve("images/a.png") == (None, f"'images/a.png' is a path in the catalog's filesystem: "
                                                 f"ftp:// {NOT_ALLOWED}")


def test_notes_of_the_reader_take_their_field_place_with_and_without_the_fast_path(monkeypatch):
    """Values a reader could not use (files that disagree on a type) arrive as nulls plus a note: the row is
    rejected with the note even where the nulls alone would pass (a null duration means 4 s)."""
    t = pa.table({"item_id": ["a", None, "c", "d"], "prompt": ["p", "p", None, "p"], "image_uri": [IMAGES[0]] * 4,
                  "scheduled_date": [DAY] * 4, "duration": pa.array([None, 4.0, 8.0, None], pa.float64())})
    notes = {0: {"duration": ("'x' is string in catalog file 'b.parquet' (expected 4, 8 or 12)", "x")},
             1: {"item_id": ("7 is int64 in catalog file 'b.parquet' (expected a string)", 7)},
             2: {"duration": ("True is bool in catalog file 'c.parquet' (expected 4, 8 or 12)", True)}}
    fast = check_rows(t, DAY, {}, resolver(), notes)
    monkeypatch.setattr(catalog_rows, "_plainly_valid", lambda table, dups, rules: [False] * table.num_rows)
    full = check_rows(t, DAY, {}, resolver(), notes)
    assert fast[0] == full[0] and [(r, r.raw) for r in fast[1]] == [(r, r.raw) for r in full[1]]
    assert [i.item_id for i in fast[0]] == ["d"]
    assert [r.reason for r in fast[1]] == [
        "row 0 (item_id='a'): duration: 'x' is string in catalog file 'b.parquet' (expected 4, 8 or 12)",
        "row 1 (item_id=7): item_id: 7 is int64 in catalog file 'b.parquet' (expected a string)",
        "row 2 (item_id='c'): prompt: missing"]  # the first offending field, in the usual order
    assert fast[1][0].raw["duration"] == "x" and fast[1][1].raw["item_id"] == "7" and fast[1][1].item_id is None
