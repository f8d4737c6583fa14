"""Image sources are an allowlist (https, data:image URIs, local files under the roots, memory://, s3/gs/az with
their driver), applied by the row rules and again by `load_image_input`; https images are keyed by their URL."""

from __future__ import annotations

import base64
import importlib.util
import socket
import sys
import threading

import fsspec

import pytest

from sora_pipeline.fal import image_sources
from sora_pipeline.catalog import read_catalog_day
from sora_pipeline.fal import inputs
from sora_pipeline.fal.inputs import ImageInputError, load_image_input
from sora_pipeline.ledger import RequestSpec
from sora_pipeline.warehouse.tables import read_day_partition
from tests.conftest import png_bytes
from tests.support.fixtures import DAY, catalog_rows, make_project, materialize_day, resources, write_catalog
from tests.pipeline_helpers import materializations

NOT_ALLOWED = ("is not an allowed image source (allowed: https, data:image URIs, local files under the catalog "
               "folder or SORA_IMAGE_ROOTS, memory://, s3/gs/az with their driver)")
HTTPS = "https://img.example.com/sunrise.png"
BAD = {  # item_id: (image_uri, the reason after "image_uri: ")
    "s3": ("s3://bucket/a.png", "s3:// needs s3fs: pip install 'sora_pipeline[s3]'"),
    "gs": ("gs://bucket/a.png", "gs:// needs gcsfs: pip install 'sora_pipeline[gcs]'"),
    "ftp": ("ftp://127.0.0.2/a.png", f"ftp:// {NOT_ALLOWED}"),
    "webhdfs": ("webhdfs://127.0.0.2:1/x.png", f"webhdfs:// {NOT_ALLOWED}"),
    "github": ("github://org:repo@/x.png", f"github:// {NOT_ALLOWED}"),
    "sftp": ("sftp://example.com/a.png", f"sftp:// {NOT_ALLOWED}"),
    "smb": ("smb://example.com/share/a.png", f"smb:// {NOT_ALLOWED}"),
    "http": ("http://img.example.com/a.png",
             "'http://img.example.com/a.png' uses plain http:// (only https:// URLs are allowed)"),
}


@pytest.fixture
def no_store_drivers(monkeypatch):
    """s3fs/gcsfs/adlfs absent: really (the venv has none), or simulated if one is installed."""
    if any(importlib.util.find_spec(m) for m in ("s3fs", "gcsfs", "adlfs")):
        monkeypatch.setattr(image_sources, "driver_installed", lambda module: False)


def mixed_rows() -> list[dict]:
    good_local, good_https = catalog_rows(n=2, prefix="good")
    good_https["image_uri"] = HTTPS
    bad = [dict(catalog_rows(n=1, prefix=item_id)[0], item_id=item_id, image_uri=uri)
           for item_id, (uri, _) in BAD.items()]
    return [good_local, *bad, good_https]


def test_refused_sources_are_rejected_rows_with_reasons(tmp_path, no_store_drivers):
    project = make_project(tmp_path, mixed_rows())
    sl = read_catalog_day(project["catalog_uri"], DAY)
    assert [(i.item_id, i.image_ref) for i in sl.valid] == [
        ("good0", str((tmp_path / "data/images/land.png").resolve())), ("good1", HTTPS)]
    got = {r.item_id: (r.field, r.reason) for r in sl.rejected}
    assert got == {item_id: ("image_uri", f"row {n} (item_id={item_id!r}): image_uri: {why}")
                   for n, (item_id, (_, why)) in enumerate(BAD.items(), start=1)}


def test_a_day_with_refused_sources_runs_its_good_rows(tmp_path, simulator, no_store_drivers):
    project = make_project(tmp_path, mixed_rows())
    result = materialize_day(resources(simulator.base_url, project))
    assert result.success  # no refused source kills the step
    rejected = read_day_partition(project["warehouse_uri"], "rejected_items", DAY).to_pylist()
    assert {r["item_id"]: r["reason"].split(": ", 1)[1] for r in rejected} == {
        item_id: f"image_uri: {why}" for item_id, (_, why) in BAD.items()}
    videos = read_day_partition(project["warehouse_uri"], "video_metadata", DAY).to_pylist()
    assert sorted(v["item_id"] for v in videos) == ["good0", "good1"]
    assert simulator.stats()["submits"] == 2


def test_a_missing_driver_past_the_row_rules_fails_the_item_not_the_day(tmp_path, simulator, monkeypatch):
    """Defence in depth: the row rules think s3fs/gcsfs are there, fsspec then cannot import them — the items
    fail with a reason, the good rows of the day go through."""
    registry = sys.modules["fsspec.registry"]
    for module, protocol in (("s3fs", "s3"), ("gcsfs", "gs")):  # as if not installed, even when they are
        monkeypatch.setitem(sys.modules, module, None)  # `import s3fs` raises ImportError
        monkeypatch.delitem(registry._registry, protocol, raising=False)  # no class cached by fsspec
    monkeypatch.setattr(image_sources, "driver_installed", lambda module: True)
    rows = catalog_rows(n=2) + [dict(catalog_rows(n=1, prefix="s3")[0], image_uri="s3://bucket/a.png"),
                                dict(catalog_rows(n=1, prefix="gs")[0], image_uri="gs://bucket/a.png")]
    project = make_project(tmp_path, rows)
    result = materialize_day(resources(simulator.base_url, project))
    assert result.success
    assert read_day_partition(project["warehouse_uri"], "rejected_items", DAY).num_rows == 0
    failed = read_day_partition(project["warehouse_uri"], "failed_generations", DAY).to_pylist()
    assert sorted((f["item_id"], f["status"]) for f in failed) == [("gs0", "failed"), ("s30", "failed")]
    assert all(f["reason"].startswith("image_uri: ") and "cannot read image (ImportError)" in f["reason"]
               for f in failed), failed
    assert len(read_day_partition(project["warehouse_uri"], "video_metadata", DAY)) == 2


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.2 (127.0.0.1 where that is not routable): (host, port, connections seen)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.2", 0))
    except OSError:
        sock.close()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.1)
    seen: list = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, addr = sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            seen.append(addr)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    host, port = sock.getsockname()
    yield host, port, seen
    stop.set()
    thread.join(2)
    sock.close()


def test_load_image_input_refuses_without_importing_or_connecting(listener, monkeypatch, no_store_drivers):
    host, port, seen = listener
    opened = []
    real_open = fsspec.open
    monkeypatch.setattr(inputs.fsspec, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    refs = {f"webhdfs://{host}:{port}/x.png": "webhdfs:// " + NOT_ALLOWED,
            f"ftp://{host}:{port}/x.png": "ftp:// " + NOT_ALLOWED,
            f"sftp://{host}:{port}/x.png": "sftp:// " + NOT_ALLOWED,
            f"smb://{host}:{port}/share/x.png": "smb:// " + NOT_ALLOWED,
            f"hdfs://{host}:{port}/x.png": "hdfs:// " + NOT_ALLOWED,
            f"http://{host}:{port}/x.png": "plain http:// is not an allowed image source (use https://)",
            "github://org:repo@/x.png": "github:// " + NOT_ALLOWED,
            "zip://x.png": "zip:// " + NOT_ALLOWED,
            "s3://bucket/x.png": "s3:// needs s3fs: pip install 'sora_pipeline[s3]'",
            "GCS://bucket/x.png": "gcs:// needs gcsfs: pip install 'sora_pipeline[gcs]'",
            "abfss://c@acct.dfs.core.windows.net/x.png": "abfss:// needs adlfs: pip install 'sora_pipeline[az]'",
            f"simplecache::http://{host}:{port}/x.png": f"simplecache::http://{host}:{port}/x.png: chained fsspec "
                                                        "URLs are not an allowed image source"}
    for ref, why in refs.items():
        with pytest.raises(ImageInputError) as info:
            load_image_input(ref)
        assert str(info.value) == why
    assert opened == [] and seen == []  # nothing was opened, no connection reached the listener


def test_load_image_input_turns_any_driver_failure_into_an_image_error(tmp_path, monkeypatch):
    monkeypatch.setattr(image_sources, "driver_installed", lambda module: True)  # the row rules let it through

    def broken_open(*args, **kwargs):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(inputs.fsspec, "open", broken_open)
    with pytest.raises(ImageInputError, match=r"^s3://bucket/x\.png: cannot read image \(ImportError\)$"):
        load_image_input("s3://bucket/x.png")

    def odd_open(*args, **kwargs):
        raise RuntimeError("a filesystem's own error type")

    monkeypatch.setattr(inputs.fsspec, "open", odd_open)
    with pytest.raises(ImageInputError, match=r"cannot read image \(RuntimeError\)"):
        load_image_input("memory://x/a.png")


def test_allowed_sources_are_read(tmp_path):
    png = png_bytes(40, 80)
    (tmp_path / "a.png").write_bytes(png)
    fs = fsspec.filesystem("memory")
    fs.pipe("/image-sources-test/a.png", png)
    try:
        for ref in (str(tmp_path / "a.png"), f"file://{tmp_path}/a.png", "memory://image-sources-test/a.png",
                    "data:image/png;base64," + base64.b64encode(png).decode()):
            image = load_image_input(ref)
            assert (image.mime, image.width, image.height, image.size) == ("image/png", 40, 80, len(png))
            assert image.sha256 == inputs.hashlib.sha256(png).hexdigest()  # keyed by the bytes
    finally:
        fs.rm("/image-sources-test", recursive=True)
    with pytest.raises(ImageInputError, match="not found"):
        load_image_input(f"file://{tmp_path}/missing.png")
    with pytest.raises(ImageInputError, match="cannot read image"):
        load_image_input(str(tmp_path))  # a directory


# ---------------------------------------------------------------- https images are keyed by their URL


def key(image_sha256: str) -> str:
    return RequestSpec.create("fal-ai/sora-2/image-to-video/pro", item_id="a", day=DAY, prompt="p",
                              resolution="auto", aspect_ratio="auto", duration=4, image_sha256=image_sha256,
                              used_openai_key=False, estimated_cost=0.4).request_key


def test_https_images_are_keyed_by_their_url_only():
    first, again = load_image_input(HTTPS), load_image_input(HTTPS)
    versioned = load_image_input(HTTPS + "?v=2")
    assert first.url == HTTPS and first.sha256 == again.sha256 == inputs.hashlib.sha256(
        b"url:" + HTTPS.encode()).hexdigest()
    assert key(first.sha256) == key(again.sha256)  # the same URL: the same request, its video reused
    assert versioned.sha256 != first.sha256 and key(versioned.sha256) != key(first.sha256)


def test_a_new_url_or_regenerate_makes_a_new_video(tmp_path, simulator):
    rows = catalog_rows(n=1, image_uri=HTTPS)
    project = make_project(tmp_path, rows)
    res = resources(simulator.base_url, project)

    def run(**config) -> str:
        result = materialize_day(res, run_config=config or None)
        assert result.success
        (gen,) = read_day_partition(project["warehouse_uri"], "generations", DAY).to_pylist()
        return gen["request_key"]

    first = run()
    assert run() == first and simulator.stats()["submits"] == 1  # the image behind the URL may have changed:
    # the URL did not, so the video is reused
    write_catalog(project["catalog_uri"], [dict(rows[0], image_uri=HTTPS + "?v=2")])
    versioned = run()
    assert versioned != first and simulator.stats()["submits"] == 2  # a new URL: a new request
    result = materialize_day(res, run_config={"regenerate": True})  # or: the same URL, regenerated
    assert result.success and simulator.stats()["submits"] == 3
    assert materializations(result, "generations")[0].metadata["decision_counts"].data == {"submitted": 1}


def test_the_url_keying_contract_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "image-sources.md").read_text()
    for words in ("keyed by their URL", "?v=2", "regenerate: true", "s3:// needs s3fs", "not an allowed image source"):
        assert words in doc, words
    assert "keyed by their URL only" in load_image_input.__doc__ and "regenerate" in load_image_input.__doc__
