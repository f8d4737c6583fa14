"""Compressed answers against the byte caps, from a hostile server on loopback: a gzip bomb (a few hundred KB that
inflate to 256 MiB) stops at the cap without ever holding more than a small piece decoded — httpx's own decoding
inflates a whole 64 KiB chunk at once (up to 64 MiB) — for JSON answers, the status stream, video downloads and
the platform reader; an encoding the readers did not ask for is refused in one line; honest gzip and deflate
answers still read."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import json
import threading
import tracemalloc
import zlib

import httpx
import pytest

from sora_pipeline.fal import FalQueueClient, PollPolicy, RequestFailedError, RetryPolicy
from sora_pipeline.fal.limits import ACCEPT_ENCODING, AnswerRefused, read_capped
from sora_pipeline.media.download import DownloadRefused, DownloadTooLarge, download_video

MB = 1 << 20
FAST = dict(poll=PollPolicy(interval=0.05, stream=False), retry=RetryPolicy(max_attempts=1))
PEAK = 16 * MB  # what a capped read may hold at most here (the caps are 1-2 MiB; a bomb chunk inflates to 64 MiB)


def _bomb(inflated: int = 256 * MB) -> bytes:
    """gzip of `inflated` bytes of '0', built a MiB at a time."""
    z, out, block = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS), [], b"0" * MB
    for _ in range(inflated // MB):
        out.append(z.compress(block))
    out.append(z.flush())
    return b"".join(out)


BOMB = _bomb()
RESULT = {"video": {"url": "https://v3.fal.media/files/x/out.mp4", "content_type": "video/mp4"}, "video_id": "v-1"}


class _Hostile(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append(dict(self.headers))  # type: ignore[attr-defined]
        kind = self.server.kind  # type: ignore[attr-defined]
        body, encoding, ctype = {
            "bomb": (BOMB, "gzip", "application/json"),
            "brotli": (b"\x1b\x00\x00", "br", "application/json"),
            "gzip": (gzip.compress(json.dumps(RESULT).encode()), "gzip", "application/json"),
            "deflate-raw": (_raw_deflate(json.dumps(RESULT).encode()), "deflate", "application/json"),
            "stream-bomb": (BOMB, "gzip", "text/event-stream"),
        }[kind]
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *a) -> None:
        pass


def _raw_deflate(data: bytes) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return z.compress(data) + z.flush()


@pytest.fixture
def hostile():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.seen, server.kind = [], "bomb"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def _peak(call):
    """(what `call()` raised or returned, the peak of Python allocations meanwhile)."""
    tracemalloc.start()
    try:
        try:
            out = call()
        except Exception as exc:  # noqa: BLE001
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_gzip_bomb_result_stops_at_the_json_cap_without_inflating(hostile):
    with FalQueueClient(key="k", base_url=_url(hostile), max_json_bytes=1 * MB, **FAST) as client:
        err, peak = _peak(lambda: client.result(client.protocol.handle_for("req-1")))
    assert isinstance(err, RequestFailedError) and "larger than the 1 MiB cap" in str(err), err
    assert not err.retryable and peak < PEAK, peak
    assert hostile.seen[0]["Accept-Encoding"] == ACCEPT_ENCODING  # never br/zstd, whatever is installed


def test_a_gzip_bomb_status_stream_is_abandoned_at_the_line_cap(hostile):
    hostile.kind = "stream-bomb"
    from sora_pipeline.fal import AsyncFalQueueClient

    async def main():
        async with AsyncFalQueueClient(key="k", base_url=_url(hostile), max_stream_event_bytes=1 * MB,
                                       poll=PollPolicy(interval=0.05), **{"retry": RetryPolicy(max_attempts=1)}) \
                as client:
            return await client._follow_stream(client.protocol.handle_for("req-1"), 0.0, None, None)  # noqa: SLF001

    out, peak = _peak(lambda: asyncio.run(main()))
    assert out is None and peak < PEAK, (out, peak)  # no usable stream: the client polls instead


def test_a_gzip_bomb_video_stops_at_the_video_cap_and_leaves_no_file(hostile, tmp_path):
    async def main():
        async with httpx.AsyncClient() as http:
            return await download_video(http, f"{_url(hostile)}/v.mp4", queue_base_url=_url(hostile),
                                        tmp_dir=str(tmp_path), max_bytes=2 * MB, min_free_bytes=0)

    err, peak = _peak(lambda: asyncio.run(main()))
    assert isinstance(err, DownloadTooLarge) and "2 MiB" in str(err), err
    assert peak < PEAK and list(tmp_path.iterdir()) == []


def test_a_gzip_bomb_platform_answer_is_refused_at_its_cap(hostile):
    with httpx.Client() as http:
        err, peak = _peak(lambda: read_capped(http, "GET", f"{_url(hostile)}/v1/models", max_bytes=1 * MB))
    assert isinstance(err, AnswerRefused) and "larger than the 1 MiB cap" in str(err), err
    assert peak < PEAK


def test_an_encoding_nobody_asked_for_is_refused_in_one_line(hostile, tmp_path):
    hostile.kind = "brotli"
    with FalQueueClient(key="k", base_url=_url(hostile), **FAST) as client:
        with pytest.raises(RequestFailedError, match="Content-Encoding 'br' is not one this client reads"):
            client.result(client.protocol.handle_for("req-1"))

    async def main():
        async with httpx.AsyncClient() as http:
            await download_video(http, f"{_url(hostile)}/v.mp4", queue_base_url=_url(hostile),
                                 tmp_dir=str(tmp_path), min_free_bytes=0)

    with pytest.raises(DownloadRefused, match="'br'"):
        asyncio.run(main())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["gzip", "deflate-raw"])
def test_honest_compressed_answers_still_read(hostile, kind):
    hostile.kind = kind
    with FalQueueClient(key="k", base_url=_url(hostile), **FAST) as client:
        assert client.result(client.protocol.handle_for("req-1")).video.url == RESULT["video"]["url"]
    with httpx.Client() as http:
        assert json.loads(read_capped(http, "GET", f"{_url(hostile)}/x", max_bytes=MB).body) == RESULT


def test_a_compressed_chunk_of_newlines_is_split_a_piece_at_a_time():
    from itertools import islice

    from sora_pipeline.fal.limits import BoundedDecoder, LineSplitter

    class Wire(httpx.SyncByteStream):  # an answer not read yet: its bytes as they came off the wire
        def __iter__(self):
            yield b""

    body = gzip.compress(b"\n" * (16 * MB))  # 16 KB on the wire
    response = httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=Wire())
    splitter = LineSplitter(1 * MB, BoundedDecoder(response))
    first, peak = _peak(lambda: list(islice(splitter.feed(body), 10)))
    assert first == [""] * 10 and peak < 4 * MB, peak  # 16 million lines were never one list
