"""Typed errors a caller of the fal queue can act on. Messages never contain keys or request bodies: whatever a
server sent back (its `detail`, an echoed Authorization header) passes through `sora_pipeline.redact` here."""

from __future__ import annotations

from typing import Any

from sora_pipeline.redact import redact, redact_obj


class FalError(Exception):
    """Base class. `retryable` says whether trying the same call again can help."""

    retryable: bool = False
    error_type: str = "fal_error"

    def __init__(self, message: str, *, status_code: int | None = None, request_id: str | None = None,
                 detail: Any = None, retryable: bool | None = None, fal_error_type: str | None = None) -> None:
        message = redact(message)
        super().__init__(message)
        self.fal_error_type = redact(fal_error_type)  # fal's own error type, e.g. content_policy_violation
        self.message = message
        self.status_code = status_code
        self.request_id = redact(request_id)
        self.detail = redact_obj(detail)
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        parts = [self.message]
        if self.status_code is not None:
            parts.append(f"(HTTP {self.status_code})")
        if self.request_id:
            parts.append(f"[request {self.request_id}]")
        return " ".join(parts)


class InputValidationError(FalError):
    """The input was rejected: locally before any HTTP call, or by the server's 422 `detail` list."""

    error_type = "input_validation"

    def __init__(self, message: str, *, errors: list[dict[str, Any]] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.errors = redact_obj(errors or [])

    @property
    def fields(self) -> list[str]:
        return [".".join(str(p) for p in e.get("loc", ())) for e in self.errors]


class AuthenticationError(FalError):
    """401/403: the key is missing, wrong, or lacks access. Set FAL_KEY."""

    error_type = "authentication"


class RateLimitedError(FalError):
    """429 after the retry budget was spent. `retry_after` is the server's hint in seconds."""

    error_type = "rate_limited"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class TransientError(FalError):
    """5xx or a network error after the retry budget was spent."""

    error_type = "transient"
    retryable = True


class AmbiguousSubmitError(FalError):
    """The submit was sent but no answer came back: fal may or may not have accepted (and may bill) it.

    Never retried automatically; the caller decides (the ledger records the request as `unknown`)."""

    error_type = "ambiguous_submit"


class RequestFailedError(FalError):
    """The queue reported that the request itself failed (model error, content policy, infrastructure)."""

    error_type = "request_failed"


class ResultGoneError(FalError):
    """404/410 on a result or status: the request is unknown or its stored result has expired."""

    error_type = "result_gone"


class WaitTimeoutError(FalError):
    """The request did not complete within the caller's total timeout (it may still be running)."""

    error_type = "wait_timeout"
    retryable = True
