"""fal's queue protocol without I/O: request building, answer parsing, error mapping, retry and poll policy.

The sync and async clients in `client.py` only send what this module builds and hand back what they receive."""

from __future__ import annotations

import json
import random
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

Phase = Literal["submit", "status", "result", "cancel"]
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# a submit may be repeated only when fal provably did not accept it
SUBMIT_RETRYABLE_STATUS = frozenset({429, 503})
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


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


class QueueProtocol:
    """Builds requests for one endpoint and maps answers to results or typed errors."""

    def __init__(self, *, base_url: str, endpoint_id: str, key: str | SecretStr | None,
                 priority: str | None = None, start_timeout: float | None = None, no_retry: bool = False,
                 webhook_url: str | None = None) -> None:
        self.base_url = check_base_url(base_url)
        self.endpoint_id = endpoint_id
        self.owner, self.alias, _ = split_endpoint(endpoint_id)
        self._key = key if isinstance(key, SecretStr) or key is None else SecretStr(key)
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
        return f"{self.base_url}/{self.owner}/{self.alias}/requests/{request_id}{suffix}"

    def status(self, handle: QueueHandle | str, *, logs: bool = True) -> OutgoingRequest:
        url = handle.status_url if isinstance(handle, QueueHandle) else self._request_url(handle, "/status")
        return OutgoingRequest("GET", url, "status", params={"logs": "1"} if logs else {})

    def status_stream(self, handle: QueueHandle | str, *, logs: bool = True) -> OutgoingRequest:
        url = handle.status_url if isinstance(handle, QueueHandle) else self._request_url(handle, "/status")
        return OutgoingRequest("GET", f"{url}/stream", "status", params={"logs": "1"} if logs else {})

    def result(self, handle: QueueHandle | str) -> OutgoingRequest:
        url = handle.response_url if isinstance(handle, QueueHandle) else self._request_url(handle)
        return OutgoingRequest("GET", url, "result")

    def cancel(self, handle: QueueHandle | str) -> OutgoingRequest:
        url = handle.cancel_url if isinstance(handle, QueueHandle) else self._request_url(handle, "/cancel")
        return OutgoingRequest("PUT", url, "cancel")

    def handle_for(self, request_id: str) -> QueueHandle:
        """Rebuild a handle from a stored request id (prefer the stored URLs when you have them)."""
        return QueueHandle(request_id, self._request_url(request_id, "/status"), self._request_url(request_id),
                           self._request_url(request_id, "/cancel"))

    # -- parsing -------------------------------------------------------------------------------------
    def parse_submit(self, response: httpx.Response) -> QueueHandle:
        body = self._ok_json(response, "submit")
        try:
            return QueueHandle(
                request_id=str(body["request_id"]), status_url=body.get("status_url")
                or self._request_url(body["request_id"], "/status"),
                response_url=body.get("response_url") or self._request_url(body["request_id"]),
                cancel_url=body.get("cancel_url") or self._request_url(body["request_id"], "/cancel"),
                queue_position=body.get("queue_position"), gateway_request_id=body.get("gateway_request_id"))
        except (KeyError, TypeError):
            raise AmbiguousSubmitError("submit answered without a request_id", status_code=response.status_code)

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
        if response.status_code >= 400:
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
