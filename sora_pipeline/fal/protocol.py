"""fal's queue protocol without I/O: request building, answer parsing, error mapping, retry and poll policy.

The sync and async clients in `client.py` only send what this module builds and hand back what they receive.

The key goes only to the configured queue origin (scheme, host, port): every status, status-stream, result and
cancel URL is built here from the configured base URL, the endpoint's owner/alias and the request id; the URLs a
submit answer (or a ledger row) carries are never used, and ones that point elsewhere are logged once per request.
Request ids are checked (`valid_request_id`). Bytes coming in are capped: every JSON answer at `max_json_bytes`
(env `SORA_MAX_JSON_BYTES`, default 8 MiB; `BodyReader`), every status-stream line at `max_stream_event_bytes`
(env `SORA_MAX_STREAM_EVENT_BYTES`, default 1 MiB; `LineSplitter`)."""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr, ValidationError

from sora_pipeline.fal.errors import (
    AmbiguousSubmitError,
    AuthenticationError,
    FalError,
    InputValidationError,
    RateLimitedError,
    RequestFailedError,
    ResultGoneError,
    TransientError,
)
from sora_pipeline.fal.models import ImageToVideoInput, ImageToVideoOutput, validation_messages
from sora_pipeline.redact import register_secret

log = logging.getLogger("sora_pipeline.fal")
Phase = Literal["submit", "status", "result", "cancel"]
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# a submit may be repeated only when fal provably did not accept it
SUBMIT_RETRYABLE_STATUS = frozenset({429, 503})
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

MiB = 1 << 20
MAX_JSON_BYTES_ENV = "SORA_MAX_JSON_BYTES"
DEFAULT_MAX_JSON_BYTES = 8 * MiB  # submit / status / result / cancel answers
MAX_STREAM_EVENT_BYTES_ENV = "SORA_MAX_STREAM_EVENT_BYTES"
DEFAULT_MAX_STREAM_EVENT_BYTES = 1 * MiB  # one line of the status stream
ERROR_BODY_BYTES = 64 * 1024  # error and redirect answers are read this far (they only feed a message), then cut
MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,%d}" % MAX_REQUEST_ID_LENGTH)
_WARNED_LIMIT = 10_000  # request ids remembered for the once-per-request warning about foreign URLs


def byte_cap(value: int | None, env_var: str, default: int, env: Mapping[str, str] | None = None) -> int:
    """A byte cap: `value` if given, else the integer in `env_var` (bytes; `_` allowed), else `default`."""
    if value is None:
        raw = (os.environ if env is None else env).get(env_var, "").strip()
        if not raw:
            return default
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            raise ValueError(f"{env_var}={raw!r} is not a whole number of bytes (default {default})") from None
        if value < 1:
            raise ValueError(f"{env_var}={raw!r} must be at least 1 byte (default {default})")
        return value
    if int(value) < 1:
        raise ValueError(f"a byte cap must be at least 1 (got {value}; the default is {default}, env {env_var})")
    return int(value)


def describe_bytes(n: int) -> str:
    """`8 MiB`, `1.5 GiB`, `512 KiB`, `300 bytes`."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} bytes"


def valid_request_id(value: Any) -> bool:
    """fal request ids are UUIDs; accept 1-128 of [A-Za-z0-9_.:-], never a path ('/', '..') or only dots."""
    return (isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None and ".." not in value
            and value.strip(".") != "")


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, default ports filled in; None if it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except (ValueError, TypeError, AttributeError):
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded in attempts and in total seconds (Retry-After is honoured)."""

    max_attempts: int = 6
    initial_delay: float = 0.2
    max_delay: float = 10.0
    total_timeout: float = 120.0
    jitter: float = 0.5  # delay × uniform(1 - jitter, 1 + jitter)

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        base = min(self.initial_delay * 2 ** max(attempt - 1, 0), self.max_delay)
        delay = base * random.uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_delay * 3))
        return delay


@dataclass(frozen=True)
class PollPolicy:
    """How to wait for a request. With `stream` the async client follows fal's status stream (server-sent
    events: one long request per job instead of one call per poll) and polls only if the stream is unavailable.
    Polls are `interval` seconds apart at first, growing by `backoff` per poll once the request has run longer
    than `backoff_after`, capped at `max_interval` (never below `interval`)."""

    stream: bool = True
    interval: float = 1.0
    max_interval: float = 10.0
    backoff: float = 1.5
    backoff_after: float = 30.0

    def next_delay(self, elapsed: float, previous: float | None) -> float:
        if previous is None or elapsed < self.backoff_after:
            return self.interval
        return max(self.interval, min(previous * self.backoff, self.max_interval))


@dataclass(frozen=True)
class QueueHandle:
    """What submit returns: the request id and the URLs to use for it (persist these before anything else)."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    queue_position: int | None = None
    gateway_request_id: str | None = None


@dataclass(frozen=True)
class QueueStatus:
    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    queue_position: int | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None

    @property
    def done(self) -> bool:
        return self.status == "COMPLETED"


@dataclass(frozen=True)
class OutgoingRequest:
    method: str
    url: str
    phase: Phase
    json: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


class RetrySignal(Exception):
    """Raised inside a retry loop for an answer or network error that may be retried."""

    def __init__(self, error: FalError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def split_endpoint(endpoint_id: str) -> tuple[str, str, str]:
    """`fal-ai/sora-2/image-to-video/pro` → ("fal-ai", "sora-2", "image-to-video/pro")."""
    parts = endpoint_id.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"endpoint id {endpoint_id!r} must look like 'owner/alias[/path]'")
    return parts[0], parts[1], "/".join(parts[2:])


def check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"queue base URL {base_url!r} is not an http(s) URL; set SORA_FAL_QUEUE_URL "
                         "(e.g. https://queue.fal.run)")
    return base_url.rstrip("/")


class StreamEventTooLarge(Exception):
    """A status-stream line grew past `max_stream_event_bytes` without a newline: the stream is abandoned."""


class LineSplitter:
    """Splits a byte stream into text lines (`\n` or `\r\n`), holding at most `max_line` bytes of a line that
    has not ended yet: a line longer than that raises `StreamEventTooLarge` (memory stays bounded)."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> list[str]:
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
    `feed` says so. A success answer beyond the cap is an error (`QueueProtocol.too_large`), checked against its
    Content-Length up front too; an error or redirect answer is only cut (its text only feeds a message)."""

    def __init__(self, protocol: QueueProtocol, response: httpx.Response, phase: Phase,
                 request_id: str | None = None) -> None:
        self.protocol, self.response, self.phase, self.request_id = protocol, response, phase, request_id
        self.strict = 200 <= response.status_code < 300
        self.cap = protocol.max_json_bytes if self.strict else min(protocol.max_json_bytes, ERROR_BODY_BYTES)
        self._chunks: list[bytes] = []
        self._size = 0
        declared = _content_length(response)
        if self.strict and declared is not None and declared > self.cap:
            raise protocol.too_large(phase, request_id, response.status_code, declared=declared)

    def feed(self, chunk: bytes) -> bool:
        """Take a chunk; True when reading should stop (an error answer cut at its cap)."""
        if self._size + len(chunk) > self.cap:
            if self.strict:
                raise self.protocol.too_large(self.phase, self.request_id, self.response.status_code)
            self._chunks.append(chunk[:self.cap - self._size])
            self._size = self.cap
            return True
        self._chunks.append(chunk)
        self._size += len(chunk)
        return False

    def finish(self) -> httpx.Response:
        """The answer with the body read so far, for the `parse_*` methods."""
        skip = {"content-encoding", "content-length", "transfer-encoding"}  # the body is already decoded
        headers = [(k, v) for k, v in self.response.headers.multi_items() if k.lower() not in skip]
        return httpx.Response(self.response.status_code, headers=headers, content=b"".join(self._chunks),
                              request=self.response.request)


def _content_length(response: httpx.Response) -> int | None:
    try:
        value = int(response.headers.get("content-length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


class QueueProtocol:
    """Builds requests for one endpoint and maps answers to results or typed errors.

    `max_json_bytes` caps every JSON answer (env `SORA_MAX_JSON_BYTES`, default 8 MiB) and
    `max_stream_event_bytes` every status-stream line (env `SORA_MAX_STREAM_EVENT_BYTES`, default 1 MiB); None
    reads the env var, else the default applies."""

    def __init__(self, *, base_url: str, endpoint_id: str, key: str | SecretStr | None,
                 priority: str | None = None, start_timeout: float | None = None, no_retry: bool = False,
                 webhook_url: str | None = None, max_json_bytes: int | None = None,
                 max_stream_event_bytes: int | None = None) -> None:
        self.base_url = check_base_url(base_url)
        self.origin = origin(self.base_url)
        self.endpoint_id = endpoint_id
        self.owner, self.alias, _ = split_endpoint(endpoint_id)
        self._key = key if isinstance(key, SecretStr) or key is None else SecretStr(key)
        register_secret(self._key)  # an answer that echoes it back is redacted before anyone sees it
        self.max_json_bytes = byte_cap(max_json_bytes, MAX_JSON_BYTES_ENV, DEFAULT_MAX_JSON_BYTES)
        self.max_stream_event_bytes = byte_cap(max_stream_event_bytes, MAX_STREAM_EVENT_BYTES_ENV,
                                               DEFAULT_MAX_STREAM_EVENT_BYTES)
        self._warned: set[str] = set()
        if priority not in (None, "normal", "low"):
            raise ValueError(f"queue priority {priority!r} must be 'normal' or 'low'")
        self.priority = priority
        self.start_timeout = start_timeout
        self.no_retry = no_retry
        self.webhook_url = webhook_url

    def __repr__(self) -> str:
        return (f"QueueProtocol(base_url={self.base_url!r}, endpoint_id={self.endpoint_id!r}, "
                f"key={'set' if self._key else 'unset'})")

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "sora-pipeline/0.1"}
        if self._key is not None:
            headers["Authorization"] = f"Key {self._key.get_secret_value()}"
        return headers

    # -- building ------------------------------------------------------------------------------------
    def validate_input(self, arguments: ImageToVideoInput | dict[str, Any]) -> ImageToVideoInput:
        if isinstance(arguments, ImageToVideoInput):
            return arguments
        try:
            return ImageToVideoInput.model_validate(arguments)
        except ValidationError as exc:
            lines = validation_messages(exc)
            errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                      for e in exc.errors(include_input=False, include_url=False)]
            raise InputValidationError("invalid input: " + "; ".join(lines), errors=errors) from None

    def submit(self, arguments: ImageToVideoInput | dict[str, Any]) -> OutgoingRequest:
        payload = self.validate_input(arguments).to_payload()
        headers: dict[str, str] = {}
        if self.priority:
            headers["X-Fal-Queue-Priority"] = self.priority
        if self.start_timeout:
            headers["X-Fal-Request-Timeout"] = str(int(self.start_timeout))
        if self.no_retry:
            headers["X-Fal-No-Retry"] = "1"
        params = {"fal_webhook": self.webhook_url} if self.webhook_url else {}
        return OutgoingRequest("POST", f"{self.base_url}/{self.endpoint_id}", "submit", payload, headers, params)

    def _request_url(self, request_id: str, suffix: str = "") -> str:
        if not valid_request_id(request_id):
            raise RequestFailedError(f"{str(request_id)[:80]!r} is not a fal request id (1-{MAX_REQUEST_ID_LENGTH} "
                                     "of A-Z a-z 0-9 _ . : -, no '..'); no URL is built from it", retryable=False)
        return f"{self.base_url}/{self.owner}/{self.alias}/requests/{request_id}{suffix}"

    def _url(self, handle: QueueHandle | str, suffix: str, given: str | None = None) -> str:
        """The URL of a request-scoped call: always on the configured origin, whatever the handle says."""
        request_id = handle.request_id if isinstance(handle, QueueHandle) else handle
        url = self._request_url(request_id, suffix)
        if given and not self._same_target(given, url):
            self._warn_foreign(request_id, given)
        return url

    def _same_target(self, given: str, expected: str) -> bool:
        try:
            return origin(given) == self.origin and urlsplit(given).path == urlsplit(expected).path
        except ValueError:
            return False

    def _warn_foreign(self, request_id: str, given: str) -> None:
        if request_id in self._warned:
            return
        if len(self._warned) >= _WARNED_LIMIT:
            self._warned.clear()
        self._warned.add(request_id)
        where = origin(given)
        shown = f"{where[0]}://{where[1]}:{where[2]}" if where else "a malformed URL"
        log.warning("fal request %s: the queue answered URLs on %s (or with an unexpected path), not on the "
                    "configured queue %s; using %s/%s/%s/requests/%s/... instead (the key only goes to the "
                    "configured origin)", request_id, shown[:120], self.base_url, self.base_url, self.owner,
                    self.alias, request_id)

    def status(self, handle: QueueHandle | str, *, logs: bool = True) -> OutgoingRequest:
        url = self._url(handle, "/status", getattr(handle, "status_url", None))
        return OutgoingRequest("GET", url, "status", params={"logs": "1"} if logs else {})

    def status_stream(self, handle: QueueHandle | str, *, logs: bool = True) -> OutgoingRequest:
        self._url(handle, "/status", getattr(handle, "status_url", None))  # warns about a foreign status_url
        url = self._url(handle, "/status/stream")
        return OutgoingRequest("GET", url, "status", params={"logs": "1"} if logs else {})

    def result(self, handle: QueueHandle | str) -> OutgoingRequest:
        return OutgoingRequest("GET", self._url(handle, "", getattr(handle, "response_url", None)), "result")

    def cancel(self, handle: QueueHandle | str) -> OutgoingRequest:
        return OutgoingRequest("PUT", self._url(handle, "/cancel", getattr(handle, "cancel_url", None)), "cancel")

    def handle_for(self, request_id: str) -> QueueHandle:
        """The handle of a request id: its URLs on the configured origin (what `parse_submit` returns too)."""
        return QueueHandle(request_id, self._request_url(request_id, "/status"), self._request_url(request_id),
                           self._request_url(request_id, "/cancel"))

    # -- reading -------------------------------------------------------------------------------------
    def body_reader(self, response: httpx.Response, phase: Phase, request_id: str | None = None) -> BodyReader:
        """A capped reader for this answer's body (raises at once if its Content-Length is over the cap)."""
        return BodyReader(self, response, phase, request_id)

    def line_splitter(self) -> LineSplitter:
        """A capped line splitter for the status stream."""
        return LineSplitter(self.max_stream_event_bytes)

    def too_large(self, phase: Phase, request_id: str | None, status_code: int, *,
                  declared: int | None = None) -> Exception:
        """The error for a JSON answer over `max_json_bytes`. Submit: ambiguous (fal may have accepted it);
        status: retryable (the request may still finish: it stays resumable); result and cancel: not retryable
        (the same oversized answer would come again; an oversized result is never accepted as completed)."""
        cap = f"the {describe_bytes(self.max_json_bytes)} cap on JSON answers (max_json_bytes / {MAX_JSON_BYTES_ENV})"
        text = (f"the {phase} answer declares Content-Length {declared}, over {cap}; it was not read"
                if declared is not None else f"the {phase} answer is larger than {cap}; reading stopped there")
        if phase == "submit":
            return AmbiguousSubmitError(f"{text}; fal may have accepted the submit", status_code=status_code)
        if phase == "status":
            return RetrySignal(TransientError(text, status_code=status_code, request_id=request_id))
        if phase == "result":
            text += "; the result is not accepted as completed"
        return RequestFailedError(text, status_code=status_code, request_id=request_id, retryable=False)

    # -- parsing -------------------------------------------------------------------------------------
    def parse_submit(self, response: httpx.Response) -> QueueHandle:
        """The handle of an accepted submit. Its URLs are built on the configured origin (they are what the
        ledger stores); the answer's own URLs are only compared, and a foreign one is logged."""
        body = self._ok_json(response, "submit")
        request_id = body.get("request_id")
        if not valid_request_id(request_id):
            shown = "none" if request_id is None else f"{str(request_id)[:80]!r}"
            raise AmbiguousSubmitError(f"submit answered without a valid request_id ({shown}: expected 1-"
                                       f"{MAX_REQUEST_ID_LENGTH} of A-Z a-z 0-9 _ . : -); fal may have accepted "
                                       "it", status_code=response.status_code)
        handle = self.handle_for(request_id)
        for suffix, key in (("/status", "status_url"), ("", "response_url"), ("/cancel", "cancel_url")):
            given = body.get(key)
            self._url(request_id, suffix, given if isinstance(given, str) else None)
        position = body.get("queue_position")
        gateway_id = body.get("gateway_request_id")
        return QueueHandle(request_id, handle.status_url, handle.response_url, handle.cancel_url,
                           queue_position=position if isinstance(position, int) else None,
                           gateway_request_id=gateway_id if valid_request_id(gateway_id) else None)

    def parse_status(self, response: httpx.Response, request_id: str | None = None) -> QueueStatus:
        return self.status_from_body(self._ok_json(response, "status", request_id), request_id)

    def status_from_body(self, body: Any, request_id: str | None = None) -> QueueStatus:
        """A status answer's JSON (from a poll or a status-stream event)."""
        status = body.get("status") if isinstance(body, dict) else None
        if status not in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED"):
            raise RetrySignal(TransientError(f"status answered with unknown status {status!r}",
                                             request_id=request_id))
        return QueueStatus(status=status, queue_position=body.get("queue_position"), logs=body.get("logs") or [],
                           metrics=body.get("metrics") or {}, error=body.get("error"),
                           error_type=body.get("error_type"))

    def parse_result(self, response: httpx.Response, request_id: str | None = None) -> ImageToVideoOutput:
        body = self._ok_json(response, "result", request_id)
        try:
            return ImageToVideoOutput.model_validate(body)
        except ValidationError as exc:
            raise RequestFailedError("result does not match the endpoint's output schema: "
                                     + "; ".join(validation_messages(exc)), request_id=request_id,
                                     status_code=response.status_code, retryable=False) from None

    def parse_cancel(self, response: httpx.Response, request_id: str | None = None) -> str:
        if 300 <= response.status_code < 400:
            raise self.error_for(response, "cancel", request_id)
        try:
            body = response.json()
        except ValueError:
            body = {}
        status = body.get("status") if isinstance(body, dict) else None
        if status in ("OK", "CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"):
            return status
        if response.status_code == 404:
            return "NOT_FOUND"
        self._ok_json(response, "cancel", request_id)
        return str(status or "OK")

    def _ok_json(self, response: httpx.Response, phase: Phase, request_id: str | None = None) -> dict[str, Any]:
        if response.status_code >= 300:
            raise self.error_for(response, phase, request_id)
        try:
            body = response.json()
        except (ValueError, json.JSONDecodeError):
            err = TransientError(f"{phase} answered with malformed JSON", status_code=response.status_code,
                                 request_id=request_id)
            if phase == "submit":  # accepted or not, we cannot tell
                raise AmbiguousSubmitError("submit answered with malformed JSON", status_code=response.status_code)
            raise RetrySignal(err)
        if not isinstance(body, dict):
            raise RetrySignal(TransientError(f"{phase} answered with non-object JSON", request_id=request_id))
        return body

    def error_for(self, response: httpx.Response, phase: Phase, request_id: str | None = None) -> Exception:
        """Map an HTTP error answer to a typed error, or to a RetrySignal when trying again may help."""
        code = response.status_code
        detail, error_type = _detail(response)
        error_type = response.headers.get("x-fal-error-type") or error_type
        hint = response.headers.get("x-fal-retryable")
        retryable_hint = None if hint is None else hint.strip().lower() in ("1", "true", "yes")
        text = _describe(detail)
        kw = {"status_code": code, "request_id": request_id, "detail": detail}
        if 300 <= code < 400:
            return self._redirect_error(response, phase, request_id)
        if code in (401, 403):
            return AuthenticationError(f"fal refused the key on {phase}: {text or 'unauthorized'}; "
                                       "check FAL_KEY", **kw)
        if code == 422 and phase == "submit":
            errors = detail if isinstance(detail, list) else []
            return InputValidationError(f"fal rejected the input: {text}", errors=errors, **kw)
        if code == 504 and response.headers.get("x-fal-request-timeout-type") == "user":
            return RequestFailedError("the request did not start before X-Fal-Request-Timeout", retryable=False,
                                      **kw)
        if phase == "result" and (code == 422 or retryable_hint is not None):
            # the model's own failure, reported through the result
            fal_type = error_type or _first_type(detail)
            label = f" ({fal_type})" if fal_type else ""
            return RequestFailedError(f"request failed{label}: {text or code}", retryable=bool(retryable_hint),
                                      fal_error_type=fal_type, **kw)
        if code in (404, 410) and phase != "cancel":
            gone = ResultGoneError(f"{phase}: request unknown or its result expired", **kw)
            return RetrySignal(gone) if (phase == "result" and code == 404) else gone
        if code == 429:
            err = RateLimitedError("rate limited by fal", retry_after=_retry_after(response), **kw)
            return RetrySignal(err, err.retry_after)
        if code in RETRYABLE_STATUS:
            err = TransientError(f"fal answered {code} on {phase}" + (f": {text}" if text else ""), **kw)
            if phase == "submit" and code not in SUBMIT_RETRYABLE_STATUS:
                return AmbiguousSubmitError(f"submit answered {code}; fal may have accepted it", **kw)
            return RetrySignal(err, _retry_after(response))
        if phase == "submit" and code >= 500:
            return AmbiguousSubmitError(f"submit answered {code}; fal may have accepted it", **kw)
        if code >= 500:
            return RetrySignal(TransientError(f"fal answered {code} on {phase}", **kw))
        return RequestFailedError(f"{phase} failed: {text or code}", retryable=bool(retryable_hint), **kw)

    def _redirect_error(self, response: httpx.Response, phase: Phase, request_id: str | None) -> Exception:
        code = response.status_code
        target = origin(response.headers.get("location", ""))
        where = f"a redirect to {target[0]}://{target[1]}:{target[2]}"[:160] if target else "a redirect"
        text = (f"the queue answered HTTP {code} ({where}) on {phase}; redirects are never followed, so the key "
                f"only goes to {self.base_url}: set SORA_FAL_QUEUE_URL to the queue's own address")
        if phase == "submit":
            return AmbiguousSubmitError(f"{text}; fal may have accepted the submit", status_code=code)
        # not retried (the same redirect would come back) but transient: the request stays resumable
        return TransientError(text, status_code=code, request_id=request_id)

    def network_error(self, exc: httpx.HTTPError, phase: Phase, request_id: str | None = None) -> Exception:
        """A network failure: retryable, except a submit that may already have reached fal."""
        name = type(exc).__name__
        if phase == "submit" and not isinstance(exc, NOT_SENT_ERRORS):
            return AmbiguousSubmitError(f"submit sent but no answer ({name}); fal may have accepted it")
        return RetrySignal(TransientError(f"network error on {phase} ({name})", request_id=request_id))


def _detail(response: httpx.Response) -> tuple[Any, str | None]:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200], None
    if isinstance(body, dict):
        return body.get("detail", body.get("error")), body.get("error_type")
    return body, None


def _describe(detail: Any) -> str:
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{loc or 'input'}: {item.get('msg', item.get('type', 'invalid'))}")
        return "; ".join(parts)
    return "" if detail is None else str(detail)[:300]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _first_type(detail: Any) -> str | None:
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        return detail[0].get("type")
    return None
