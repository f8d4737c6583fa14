"""How many bytes may come in, and the readers that stop there. Every JSON answer is capped at
`max_json_bytes` (setting `SORA_MAX_JSON_BYTES`, default 8 MiB; `BodyReader`, over the cap: `too_large`), every
status-stream line at `max_stream_event_bytes` (setting `SORA_MAX_STREAM_EVENT_BYTES`, default 1 MiB;
`LineSplitter`); error and redirect answers are only cut. `byte_cap`, `parse_byte_cap` and `describe_bytes` serve
the video download cap (`SORA_MAX_VIDEO_BYTES`) and the upload settings too. Nothing here reads the environment:
the pipeline's settings (`sora_pipeline.defs.settings`) parse the variables with `parse_byte_cap` and pass the
caps down. The queue clients feed these the raw chunks they read (`raw_chunks`), which `BoundedDecoder` decodes a
piece at a time, so a compressed answer meets the same caps; `read_capped` (one sync request: no redirect
followed, the answer read up to a cap, strict JSON) is the shared reader of the other fal APIs."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from sora_pipeline.fal.error_mapping import Phase, RetrySignal
from sora_pipeline.fal.errors import AmbiguousSubmitError, RequestFailedError, TransientError

MiB = 1 << 20
MAX_JSON_BYTES_ENV = "SORA_MAX_JSON_BYTES"
DEFAULT_MAX_JSON_BYTES = 8 * MiB  # submit / status / result / cancel answers
MAX_STREAM_EVENT_BYTES_ENV = "SORA_MAX_STREAM_EVENT_BYTES"
DEFAULT_MAX_STREAM_EVENT_BYTES = 1 * MiB  # one line of the status stream
MAX_VIDEO_BYTES_ENV = "SORA_MAX_VIDEO_BYTES"
DEFAULT_MAX_VIDEO_BYTES = 2 << 30  # 2 GiB: a 12 s 1080p clip is tens of MB
ERROR_BODY_BYTES = 64 * 1024  # error and redirect answers are read this far (they only feed a message), then cut
#: what the capped readers ask for (and all `BoundedDecoder` reads): httpx's default would add br / zstd when those
#: packages happen to be installed
ACCEPT_ENCODING = "gzip, deflate"
DECODED_PIECE = 64 * 1024  # a compressed chunk is decoded this much at a time: a decompression bomb meets the cap


def byte_cap(value: int | None, env_var: str, default: int) -> int:
    """A byte cap: `value` if given (at least 1), else `default`; `env_var` names the setting in the error."""
    if value is None:
        return default
    if int(value) < 1:
        raise ValueError(f"a byte cap must be at least 1 (got {value}; the default is {default}, env {env_var})")
    return int(value)


def parse_byte_cap(raw: str | None, env_var: str, default: int) -> int:
    """The value of setting `env_var` (`raw`, its text: bytes, `_` allowed; empty or None: `default`);
    ValueError naming the variable when it is not a whole number ≥ 1."""
    raw = (raw or "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ValueError(f"{env_var}={raw!r} is not a whole number of bytes (default {default})") from None
    if value < 1:
        raise ValueError(f"{env_var}={raw!r} must be at least 1 byte (default {default})")
    return value


def describe_bytes(n: int) -> str:
    """`8 MiB`, `1.5 GiB`, `512 KiB`, `300 bytes`."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} bytes"


def too_large(phase: Phase, request_id: str | None, status_code: int, max_json_bytes: int, *,
              declared: int | None = None, why: str | None = None) -> Exception:
    """The error for a JSON answer over `max_json_bytes` (or one it cannot read: `why`). Submit: ambiguous (fal
    may have accepted it); status: retryable (the request may still finish: it stays resumable); result and
    cancel: not retryable (the same answer would come again; an unread result is never accepted as completed)."""
    cap = f"the {describe_bytes(max_json_bytes)} cap on JSON answers (max_json_bytes / {MAX_JSON_BYTES_ENV})"
    text = (f"the {phase} answer: {why}; it was not read" if why is not None
            else f"the {phase} answer declares Content-Length {declared}, over {cap}; it was not read"
            if declared is not None else f"the {phase} answer is larger than {cap}; reading stopped there")
    if phase == "submit":
        return AmbiguousSubmitError(f"{text}; fal may have accepted the submit", status_code=status_code)
    if phase == "status":
        return RetrySignal(TransientError(text, status_code=status_code, request_id=request_id))
    if phase == "result":
        text += "; the result is not accepted as completed"
    return RequestFailedError(text, status_code=status_code, request_id=request_id, retryable=False)


class UnreadableEncoding(ValueError):
    """An answer in a Content-Encoding the capped readers do not decode (they ask for `ACCEPT_ENCODING`)."""


class BoundedDecoder:
    """An answer's body as its Content-Encoding says (none, gzip or deflate), from the raw chunks read off the
    wire (`aiter_raw`), decoded at most `DECODED_PIECE` bytes at a time: a few compressed bytes never expand into
    memory at once, so the reader's cap stops a decompression bomb where httpx's own decoding would first inflate a
    whole chunk (64 KiB of gzip can hold 64 MiB). Another encoding raises `UnreadableEncoding` up front."""

    def __init__(self, response: httpx.Response) -> None:
        encoding = response.headers.get("content-encoding", "").strip().lower()
        self._raw_fallback = False
        if encoding in ("", "identity") or response.is_stream_consumed:  # read already (a test transport's answer)
            self._inflate = None
        elif encoding in ("gzip", "x-gzip"):
            self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":  # zlib-wrapped as the RFC says; raw deflate too (as httpx accepts)
            self._inflate = zlib.decompressobj()
            self._raw_fallback = True
        else:
            raise UnreadableEncoding(f"the answer's Content-Encoding {encoding[:40]!r} is not one this client reads "
                                     f"(it asks for {ACCEPT_ENCODING})")

    def pieces(self, raw: bytes) -> Iterator[bytes]:
        """The decoded bytes of `raw`, in pieces of at most `DECODED_PIECE` bytes."""
        if self._inflate is None:
            if raw:
                yield raw
            return
        while raw:
            try:
                piece = self._inflate.decompress(raw, DECODED_PIECE)
            except zlib.error as exc:
                if self._raw_fallback:  # not zlib-wrapped: raw deflate from the start
                    self._inflate, self._raw_fallback = zlib.decompressobj(-zlib.MAX_WBITS), False
                    continue
                raise UnreadableEncoding(f"the answer's compressed body is corrupt ({exc})") from None
            self._raw_fallback = False
            raw = self._inflate.unconsumed_tail
            if piece:
                yield piece
            elif self._inflate.eof:
                return  # anything after the end of the compressed stream is ignored


def raw_chunks(response: httpx.Response) -> Iterator[bytes]:
    """The body as it came off the wire, for a `BoundedDecoder` (an answer read already: its content)."""
    return iter((response.content,)) if response.is_stream_consumed else response.iter_raw()


def araw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """`raw_chunks` of an async response."""
    return _just(response.content) if response.is_stream_consumed else response.aiter_raw()


async def _just(content: bytes) -> AsyncIterator[bytes]:
    yield content


class StreamEventTooLarge(Exception):
    """A status-stream line grew past `max_stream_event_bytes` without a newline: the stream is abandoned."""


class LineSplitter:
    """Splits a byte stream into text lines (`\n` or `\r\n`), holding at most `max_line` bytes of a line that
    has not ended yet: a line longer than that raises `StreamEventTooLarge` (memory stays bounded)."""

    def __init__(self, max_line: int, decoder: BoundedDecoder | None = None) -> None:
        self.max_line, self.decoder = max_line, decoder
        self._pending = bytearray()

    def feed(self, raw: bytes) -> Iterator[str]:
        """The lines that end in `raw` (a raw chunk, decoded by `decoder` when given), one decoded piece at a time:
        a compressed chunk of newlines never becomes one list of millions of lines."""
        for piece in (raw,) if self.decoder is None else self.decoder.pieces(raw):
            yield from self._split(piece)

    def _split(self, chunk: bytes) -> list[str]:
        self._pending += chunk
        if b"\n" not in chunk:
            self._check(len(self._pending))
            return []
        *lines, rest = bytes(self._pending).split(b"\n")
        for line in lines:
            self._check(len(line))
        self._check(len(rest))
        self._pending = bytearray(rest)
        return [line.rstrip(b"\r").decode("utf-8", "replace") for line in lines]

    def _check(self, size: int) -> None:
        if size > self.max_line:
            raise StreamEventTooLarge(
                f"a status-stream line is longer than {describe_bytes(self.max_line)} (max_stream_event_bytes / "
                f"{MAX_STREAM_EVENT_BYTES_ENV}); the stream was abandoned")


class BodyReader:
    """Collects an answer's (decoded) body up to a cap; the clients feed it the chunks they read and stop when
    `feed` says so. A success answer beyond `max_json_bytes` is an error (`too_large`), checked against its
    Content-Length up front too; an error or redirect answer is only cut (its text only feeds a message)."""

    def __init__(self, response: httpx.Response, phase: Phase, max_json_bytes: int,
                 request_id: str | None = None) -> None:
        self.response, self.phase, self.request_id = response, phase, request_id
        self.max_json_bytes = max_json_bytes
        self.strict = 200 <= response.status_code < 300
        self.cap = max_json_bytes if self.strict else min(max_json_bytes, ERROR_BODY_BYTES)
        self._chunks: list[bytes] = []
        self._size = 0
        declared = content_length(response)
        if self.strict and declared is not None and declared > self.cap:
            raise too_large(phase, request_id, response.status_code, max_json_bytes, declared=declared)
        try:
            self._decoder = BoundedDecoder(response)
        except UnreadableEncoding as exc:
            raise too_large(phase, request_id, response.status_code, max_json_bytes, why=str(exc)) from None

    def feed(self, raw: bytes) -> bool:
        """Take a raw chunk (`aiter_raw`: decoded here, boundedly); True when reading should stop (an error answer
        cut at its cap)."""
        try:
            for chunk in self._decoder.pieces(raw):
                if self._size + len(chunk) > self.cap:
                    if self.strict:
                        raise too_large(self.phase, self.request_id, self.response.status_code,
                                        self.max_json_bytes)
                    self._chunks.append(chunk[:self.cap - self._size])
                    self._size = self.cap
                    return True
                self._chunks.append(chunk)
                self._size += len(chunk)
        except UnreadableEncoding as exc:
            raise too_large(self.phase, self.request_id, self.response.status_code, self.max_json_bytes,
                            why=str(exc)) from None
        return False

    def finish(self) -> httpx.Response:
        """The answer with the body read so far, for the `parse_*` methods."""
        skip = {"content-encoding", "content-length", "transfer-encoding"}  # the body is already decoded
        headers = [(k, v) for k, v in self.response.headers.multi_items() if k.lower() not in skip]
        return httpx.Response(self.response.status_code, headers=headers, content=b"".join(self._chunks),
                              request=self.response.request)


def content_length(response: httpx.Response) -> int | None:
    try:
        value = int(response.headers.get("content-length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


# ---- one capped request (platform API, schema and price documents) --------------------------------------------

class AnswerRefused(Exception):
    """A 2xx answer over its byte cap (declared or streamed) or slower than its time cap: it was not used. The
    message says which; `cap` (bytes), `declared` (its Content-Length, when that was over) and `seconds` (the time
    cap, when that was passed) let a caller word it its own way."""

    def __init__(self, message: str, *, cap: int, declared: int | None = None, seconds: float | None = None) -> None:
        super().__init__(message)
        self.cap, self.declared, self.seconds = cap, declared, seconds


@dataclass(frozen=True)
class CappedAnswer:
    """An answer read within its caps: status, headers, and the body (an error or redirect answer's cut at
    `ERROR_BODY_BYTES`, `cut` then True)."""

    status_code: int
    headers: httpx.Headers
    body: bytes
    cut: bool = False

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as strict JSON (no NaN/Infinity); ValueError otherwise."""
        def no_constants(name: str) -> Any:
            raise ValueError(f"{name} is not JSON")

        try:
            return json.loads(self.body.decode("utf-8"), parse_constant=no_constants)
        except (UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(str(exc)[:80]) from None


def read_capped(client: httpx.Client, method: str, url: str, *, max_bytes: int,
                max_seconds: float | None = None, **kwargs: Any) -> CappedAnswer:
    """Send one request without following redirects (a 3xx comes back as it is) and read its answer: a 2xx body
    over `max_bytes` (by Content-Length up front, or while streaming) or taking over `max_seconds` raises
    `AnswerRefused`; other answers are cut at `min(max_bytes, ERROR_BODY_BYTES)`. Network errors raise
    `httpx.HTTPError` for the caller to map."""
    started, chunks, size, cut = time.monotonic(), [], 0, False
    kwargs["headers"] = {**(kwargs.get("headers") or {}), "Accept-Encoding": ACCEPT_ENCODING}
    with client.stream(method, url, follow_redirects=False, **kwargs) as response:
        ok = 200 <= response.status_code < 300
        cap = max_bytes if ok else min(max_bytes, ERROR_BODY_BYTES)
        declared = content_length(response)
        if ok and declared is not None and declared > cap:
            raise AnswerRefused(f"the answer declares Content-Length {declared:,}, over the "
                                f"{describe_bytes(cap)} cap; it was not read", cap=cap, declared=declared)
        try:
            decoder = BoundedDecoder(response)
            for chunk in (piece for raw in raw_chunks(response) for piece in decoder.pieces(raw)):
                if size + len(chunk) > cap:
                    if ok:
                        raise AnswerRefused(f"the answer is larger than the {describe_bytes(cap)} cap; reading "
                                            "stopped there", cap=cap)
                    chunks.append(chunk[:cap - size])
                    cut = True
                    break
                chunks.append(chunk)
                size += len(chunk)
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    raise AnswerRefused(f"the answer took over {max_seconds:g} s; reading stopped", cap=cap,
                                        seconds=max_seconds)
        except UnreadableEncoding as exc:
            raise AnswerRefused(f"{exc}; it was not read", cap=cap) from None
        return CappedAnswer(response.status_code, response.headers, b"".join(chunks), cut)
