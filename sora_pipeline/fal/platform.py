"""A sync client for fal's platform API (`https://api.fal.ai/v1`): billing events (admin key), request history,
the model registry and prices. Pure httpx; no Dagster.

Rules: the key (`Authorization: Key …`) goes only over https or to a loopback host (else the client refuses to be
made, before any request); redirects are never followed; every answer is read up to `max_json_bytes` (default
8 MiB, the pipeline passes its `SORA_MAX_JSON_BYTES`; `limits.read_capped`); network errors, 5xx and 429 are retried
(`RetryPolicy`, tenacity), then `PlatformUnavailable`; 401/403 are `PlatformAuthError`; a 2xx answer not in the
documented shape is `PlatformAnswerError`; anything else is `PlatformError`. Messages are one line and redacted
(the key is registered as a secret). Each listing follows `next_cursor`/`has_more` through every page (the cursor
is opaque) and `calls` counts requests per path. Fields may be missing or null in older answers: the documented
ones are always present in what is returned (None when fal sent none), numbers are floats or None."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any

import httpx
from pydantic import SecretStr
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay

from sora_pipeline.fal.limits import MAX_JSON_BYTES_ENV, AnswerRefused, byte_cap, read_capped
from sora_pipeline.fal.policies import RetryPolicy
from sora_pipeline.fal.urls import check_service_url, origin_url
from sora_pipeline.redact import redact, register_secret

DEFAULT_API_URL = "https://api.fal.ai/v1"
API_URL_ENV = "SORA_FAL_API_URL"
DEFAULT_MAX_JSON_BYTES = 8 << 20
MAX_FILTER_VALUES = 50  # values of one multi-value filter per call (fal: 1-50)
MAX_BILLING_PAGE = 10_000
MAX_REQUESTS_PAGE = 100
MAX_ANSWER_SECONDS = 120.0  # per answer, however slowly its bytes come
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
REQUEST_STATUSES = ("success", "error", "user_error")
EVENT_NUMBERS = ("output_units", "unit_price", "percent_discount", "cost_subtotal", "cost_discount", "cost_total",
                 "cost_estimate_nano_usd")
PATHS = {"billing_events": "/models/billing-events", "requests": "/models/requests/by-endpoint",
         "models": "/models", "pricing": "/models/pricing"}


class PlatformError(Exception):
    """A platform API call failed (one redacted line). `status_code` and fal's `error_type` when it answered."""

    def __init__(self, message: str, *, status_code: int | None = None, error_type: str | None = None) -> None:
        message = " ".join(str(redact(message)).split())
        super().__init__(message)
        self.status_code, self.error_type = status_code, redact(error_type)


class PlatformAnswerError(PlatformError):
    """A 2xx answer that is not what the API documents: not a JSON object, no list of items, a broken cursor."""


class PlatformAuthError(PlatformError):
    """401/403: no key, a wrong key, or a key without access (an ordinary key asking for billing events)."""


class PlatformUnavailable(PlatformError):
    """The API did not answer usefully after the retries: network errors, 5xx, 429."""


class _Retry(Exception):
    def __init__(self, error: PlatformError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error, self.retry_after = error, retry_after


def billable_units(headers: Mapping[str, str] | httpx.Headers) -> float | None:
    """`x-fal-billable-units` of a (result) answer as a float ≥ 0, or None when absent or not a number."""
    raw = httpx.Headers(headers).get("x-fal-billable-units")
    try:
        units = float(raw) if raw is not None else None
    except ValueError:
        return None
    return units if units is not None and math.isfinite(units) and units >= 0 else None


def check_api_url(base_url: str, *, with_key: bool) -> str:
    """The base URL without a trailing slash: http(s), no credentials/query/fragment; with a key, https or a
    loopback host only. Raises `PlatformError` (nothing was sent)."""
    try:
        url = check_service_url(base_url, what="platform API URL", example=DEFAULT_API_URL,
                                fix=f"set {API_URL_ENV}", with_key=with_key)
    except ValueError as exc:
        raise PlatformError(str(exc)) from None
    return str(url).rstrip("/")


def _stamp(value: datetime | date | str | None) -> str | None:
    """A `start`/`end` value as fal takes it: datetimes in UTC (naive ones are taken as UTC), dates as days."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.isoformat().replace("+00:00", "Z")
    return value.isoformat()


def _chunks(values: Iterable[str] | str | None) -> list[list[str] | None]:
    """Distinct values in chunks of `MAX_FILTER_VALUES` ([None]: no filter)."""
    if values is None:
        return [None]
    items = list(dict.fromkeys([values] if isinstance(values, str) else [str(v) for v in values]))
    if not items:
        raise ValueError("an empty filter list matches nothing; pass None for no filter")
    return [items[i:i + MAX_FILTER_VALUES] for i in range(0, len(items), MAX_FILTER_VALUES)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        n = float(value)
    except (TypeError, ValueError):
        return None
    return n if math.isfinite(n) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _event(raw: dict[str, Any]) -> dict[str, Any]:
    out = dict(raw)
    for name in ("request_id", "endpoint_id", "timestamp"):
        out[name] = _text(raw.get(name))
    for name in EVENT_NUMBERS:
        out[name] = _number(raw.get(name))
    return out


def _item(raw: dict[str, Any]) -> dict[str, Any]:
    out = dict(raw)
    for name in ("request_id", "endpoint_id", "started_at", "sent_at", "ended_at"):
        out[name] = _text(raw.get(name))
    code = raw.get("status_code")
    out["status_code"] = code if isinstance(code, int) and not isinstance(code, bool) else None
    out["duration"] = _number(raw.get("duration"))
    out.setdefault("json_input", None)
    out.setdefault("json_output", None)
    return out


def _model(raw: dict[str, Any]) -> dict[str, Any]:
    out = dict(raw)
    out["endpoint_id"] = _text(raw.get("endpoint_id"))
    out["metadata"] = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else None
    return out


def _price(raw: dict[str, Any]) -> dict[str, Any]:
    return {**raw, "endpoint_id": _text(raw.get("endpoint_id")), "unit_price": _number(raw.get("unit_price")),
            "unit": _text(raw.get("unit")), "currency": _text(raw.get("currency"))}


class PlatformClient:
    """`with PlatformClient(url, key) as c: list(c.billing_events(start, end))`. `calls`: requests per path."""

    def __init__(self, base_url: str = DEFAULT_API_URL, key: str | SecretStr | None = None, *,
                 timeout: float = 30.0, max_json_bytes: int | None = None, retry: RetryPolicy | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        if isinstance(key, SecretStr):
            key = key.get_secret_value()
        key = (key or "").strip() or None
        register_secret(key)
        self.base_url = check_api_url(base_url, with_key=key is not None)
        self._key = key
        self.max_json_bytes = byte_cap(max_json_bytes, MAX_JSON_BYTES_ENV, DEFAULT_MAX_JSON_BYTES)
        self.retry = retry or RetryPolicy(max_attempts=4, initial_delay=0.5, max_delay=8.0, total_timeout=60.0)
        self.calls: dict[str, int] = {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)), transport=transport,
                                  follow_redirects=False, trust_env=False)

    def __repr__(self) -> str:
        return f"PlatformClient({self.base_url!r}, key={'set' if self._key else 'unset'})"

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- the operations ------------------------------------------------------------------------------------
    def billing_events(self, start: datetime | date | str | None, end: datetime | date | str | None,
                       endpoint_ids: Iterable[str] | str | None = None,
                       request_ids: Iterable[str] | str | None = None,
                       limit: int = MAX_BILLING_PAGE) -> Iterator[dict[str, Any]]:
        """Every billing event in [start, end) (admin key), all pages of every filter chunk."""
        base = {"start": _stamp(start), "end": _stamp(end), "limit": max(1, min(int(limit), MAX_BILLING_PAGE))}
        for endpoints in _chunks(endpoint_ids):
            for requests in _chunks(request_ids):
                params = {**base, "endpoint_id": endpoints, "request_id": requests}
                for raw in self._pages("billing_events", params, "billing_events", need_key=True):
                    yield _event(raw)

    def requests_by_endpoint(self, endpoint_id: str, start: datetime | date | str | None,
                             end: datetime | date | str | None, expand_payloads: bool = True,
                             status: str | None = None, limit: int = MAX_REQUESTS_PAGE,
                             request_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Every request of one endpoint that ended in [start, end) (with its input and output when
        `expand_payloads`), all pages; `status` one of success / error / user_error."""
        if status is not None and status not in REQUEST_STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(REQUEST_STATUSES)}")
        params = {"endpoint_id": endpoint_id, "start": _stamp(start), "end": _stamp(end), "status": status,
                  "request_id": request_id, "expand": "payloads" if expand_payloads else None,
                  "limit": max(1, min(int(limit), MAX_REQUESTS_PAGE))}
        for raw in self._pages("requests", params, "items", need_key=True):
            yield _item(raw)

    def models(self, endpoint_ids: Iterable[str] | str, expand_openapi: bool = False) -> list[dict[str, Any]]:
        """The registry's entries of these endpoints (absent: fal no longer lists it). The key is optional."""
        found = []
        for chunk in _chunks(endpoint_ids):
            params = {"endpoint_id": chunk, "expand": "openapi-3.0" if expand_openapi else None}
            found += [_model(m) for m in self._pages("models", params, "models", need_key=False)]
        return found

    def pricing(self, endpoint_ids: Iterable[str] | str) -> list[dict[str, Any]]:
        """fal's unit price of each endpoint (`unit_price`, `unit`, `currency`)."""
        found = []
        for chunk in _chunks(endpoint_ids):
            found += [_price(p) for p in self._pages("pricing", {"endpoint_id": chunk}, "prices", need_key=True)]
        return found

    # ---- plumbing --------------------------------------------------------------------------------------------
    def _pages(self, op: str, params: dict[str, Any], field: str, *, need_key: bool) -> Iterator[dict[str, Any]]:
        path = PATHS[op]
        if need_key and not self._key:
            hint = "FAL_ADMIN_KEY (an admin key)" if op == "billing_events" else "FAL_KEY"
            raise PlatformAuthError(f"fal platform {path}: no key; set {hint}")
        query = [(k, v) for k, value in params.items() if value is not None
                 for v in (value if isinstance(value, list) else [value])]
        cursor, seen = None, set()
        while True:
            page = self._get(path, query + ([("cursor", cursor)] if cursor else []))
            items = page.get(field)
            if not isinstance(items, list):
                raise PlatformAnswerError(f"fal platform {path}: the answer has no {field!r} list")
            yield from (i for i in items if isinstance(i, dict))
            more, cursor = page.get("has_more"), page.get("next_cursor")
            if not isinstance(cursor, str) or not cursor or more is False:
                if more is True:
                    raise PlatformAnswerError(f"fal platform {path}: has_more without a next_cursor; the listing is "
                                        "incomplete")
                return
            if cursor in seen:
                raise PlatformAnswerError(f"fal platform {path}: next_cursor repeats an earlier page; stopped")
            seen.add(cursor)

    def _get(self, path: str, query: list[tuple[str, Any]]) -> dict[str, Any]:
        policy = self.retry

        def wait(state) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return policy.backoff(state.attempt_number, getattr(exc, "retry_after", None))

        try:
            for attempt in Retrying(stop=stop_after_attempt(policy.max_attempts) | stop_after_delay(
                    policy.total_timeout), wait=wait, retry=retry_if_exception_type(_Retry), reraise=True):
                with attempt:
                    return self._get_once(path, query)
        except _Retry as exc:
            raise exc.error from None
        raise AssertionError("unreachable")

    def _get_once(self, path: str, query: list[tuple[str, Any]]) -> dict[str, Any]:
        self.calls[path] = self.calls.get(path, 0) + 1
        where = f"fal platform {path}"
        headers = {"Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Key {self._key}"
        try:
            answer = read_capped(self._http, "GET", self.base_url + path, params=query, headers=headers,
                                 max_bytes=self.max_json_bytes, max_seconds=MAX_ANSWER_SECONDS)
        except AnswerRefused as exc:
            raise PlatformError(f"{where}: {exc}; ask for smaller pages (limit) or raise max_json_bytes / "
                                f"{MAX_JSON_BYTES_ENV}") from None
        except httpx.HTTPError as exc:
            raise _Retry(PlatformUnavailable(f"{where}: network error ({type(exc).__name__}); {self.base_url} "
                                             "did not answer")) from None
        code = answer.status_code
        if 200 <= code < 300:
            try:
                body = answer.json()
            except ValueError:
                raise PlatformAnswerError(f"{where}: HTTP {code} but the answer is not JSON",
                                          status_code=code) from None
            if not isinstance(body, dict):
                raise PlatformAnswerError(f"{where}: HTTP {code} but the answer is not a JSON object",
                                          status_code=code)
            return body
        raise self._error(answer, path)

    def _error(self, answer: Any, path: str) -> Exception:
        code, where = answer.status_code, f"fal platform {path}"
        if 300 <= code < 400:
            target = answer.headers.get("location", "")
            try:
                to = origin_url(str(httpx.URL(self.base_url).join(target)))
            except Exception:
                to = None
            to_text = f" to {to}" if to else ""
            return PlatformError(f"{where}: HTTP {code}, a redirect{to_text}; redirects are not followed, so the "
                                 f"key only goes to {self.base_url} (set {API_URL_ENV} to the API's own address)",
                                 status_code=code)
        error_type, message = _fal_error(answer)
        said = f": {error_type + ': ' if error_type else ''}{message}" if message or error_type else ""
        if code in (401, 403):
            hint = ("billing events need an admin key (FAL_ADMIN_KEY)" if path == PATHS["billing_events"]
                    else "check FAL_KEY")
            return PlatformAuthError(f"{where}: HTTP {code}{said}; {hint}", status_code=code,
                                     error_type=error_type)
        if code in RETRY_STATUS:
            retry_after = _number(answer.headers.get("retry-after"))
            return _Retry(PlatformUnavailable(f"{where}: HTTP {code}{said} (after retries)", status_code=code,
                                              error_type=error_type), retry_after)
        return PlatformError(f"{where}: HTTP {code}{said}", status_code=code, error_type=error_type)


def _fal_error(answer: Any) -> tuple[str | None, str]:
    """(fal's error type, its message) of an error answer `{"error": {"type", "message"}}` (else its text)."""
    try:
        body = answer.json()
    except ValueError:
        return None, " ".join(answer.text.split())[:200]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return _text(err.get("type")), str(err.get("message") or "")[:300]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return None, " ".join(str(detail).split())[:300]
