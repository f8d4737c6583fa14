"""fal storage uploads of large images, over real HTTP on loopback: the simulator's storage endpoints, whole days
with the real simulator (uploaded once, cached in the ledger per content hash, re-uploaded after the lifetime, the
video's first frame from the upload, small images still data URIs), and the uploader against a hostile storage
server (the key only to the storage origin, foreign or plain-http URLs refused, redirects not followed, oversized
answers refused, echoed keys redacted, a failed upload failing only its items)."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import io
import json
import re
import threading
from collections import namedtuple
from datetime import UTC, datetime, timedelta

import fsspec
import httpx
import numpy as np
import pytest
from PIL import Image

from sora_pipeline.defs.settings import ConfigError, PipelineSettings, TransferCapsConfig
from sora_pipeline.fal.policies import RetryPolicy
from sora_pipeline.fal.storage_uploads import ANSWER_BYTES, StorageSettings, StorageUploader, StorageUploadError
from sora_pipeline.coordination import Database, UploadCache
from sora_pipeline.simulator import storage_server as sim_storage
from sora_pipeline.warehouse.tables import read_day_partition
from tests.support.fixtures import DAY, catalog_rows, make_project, materialize_day, resources
from tests.simulator_helpers import client, png, probe, submit, wait_done

SECRET = "fal-storage-test-key-0123456789"
GREEN = (40, 200, 90)
MB = 1 << 20


def upload(storage_url: str, data: bytes | None = None, **kw):
    kw.setdefault("retry", RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.02))
    uploader = StorageUploader(storage_url=storage_url, key=kw.pop("key", SECRET), **kw)
    return asyncio.run(uploader.upload(data if data is not None else png(32, 18, GREEN), "image/png", "a.png"))


def big_png(path, colour=GREEN) -> bytes:
    """An uncompressed 320x180 PNG (~170 KB): above the tests' 64 KiB threshold."""
    buf = io.BytesIO()
    Image.new("RGB", (320, 180), colour).save(buf, "PNG", compress_level=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


# ---------------------------------------------------------------- a hostile storage server on loopback

Seen = namedtuple("Seen", "method path headers body")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        size = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(size) if size else b""
        self.server.seen.append(Seen(self.command, self.path, dict(self.headers), body))  # type: ignore
        status, headers, payload = self.server.answer(self)  # type: ignore[attr-defined]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if isinstance(payload, bytes):
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_header("Connection", "close")  # a body without length: it ends when the connection does
        self.end_headers()
        self.close_connection = True
        try:
            for chunk in payload:
                self.wfile.write(chunk)
        except OSError:
            pass

    do_GET = do_PUT = do_POST = _handle

    def log_message(self, *a) -> None:
        pass


def ok(_h) -> tuple:
    return 200, {}, b""


@pytest.fixture
def servers():
    """Loopback servers that record every request; each answers with its `answer(handler)` (default: 200)."""
    started = []
    Server = namedtuple("Server", "url seen httpd")

    def make(answer=ok) -> Server:
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        httpd.seen, httpd.answer = [], answer  # type: ignore[attr-defined]
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return Server(f"http://127.0.0.1:{httpd.server_address[1]}", httpd.seen, httpd)  # type: ignore

    yield make
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def initiate_answer(upload_url: str, file_url: str):
    def answer(h):
        if h.command == "POST":
            return 200, {"Content-Type": "application/json"}, json.dumps(
                {"upload_url": upload_url, "file_url": file_url}).encode()
        return 200, {}, b""
    return answer


def carries_key(seen: Seen) -> bool:
    return "authorization" in {k.lower() for k in seen.headers} or SECRET in json.dumps(seen.headers)


# ---------------------------------------------------------------- the uploader against hostile answers

def test_the_key_goes_to_the_storage_origin_only_never_to_the_upload_url(servers):
    bucket = servers()
    storage = servers(initiate_answer(f"{bucket.url}/put/signed?sig=abc", f"{bucket.url}/files/a.png"))
    data = png(32, 18, GREEN)
    done = upload(storage.url, data, lifetime_s=3600)
    assert done.file_url == f"{bucket.url}/files/a.png" and done.size == len(data)
    assert done.expires_at - done.uploaded_at == timedelta(seconds=3600)
    (init,) = storage.seen
    assert (init.method, init.path) == ("POST", "/storage/upload/initiate?storage_type=fal-cdn-v3")
    assert init.headers["Authorization"] == f"Key {SECRET}"
    assert json.loads(init.body) == {"content_type": "image/png", "file_name": "a.png"}
    assert json.loads(init.headers["X-Fal-Object-Lifecycle-Preference"]) == {"expiration_duration_seconds": 3600}
    (put,) = bucket.seen
    assert (put.method, put.path, put.body, put.headers["Content-Type"]) == ("PUT", "/put/signed?sig=abc", data,
                                                                           "image/png")
    assert not carries_key(put), put.headers


@pytest.mark.parametrize("upload_url,file_url,why", [
    ("http://example.com/put", None, "upload_url is not https"),  # plain http off loopback
    ("http://10.1.2.3/put", None, "upload_url is not https"),
    ("ftp://127.0.0.1/put", None, "upload_url is not a plain http(s) URL"),
    ("https://user:pw@storage.example.com/put", None, "upload_url is not a plain http(s) URL"),
    ("file:///etc/passwd", None, "upload_url is not a plain http(s) URL"),
    (None, "http://cdn.example.com/a.png", "file_url is not https"),
    (None, "", "no usable file_url"),
])
def test_foreign_or_plain_http_urls_in_the_answer_are_refused(servers, upload_url, file_url, why):
    bucket = servers()
    storage = servers(initiate_answer(upload_url or f"{bucket.url}/put", file_url if file_url is not None
                                      else f"{bucket.url}/a.png"))
    with pytest.raises(StorageUploadError, match=re.escape(why)) as info:
        upload(storage.url)
    assert not info.value.retryable
    assert len(storage.seen) == 1 and bucket.seen == []  # nothing was PUT anywhere


def test_plain_http_answers_are_refused_when_the_storage_origin_is_https():
    """Plain http is accepted only loopback-to-loopback (a simulator); behind an https origin never."""
    uploader = StorageUploader(storage_url="https://rest.fal.ai", key=SECRET)
    for url in ("http://127.0.0.1:9/put", "http://localhost/put"):
        with pytest.raises(StorageUploadError, match="not https"):
            uploader._checked_url(url, "upload_url")
    assert uploader._checked_url("https://storage.googleapis.com/b/o?X-Goog-Signature=1", "upload_url")
    for bad in ("http://rest.fal.ai", "https://rest.fal.ai/storage", "https://k:s@rest.fal.ai", "ftp://x"):
        with pytest.raises(ValueError):
            StorageUploader(storage_url=bad, key=SECRET)


def test_redirects_are_not_followed(servers):
    elsewhere = servers()
    storage = servers(lambda h: (302, {"Location": f"{elsewhere.url}/storage/upload/initiate"}, b""))
    with pytest.raises(StorageUploadError, match=r"HTTP 302 \(a redirect to http://127\.0\.0\.1:\d+\).*never "
                                                 r"followed"):
        upload(storage.url)
    # and a signed upload URL that redirects: not followed either (nothing reaches the other origin)
    bucket = servers(lambda h: (307, {"Location": f"{elsewhere.url}/put"}, b""))
    storage = servers(initiate_answer(f"{bucket.url}/put", f"{bucket.url}/a.png"))
    with pytest.raises(StorageUploadError, match="HTTP 307"):
        upload(storage.url)
    assert len(bucket.seen) == 1 and elsewhere.seen == []


def test_an_oversized_initiate_answer_is_refused(servers):
    declared = servers(lambda h: (200, {"Content-Type": "application/json", "Content-Length": str(100 * MB)},
                                  iter([b'{"upload_url": "' + b"A" * 1024])))
    with pytest.raises(StorageUploadError, match=r"declares 104,857,600 bytes, over the 64 KiB cap"):
        upload(declared.url)

    def endless(_h):
        yield b'{"upload_url": "http://127.0.0.1/'
        for _ in range(64):  # 4 MiB, far past the cap: reading stops at 64 KiB
            yield b"A" * (64 * 1024)

    streamed = servers(lambda h: (200, {"Content-Type": "application/json"}, endless(h)))
    with pytest.raises(StorageUploadError, match="is longer, over the 64 KiB cap") as info:
        upload(streamed.url)
    assert not info.value.retryable and len(streamed.seen) == 1
    assert ANSWER_BYTES == 64 * 1024


def test_a_key_echoed_in_an_error_is_redacted(servers):
    storage = servers(lambda h: (401, {"Content-Type": "application/json"}, json.dumps(
        {"detail": f"invalid key: {h.headers['Authorization']}"}).encode()))
    with pytest.raises(StorageUploadError) as info:
        upload(storage.url)
    text = str(info.value)
    assert SECRET not in text and "[REDACTED]" in text and "check FAL_KEY" in text, text
    assert not info.value.retryable and len(storage.seen) == 1  # an auth failure is not retried


def test_a_transient_error_is_retried_and_a_too_large_image_never_leaves(servers):
    answers = iter([(503, {"Retry-After": "0"}, b'{"detail": "busy"}')])
    bucket = servers()
    good = initiate_answer(f"{bucket.url}/put", f"{bucket.url}/a.png")
    storage = servers(lambda h: next(answers, None) or good(h))
    assert upload(storage.url).file_url.endswith("/a.png")
    assert [s.method for s in storage.seen] == ["POST", "POST"] and len(bucket.seen) == 1
    with pytest.raises(StorageUploadError, match="over the 1 KiB upload cap") as info:
        upload(storage.url, b"x" * 2048, max_upload_bytes=1024)
    assert not info.value.retryable and len(storage.seen) == 2  # refused before any call


# ---------------------------------------------------------------- the ledger's upload cache

def test_the_ledger_remembers_an_upload_until_near_the_end_of_its_lifetime(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    cache = UploadCache(database)
    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    sha, origin = "ab" * 32, "https://rest.fal.ai"
    assert cache.cached_upload(sha, origin, now=t0) is None
    cache.remember_upload(sha, origin, file_url="https://v3.fal.media/files/a.png", size=10,
                          content_type="image/png", uploaded_at=t0, expires_at=t0 + timedelta(days=8))
    assert cache.cached_upload(sha, origin, now=t0 + timedelta(days=5)) == "https://v3.fal.media/files/a.png"
    assert cache.cached_upload(sha, origin, now=t0 + timedelta(days=6, seconds=1)) is None  # < 1/4 left
    assert cache.cached_upload(sha, origin, now=t0 + timedelta(days=7), margin=timedelta(0)) is not None
    assert cache.cached_upload(sha, "http://127.0.0.1:1", now=t0) is None  # per storage origin
    cache.remember_upload(sha, origin, file_url="https://v3.fal.media/files/b.png", size=10,
                          content_type="image/png", uploaded_at=t0 + timedelta(days=7),
                          expires_at=t0 + timedelta(days=15))  # re-uploaded: replaces the row
    assert cache.cached_upload(sha, origin, now=t0 + timedelta(days=7)) == "https://v3.fal.media/files/b.png"
    database.close()


def test_storage_settings_are_checked_at_load():
    assert StorageSettings.from_env({}) == StorageSettings(8 * MB, 50 * MB, 7 * 24 * 3600, None)
    for env, words in (({"SORA_UPLOAD_THRESHOLD_BYTES": "big"}, "SORA_UPLOAD_THRESHOLD_BYTES"),
                       ({"SORA_UPLOAD_THRESHOLD_BYTES": "100", "SORA_MAX_UPLOAD_BYTES": "10"}, "is above"),
                       ({"SORA_UPLOAD_LIFETIME_S": "0"}, "SORA_UPLOAD_LIFETIME_S"),
                       ({"SORA_FAL_STORAGE_URL": "http://storage.example.com"}, "must be https")):
        with pytest.raises(ConfigError, match=words):
            PipelineSettings.from_env(env)
    s = StorageSettings.from_env({"SORA_FAL_STORAGE_URL": "http://127.0.0.1:8080/"})
    assert s.origin_for(backend="fal", queue_base_url="https://queue.fal.run") == "http://127.0.0.1:8080"
    assert StorageSettings().origin_for(backend="fal", queue_base_url="https://queue.fal.run") == \
        "https://rest.fal.ai"
    assert StorageSettings().origin_for(backend="simulator", queue_base_url="http://127.0.0.1:5/") == \
        "http://127.0.0.1:5"


# ---------------------------------------------------------------- the simulator's storage endpoints

def test_the_simulator_stores_uploads_and_starts_the_video_from_them(make_simulator, monkeypatch):
    sim = make_simulator()
    base = sim.base_url
    data = png(640, 360, GREEN)
    with client() as c:
        anonymous = httpx.post(f"{base}/storage/upload/initiate", json={"content_type": "image/png"})
        assert anonymous.status_code == 401
        init = c.post(f"{base}/storage/upload/initiate?storage_type=fal-cdn-v3",
                      json={"content_type": "image/png", "file_name": "x.png"}).json()
        upload_url, file_url = init["upload_url"], init["file_url"]
        assert upload_url.startswith(f"{base}/_simulator/uploads/") and file_url.endswith(".png")
        assert c.put(upload_url, content=data, headers={"Content-Type": "image/png"}).status_code == 400  # key
        with httpx.Client() as bare:
            assert bare.put(upload_url, content=data, headers={"Content-Type": "image/jpeg"}).status_code == 400
            assert bare.get(file_url).status_code == 404  # not uploaded yet
            assert bare.put(upload_url, content=data, headers={"Content-Type": "image/png"}).status_code == 200
            assert bare.put(upload_url, content=data, headers={"Content-Type": "image/png"}).status_code == 403
            got = bare.get(file_url)
            assert (got.status_code, got.content, got.headers["content-type"]) == (200, data, "image/png")
            monkeypatch.setattr(sim_storage, "MAX_UPLOAD_BYTES", 1000)  # pinpoint: the cap on a PUT
            again = c.post(f"{base}/storage/upload/initiate", json={"content_type": "image/png"}).json()
            assert bare.put(again["upload_url"], content=data, headers={"Content-Type": "image/png"}
                            ).status_code == 413
        sub = submit(c, base, image_url=file_url).json()
        wait_done(c, sub["status_url"])
        video = c.get(sub["response_url"]).json()["video"]
        info = probe(c.get(video["url"]).content)
    assert np.allclose(info["first_mean"], GREEN, atol=6), info["first_mean"]
    calls = sim.stats()["calls"]
    assert (calls["upload_initiate"], calls["upload"]) == (3, 1)


# ---------------------------------------------------------------- whole days against the simulator

def first_frame_mean(uri: str) -> np.ndarray:
    with fsspec.open(uri, "rb") as fh:
        return probe(fh.read())["first_mean"]


def uploads(sim) -> int:
    """Files the simulator stored (`PUT`s that completed)."""
    return sim.stats()["calls"].get("upload", 0)


def job_urls(sim) -> dict[str, str]:
    """prompt → image_url of every job the simulator received."""
    return {job.payload["prompt"]: job.payload["image_url"] for job in sim.app.sim.book.jobs.values()}


def upload_caps(**env: str) -> TransferCapsConfig:
    """The resource's `caps` as the code location builds them from these settings (SORA_UPLOAD_THRESHOLD_BYTES
    64 KiB: the big image is uploaded)."""
    return TransferCapsConfig.of(PipelineSettings.from_env({"SORA_UPLOAD_THRESHOLD_BYTES": str(64 * 1024),
                                                            **env}).caps)


@pytest.fixture
def big_day(tmp_path):
    """A day of four items: it0 and it2 share a large local image, it1 and it3 have small ones (with
    `upload_caps()`)."""
    rows = catalog_rows(n=4)
    for i in (0, 2):
        rows[i]["image_uri"] = "../images/big.png"
    project = make_project(tmp_path, rows)
    data = big_png(tmp_path / "data/images/big.png")
    return project, hashlib.sha256(data).hexdigest()


def generations(project) -> dict[str, dict]:
    return {r["item_id"]: r for r in read_day_partition(project["warehouse_uri"], "generations", DAY).to_pylist()}


def test_a_large_image_is_uploaded_once_and_the_video_starts_from_it(big_day, simulator):
    project, sha = big_day
    res = resources(simulator.base_url, project, caps=upload_caps())
    assert materialize_day(res, run_config={"dry_run": True}).success
    assert uploads(simulator) == 0  # a dry run uploads nothing

    assert materialize_day(res).success
    rows = generations(project)
    assert {r["status"] for r in rows.values()} == {"completed"}
    assert uploads(simulator) == 1  # two items, one image: one upload
    urls = job_urls(simulator)
    big = {urls[f"prompt {i} {DAY}"] for i in ("it0", "it2")}
    assert len(big) == 1 and next(iter(big)).startswith(f"{simulator.base_url}/_simulator/uploads/")
    assert all(urls[f"prompt {i} {DAY}"].startswith("data:image/png;base64,") for i in ("it1", "it3"))
    assert np.allclose(first_frame_mean(rows["it0"]["archive_uri"]), GREEN, atol=6)
    with Database(project["ledger_url"]) as database:  # remembered per content hash and origin
        assert UploadCache(database).cached_upload(sha, simulator.base_url) == next(iter(big))

    assert materialize_day(res).success  # a re-run reuses the videos: nothing submitted, nothing uploaded
    assert simulator.stats()["submits"] == 4 and uploads(simulator) == 1
    assert materialize_day(res, run_config={"regenerate": True}).success  # submitted again: the URL is reused
    assert simulator.stats()["submits"] == 8 and uploads(simulator) == 1

    with Database(project["ledger_url"]) as database:  # the lifetime has (nearly) passed
        past = datetime.now(UTC) - timedelta(days=7)
        UploadCache(database).remember_upload(sha, simulator.base_url, file_url=next(iter(big)), size=1,
                                              content_type="image/png", uploaded_at=past, expires_at=past + timedelta(days=7, hours=1))
    assert materialize_day(res, run_config={"regenerate": True}).success
    assert simulator.stats()["submits"] == 12 and uploads(simulator) == 2  # uploaded again
    with Database(project["ledger_url"]) as database:
        fresh = UploadCache(database).cached_upload(sha, simulator.base_url)
    assert fresh and fresh != next(iter(big)) and job_urls(simulator)[f"prompt it0 {DAY}"] == fresh


def test_a_failed_upload_fails_only_its_items(big_day, simulator, servers):
    project, _ = big_day
    storage = servers(lambda h: (403, {"Content-Type": "application/json"}, json.dumps(
        {"detail": f"key rejected: {h.headers.get('Authorization')}"}).encode()))
    res = resources(simulator.base_url, project, caps=upload_caps(SORA_FAL_STORAGE_URL=storage.url))
    assert materialize_day(res).success  # the day runs
    rows = generations(project)
    assert {i: r["status"] for i, r in rows.items()} == {"it0": "failed", "it1": "completed", "it2": "failed",
                                                          "it3": "completed"}
    for i in ("it0", "it2"):
        reason = rows[i]["error_message"]
        assert rows[i]["error_type"] == "image_upload" and not rows[i]["retryable"]
        assert "could not be uploaded to fal storage: fal storage answered HTTP 403 on the initiate" in reason
        assert "[REDACTED]" in reason and "simulator-local-key" not in reason, reason
    # one initiate for the shared image (two if the second item came after the first had already failed)
    assert simulator.stats()["submits"] == 2 and len(storage.seen) in (1, 2)

    res = resources(simulator.base_url, project, caps=upload_caps())  # storage works again: nothing was claimed,
    # the next run submits
    assert materialize_day(res).success
    assert {r["status"] for r in generations(project).values()} == {"completed"}
    assert simulator.stats()["submits"] == 4 and uploads(simulator) == 1


def test_a_failed_upload_gives_its_budget_reservation_back(big_day, simulator, servers):
    """One request at a time, a run budget of exactly it1 + it3 ($2 + $2): it0's upload fails after it reserved
    $1.20, which must come back, or it3 would be skipped by a budget nothing was spent from."""
    project, _ = big_day
    storage = servers(lambda h: (403, {"Content-Type": "application/json"}, b'{"detail": "no"}'))
    res = resources(simulator.base_url, project, max_concurrency=1,
                    caps=upload_caps(SORA_FAL_STORAGE_URL=storage.url))
    assert materialize_day(res, run_config={"run_budget_usd": 4.0}).success
    rows = generations(project)
    assert {i: r["status"] for i, r in rows.items()} == {"it0": "failed", "it1": "completed", "it2": "skipped",
                                                          "it3": "completed"}, rows
    assert rows["it0"]["error_type"] == "image_upload" and rows["it2"]["error_type"] == "budget"
