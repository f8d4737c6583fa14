"""Which error an HTTP error answer or a network failure becomes: a typed `FalError` (final), or a
`RetrySignal` around one when trying again may help. A submit is repeated only when fal provably did not accept
it; otherwise it is an `AmbiguousSubmitError`. Redirects are never followed. No I/O."""

from __future__ import annotations

from typing import Any, Literal

import httpx

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
from sora_pipeline.fal.urls import origin_url

Phase = Literal["submit", "status", "result", "cancel"]
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# a submit may be repeated only when fal provably did not accept it
SUBMIT_RETRYABLE_STATUS = frozenset({429, 503})
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class RetrySignal(Exception):
    """Raised inside a retry loop for an answer or network error that may be retried."""

    def __init__(self, error: FalError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def error_for(response: httpx.Response, phase: Phase, request_id: str | None = None, *,
              base_url: str) -> Exception:
    """Map an HTTP error answer to a typed error, or to a RetrySignal when trying again may help."""
    code = response.status_code
    detail, error_type = _detail(response)
    error_type = response.headers.get("x-fal-error-type") or error_type
    hint = response.headers.get("x-fal-retryable")
    retryable_hint = None if hint is None else hint.strip().lower() in ("1", "true", "yes")
    text = _describe(detail)
    kw = {"status_code": code, "request_id": request_id, "detail": detail}
    if 300 <= code < 400:
        return redirect_error(response, phase, request_id, base_url=base_url)
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


def redirect_error(response: httpx.Response, phase: Phase, request_id: str | None, *, base_url: str) -> Exception:
    """A 3xx answer: never followed, so the key only goes to `base_url`."""
    code = response.status_code
    target = origin_url(response.headers.get("location", ""))
    where = f"a redirect to {target}"[:160] if target else "a redirect"
    text = (f"the queue answered HTTP {code} ({where}) on {phase}; redirects are never followed, so the key "
            f"only goes to {base_url}: set SORA_FAL_QUEUE_URL to the queue's own address")
    if phase == "submit":
        return AmbiguousSubmitError(f"{text}; fal may have accepted the submit", status_code=code)
    # not retried (the same redirect would come back) but transient: the request stays resumable
    return TransientError(text, status_code=code, request_id=request_id)


def network_error(exc: httpx.HTTPError, phase: Phase, request_id: str | None = None) -> Exception:
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
