"""The fal client and the video download against a hostile queue: the real simulator with its hostile fault modes
over real HTTP on loopback, plus a second loopback server on another origin that records what reaches it."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import os
import threading
import time
import tracemalloc
from collections import namedtuple

import httpx
import pytest

from sora_pipeline.defs.resources import FalVideoResource
from sora_pipeline.defs.settings import PipelineSettings, TransferCapsConfig
from sora_pipeline.media import download
from sora_pipeline.media.download import DownloadRefused, DownloadTooLarge, InsufficientDiskSpace, download_video, fetch_video
from sora_pipeline.fal import (
    AmbiguousSubmitError,
    AsyncFalQueueClient,
    FalQueueClient,
    PollPolicy,
    QueueHandle,
    RequestFailedError,
    RetryPolicy,
    TransientError,
)

SECRET = "fal-hostile-test-key-0123456789"
MB = 1 << 20
HOSTILE = 128 * MB  # what the hostile bodies would send in full (a safety stop: "endless" for these tests)
BOUND = 48 * MB  # what may reach the network before a capped client hangs up (socket buffers included)
FAST = dict(poll=PollPolicy(interval=0.05, stream=False),
            retry=RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05))


def args(uri: str, **kw) -> dict:
    return {"prompt": "a lighthouse at dawn", "image_url": uri, **kw}


class _Recorder(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
        body = b'{"status": "COMPLETED"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = _answer

    def log_message(self, *a) -> None:
        pass


@pytest.fixture
def recorder():
    """Another origin (same loopback host, another port) that records every request and its headers."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Rec = namedtuple("Rec", "url seen")
    yield Rec(f"http://127.0.0.1:{server.server_address[1]}", server.seen)  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def leaked(seen: list) -> list:
    return [(m, p) for m, p, headers in seen
            if "authorization" in {k.lower() for k in headers} or SECRET in json.dumps(headers)]


# -- 1. the key goes only to the configured origin ---------------------------------------------------------------

def test_foreign_urls_get_nothing_and_the_job_completes_sync(make_simulator, recorder, png_data_uri, caplog):
    caplog.set_level(logging.WARNING, logger="sora_pipeline.fal")
    sim = make_simulator(faults={"foreign_urls": 1.0}, foreign_base_url=recorder.url)
    with FalQueueClient(key=SECRET, base_url=sim.base_url, **FAST) as client:
        raw = httpx.post(f"{sim.base_url}/fal-ai/sora-2/image-to-video/pro", json=args(png_data_uri),
                         headers={"Authorization": "Key x"}).json()
        assert raw["status_url"].startswith(recorder.url)  # the mode is on
        handle = client.submit(args(png_data_uri))
        # what the ledger stores: URLs on the configured origin only
        assert all(u.startswith(sim.base_url + "/fal-ai/sora-2/requests/" + handle.request_id)
                   for u in (handle.status_url, handle.response_url, handle.cancel_url))
        assert client.wait(handle).done and client.result(handle).video.url
        # a handle restored from a ledger row that holds the foreign URLs (written by an older version)
        rid = raw["request_id"]
        stored = QueueHandle(rid, raw["status_url"], raw["response_url"], raw["cancel_url"])
        assert client.wait(stored).done and client.result(stored).video_id
        assert client.cancel(stored) == "ALREADY_COMPLETED"
    assert recorder.seen == [], f"the foreign origin was called: {[(m, p) for m, p, _ in recorder.seen]}"
    warnings = [r.getMessage() for r in caplog.records if "configured queue" in r.getMessage()]
    assert len(warnings) == 2 and all(SECRET not in w for w in warnings)  # once per request id
    assert sim.stats()["submits"] == 2 and sim.stats()["completed"] == 2


def test_foreign_urls_get_nothing_on_the_async_status_stream(make_simulator, recorder, png_data_uri):
    sim = make_simulator(faults={"foreign_urls": 1.0}, foreign_base_url=recorder.url)

    async def main():
        async with AsyncFalQueueClient(key=SECRET, base_url=sim.base_url,
                                       poll=PollPolicy(interval=0.05), retry=FAST["retry"]) as client:
            handle = await client.submit(args(png_data_uri))
            await client.wait(handle)
            output = await client.result(handle)
            return handle, output

    handle, output = asyncio.run(main())
    assert output.video.url and handle.status_url.startswith(sim.base_url)
    assert leaked(recorder.seen) == [] and recorder.seen == []
    assert sim.stats()["calls"]["status"] == 1  # through the real origin's stream


def test_bad_request_id_is_an_ambiguous_submit_never_sent_twice(make_simulator, recorder, png_data_uri):
    sim = make_simulator(faults={"bad_request_id": 1.0}, foreign_base_url=recorder.url)
    with FalQueueClient(key=SECRET, base_url=sim.base_url, **FAST) as client:
        with pytest.raises(AmbiguousSubmitError, match="request_id"):
            client.submit(args(png_data_uri))
    assert sim.stats()["submits"] == 1 and recorder.seen == []


def _result_when_done(client: FalQueueClient, handle: QueueHandle, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.result(handle)
        except RequestFailedError as exc:  # 400 "still in progress"
            if exc.status_code != 400 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_redirects_are_errors_and_never_followed(make_simulator, recorder, png_data_uri):
    sim = make_simulator(faults={"redirect": 1.0}, fault_calls=frozenset({"status", "file"}),
                         foreign_base_url=recorder.url)
    with FalQueueClient(key=SECRET, base_url=sim.base_url, **FAST) as client:
        handle = client.submit(args(png_data_uri))
        with pytest.raises(TransientError, match="redirect") as err:
            client.status(handle)
        assert "never followed" in str(err.value) and SECRET not in str(err.value)
        output = _result_when_done(client, handle)  # results are not redirected in this configuration
    assert sim.stats()["calls"]["status"] == 1  # a redirect is not retried

    async def fetch():
        async with httpx.AsyncClient(headers={"Authorization": f"Key {SECRET}"}) as http:
            await download_video(http, output.video.url, queue_base_url=sim.base_url)

    with pytest.raises(DownloadRefused, match="redirect"):
        asyncio.run(fetch())
    assert recorder.seen == []

    sim = make_simulator(faults={"redirect": 1.0}, fault_calls=frozenset({"submit"}),
                         foreign_base_url=recorder.url)
    with FalQueueClient(key=SECRET, base_url=sim.base_url, **FAST) as client:
        with pytest.raises(AmbiguousSubmitError, match="redirect"):
            client.submit(args(png_data_uri))
    assert sim.stats()["calls"]["submit"] == 1 and recorder.seen == []


# -- 2. caps on every byte that comes in -------------------------------------------------------------------------

def _finished_video_url(sim, uri: str) -> str:
    with FalQueueClient(key=SECRET, base_url=sim.base_url, **FAST) as client:
        return client.subscribe(args(uri)).video.url


@pytest.mark.parametrize("declare_length", [False, True])
def test_endless_video_stops_at_the_cap_and_leaves_no_file(make_simulator, png_data_uri, tmp_path, declare_length):
    sim = make_simulator(faults={"endless_video": 1.0}, hostile_bytes=HOSTILE,
                         hostile_declare_length=declare_length)
    url = _finished_video_url(sim, png_data_uri)
    cap = PipelineSettings.from_env({"SORA_MAX_VIDEO_BYTES": str(5 * MB)}).caps.max_video_bytes  # passed down
    incoming = tmp_path / "archive" / ".incoming"

    async def main():
        async with httpx.AsyncClient() as http:
            await fetch_video(http, url, queue_base_url=sim.base_url, archive_stem=str(tmp_path / "archive" / "v"),
                              max_bytes=cap)

    with pytest.raises(DownloadTooLarge, match="SORA_MAX_VIDEO_BYTES") as err:
        asyncio.run(main())
    assert "5 MiB" in str(err.value) and ("declares Content-Length" in str(err.value)) == declare_length
    assert list(incoming.iterdir()) == []  # the partial temp file is gone
    assert sim.stats()["hostile_bytes_sent"] < BOUND


def test_download_refused_when_the_disk_is_nearly_full(simulator, png_data_uri, tmp_path, monkeypatch):
    url = _finished_video_url(simulator, png_data_uri)
    real = download.shutil.disk_usage
    monkeypatch.setattr(download.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=100 * MB))  # below the 256 MiB margin

    async def main(**kw):
        async with httpx.AsyncClient() as http:
            return await download_video(http, url, queue_base_url=simulator.base_url, tmp_dir=str(tmp_path), **kw)

    with pytest.raises(InsufficientDiskSpace, match="free"):
        asyncio.run(main())
    assert os.listdir(tmp_path) == []
    file = asyncio.run(main(min_free_bytes=10 * MB))  # a smaller margin fits
    assert file.size > 0 and os.path.getsize(file.path) == file.size


def test_huge_result_json_is_not_accepted_as_completed(make_simulator, png_data_uri):
    sim = make_simulator(faults={"huge_json": 1.0}, hostile_bytes=HOSTILE)
    tracemalloc.start()
    try:
        with FalQueueClient(key=SECRET, base_url=sim.base_url, max_json_bytes=1 * MB, **FAST) as client:
            with pytest.raises(RequestFailedError, match="SORA_MAX_JSON_BYTES") as err:
                client.subscribe(args(png_data_uri))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not err.value.retryable and "1 MiB" in str(err.value)
    stats = sim.stats()
    assert stats["calls"]["result"] == 1, "retrying the same oversized answer cannot help"
    assert stats["hostile_bytes_sent"] < BOUND and peak < 24 * MB


def test_huge_result_json_with_content_length_refused_up_front(make_simulator, png_data_uri):
    cap = PipelineSettings.from_env({"SORA_MAX_JSON_BYTES": str(2 * MB)}).caps.max_json_bytes  # passed down
    sim = make_simulator(faults={"huge_json": 1.0}, hostile_bytes=HOSTILE, hostile_declare_length=True)

    async def main():
        async with AsyncFalQueueClient(key=SECRET, base_url=sim.base_url, max_json_bytes=cap, **FAST) as client:
            return await client.subscribe(args(png_data_uri))

    with pytest.raises(RequestFailedError, match="Content-Length") as err:
        asyncio.run(main())
    assert "SORA_MAX_JSON_BYTES" in str(err.value) and not err.value.retryable
    assert sim.stats()["hostile_bytes_sent"] < BOUND and sim.stats()["calls"]["result"] == 1


@pytest.mark.parametrize("declare_length", [False, True])
def test_huge_status_json_is_a_transient_error_naming_the_cap(make_simulator, png_data_uri, declare_length):
    sim = make_simulator(faults={"huge_status_json": 1.0}, hostile_bytes=HOSTILE,
                         hostile_declare_length=declare_length)
    with FalQueueClient(key=SECRET, base_url=sim.base_url, max_json_bytes=512 * 1024, **FAST) as client:
        handle = client.submit(args(png_data_uri))
        with pytest.raises(TransientError, match="SORA_MAX_JSON_BYTES"):
            client.wait(handle)
    # transient: the request stays resumable (never resubmitted), and each answer was cut off at the cap
    assert sim.stats()["submits"] == 1 and sim.stats()["hostile_bytes_sent"] < BOUND


def test_status_stream_line_without_newline_falls_back_to_polling(make_simulator, png_data_uri, caplog):
    caplog.set_level(logging.WARNING, logger="sora_pipeline.fal")
    sim = make_simulator(faults={"huge_stream_event": 1.0}, hostile_bytes=HOSTILE)

    async def main():
        async with AsyncFalQueueClient(key=SECRET, base_url=sim.base_url, poll=PollPolicy(interval=0.05),
                                       retry=FAST["retry"], max_stream_event_bytes=64 * 1024) as client:
            handle = await client.submit(args(png_data_uri))
            status = await client.wait(handle, timeout=60)
            return status, await client.result(handle)

    tracemalloc.start()
    try:
        status, output = asyncio.run(main())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status.done and output.video.url
    assert any("SORA_MAX_STREAM_EVENT_BYTES" in r.getMessage() for r in caplog.records)
    stats = sim.stats()
    assert stats["faults"]["huge_stream_event"] == 1, "the stream is given up at once, not reopened"
    assert stats["hostile_bytes_sent"] < BOUND and peak < 24 * MB


def test_byte_caps_from_env_and_bad_values(monkeypatch):
    """The environment is read by the settings; the caps reach the clients through the resource's `caps`."""
    def client_from_env() -> FalQueueClient:
        caps = TransferCapsConfig.of(PipelineSettings.from_env().caps)
        return FalVideoResource(fal_key=SECRET, queue_url="https://queue.fal.run", caps=caps).sync_client()

    monkeypatch.setenv("SORA_MAX_JSON_BYTES", "12345")
    monkeypatch.setenv("SORA_MAX_STREAM_EVENT_BYTES", "2048")
    with client_from_env() as client:
        assert client.protocol.max_json_bytes == 12345 and client.protocol.max_stream_event_bytes == 2048
    with FalQueueClient(key=SECRET, max_json_bytes=99) as client:
        assert client.protocol.max_json_bytes == 99
    monkeypatch.setenv("SORA_MAX_JSON_BYTES", "lots")
    with pytest.raises(ValueError, match="SORA_MAX_JSON_BYTES"):
        client_from_env()
    monkeypatch.delenv("SORA_MAX_JSON_BYTES")
    monkeypatch.delenv("SORA_MAX_STREAM_EVENT_BYTES")
    with client_from_env() as client:
        assert (client.protocol.max_json_bytes, client.protocol.max_stream_event_bytes) == (8 * MB, 1 * MB)
    assert download.max_video_bytes() == 2 << 30


# -- 3. modes the other engineers use ----------------------------------------------------------------------------

def test_cancel_already_completed_and_the_job_still_completes(make_simulator, png_data_uri):
    sim = make_simulator(faults={"cancel_already_completed": 1.0}, run_latency=0.5)
    with FalQueueClient(key=SECRET, base_url=sim.base_url, **FAST) as client:
        handle = client.submit(args(png_data_uri))
        assert client.cancel(handle) == "ALREADY_COMPLETED"
        assert client.wait(handle).done
        assert client.result(handle).video_id == client.result(handle).video_id
    stats = sim.stats()
    assert stats["cancels"] == 0 and stats["completed"] == 1 and stats["faults"] == {"cancel_already_completed": 1}
