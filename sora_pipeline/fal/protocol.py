"""fal's queue protocol without I/O: request building and answer parsing for one endpoint (`QueueProtocol`).

The sync and async clients in `client.py` only send what this module builds and hand back what they receive.

The key goes only to the configured queue origin (scheme, host, port): every status, status-stream, result and
cancel URL is built here from the configured base URL, the endpoint's owner/alias and the request id; the URLs a
submit answer (or a ledger row) carries are never used, and ones that point elsewhere are logged once per request.
Request ids are checked (`urls.valid_request_id`). Bytes coming in are capped (`limits`: every JSON answer at
`max_json_bytes`, every status-stream line at `max_stream_event_bytes`); error answers become typed errors in
`error_mapping`; retry and poll policy are in `policies`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr, ValidationError

from sora_pipeline.fal import error_mapping, limits
from sora_pipeline.fal.platform import billable_units
from sora_pipeline.fal.error_mapping import Phase, RetrySignal
from sora_pipeline.fal.errors import AmbiguousSubmitError, InputValidationError, RequestFailedError, TransientError
from sora_pipeline.fal.limits import (
    ACCEPT_ENCODING,
    BoundedDecoder,
    DEFAULT_MAX_JSON_BYTES,
    DEFAULT_MAX_STREAM_EVENT_BYTES,
    MAX_JSON_BYTES_ENV,
    MAX_STREAM_EVENT_BYTES_ENV,
    BodyReader,
    LineSplitter,
    byte_cap,
)
from sora_pipeline.endpoints import EndpointProfile, UnknownEndpoint, get_profile
from sora_pipeline.fal.models import ImageToVideoInput, ImageToVideoOutput, validation_messages
from sora_pipeline.fal.urls import (MAX_REQUEST_ID_LENGTH, check_base_url, origin, origin_url, split_endpoint,
                                    valid_request_id)
from sora_pipeline.redact import register_secret

__all__ = ["OutgoingRequest", "QueueHandle", "QueueProtocol", "QueueStatus"]

log = logging.getLogger("sora_pipeline.fal")
_WARNED_LIMIT = 10_000  # request ids remembered for the once-per-request warning about foreign URLs

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


class QueueProtocol:
    """Builds requests for one endpoint and maps answers to results or typed errors.

    `max_json_bytes` caps every JSON answer (setting `SORA_MAX_JSON_BYTES`, default 8 MiB) and
    `max_stream_event_bytes` every status-stream line (setting `SORA_MAX_STREAM_EVENT_BYTES`, default 1 MiB);
    None: the default."""

    def __init__(self, *, base_url: str, endpoint_id: str, key: str | SecretStr | None,
                 priority: str | None = None, start_timeout: float | None = None, no_retry: bool = False,
                 webhook_url: str | None = None, max_json_bytes: int | None = None,
                 max_stream_event_bytes: int | None = None, profile: EndpointProfile | None = None) -> None:
        self.base_url = check_base_url(base_url)
        self.profile = profile if profile is not None else _known_profile(endpoint_id)
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
        headers = {"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING, "User-Agent": "sora-pipeline/0.1"}
        if self._key is not None:
            headers["Authorization"] = f"Key {self._key.get_secret_value()}"
        return headers

    # -- building ------------------------------------------------------------------------------------
    def payload_for(self, arguments: ImageToVideoInput | dict[str, Any]) -> dict[str, Any]:
        """The submit body, checked against the endpoint's profile (or, for an endpoint without one, the Sora 2 Pro
        schema) before anything is sent; InputValidationError says which field and why."""
        if isinstance(arguments, ImageToVideoInput):
            body = arguments.to_payload()
        elif self.profile is None or not isinstance(arguments, dict):
            try:
                body = ImageToVideoInput.model_validate(arguments).to_payload()
            except ValidationError as exc:
                lines = validation_messages(exc)
                errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                          for e in exc.errors(include_input=False, include_url=False)]
                raise InputValidationError("invalid input: " + "; ".join(lines), errors=errors) from None
        else:
            body = dict(arguments)
        problems = self.profile.payload_problems(body) if self.profile is not None else []
        if problems:
            raise InputValidationError(
                f"invalid input for {self.endpoint_id}: " + "; ".join(f"{f}: {m}" for f, m, _ in problems),
                errors=[{"loc": [f], "msg": m, "type": t} for f, m, t in problems])
        return body

    def submit(self, arguments: ImageToVideoInput | dict[str, Any]) -> OutgoingRequest:
        payload = self.payload_for(arguments)
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
        shown = origin_url(given) or "a malformed URL"
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
        return BodyReader(response, phase, self.max_json_bytes, request_id)

    def line_splitter(self, response: httpx.Response | None = None) -> LineSplitter:
        """A capped line splitter for the status stream (decoding `response`'s raw chunks, boundedly, when given:
        an encoding it cannot read raises `limits.UnreadableEncoding`)."""
        return LineSplitter(self.max_stream_event_bytes, BoundedDecoder(response) if response is not None else None)

    def too_large(self, phase: Phase, request_id: str | None, status_code: int, *,
                  declared: int | None = None) -> Exception:
        """The error for a JSON answer over `max_json_bytes` (`limits.too_large`)."""
        return limits.too_large(phase, request_id, status_code, self.max_json_bytes, declared=declared)

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
            output = ImageToVideoOutput.model_validate(body)
        except ValidationError as exc:
            raise RequestFailedError("result does not match the endpoint's output schema: "
                                     + "; ".join(validation_messages(exc)), request_id=request_id,
                                     status_code=response.status_code, retryable=False) from None
        required = self.profile.output.required if self.profile is not None else ["video", "video_id"]
        missing = [name for name in required if body.get(name) is None]
        if missing:
            raise RequestFailedError("result does not match the endpoint's output schema: "
                                     + "; ".join(f"{m}: Field required" for m in missing), request_id=request_id,
                                     status_code=response.status_code, retryable=False)
        output._billable_units = billable_units(response.headers)
        return output

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
        return error_mapping.error_for(response, phase, request_id, base_url=self.base_url)

    def network_error(self, exc: httpx.HTTPError, phase: Phase, request_id: str | None = None) -> Exception:
        """A network failure: retryable, except a submit that may already have reached fal."""
        return error_mapping.network_error(exc, phase, request_id)


def _known_profile(endpoint_id: str) -> EndpointProfile | None:
    """The endpoint's profile, or None for an endpoint without one (the client then checks the Sora 2 Pro schema)."""
    try:
        return get_profile(endpoint_id)
    except UnknownEndpoint:
        return None
