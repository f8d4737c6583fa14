"""Seeded fault injection for the simulator (`random.Random` derived from the config seed).

Per-call kinds (answered instead of / around the normal response): `rate_limit` (429 + Retry-After),
`server_error` (500 + X-Fal-Error-Type), `unavailable` (503), `drop` (connection closed, no response), `slow`
(sleep `slow_seconds`, then answer normally), `malformed` (200 with a non-JSON body).
Per-job kinds (decided once at submit): `result_404_once` (the first result fetch after completion answers 404)
and `request_error` (the job completes but its result is a 422 content-policy error or a 500
runner_disconnected error; which one is drawn from the seed).

On submit, `rate_limit`/`server_error`/`unavailable` are answered before the request is recorded; `drop`, `slow`
and `malformed` happen after it was recorded (queued and will run — the ambiguous case).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from starlette.responses import JSONResponse, Response

from sora_pipeline.simulator.config import SimulatorConfig

CALL_KINDS: tuple[str, ...] = ("rate_limit", "server_error", "unavailable", "drop", "slow", "malformed")
JOB_KINDS: tuple[str, ...] = ("result_404_once", "request_error")
#: on submit these are answered before the request is recorded (nothing queued)
PRE_RECORD_KINDS = frozenset({"rate_limit", "server_error", "unavailable"})


@dataclass(frozen=True)
class JobFaults:
    """Faults attached to one job at submit time."""

    result_404_once: bool = False
    request_error: str | None = None  # None | "content_policy_violation" | "runner_disconnected"


class FaultInjector:
    """Draws faults from a seeded RNG; the draw order is fixed so runs with the same calls are reproducible."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self._rng = random.Random(f"sora-sim-faults:{self.config.seed}")

    def pick(self, call: str) -> str | None:
        """The per-call fault to serve for one `call` (submit/status/result/cancel/file), or None."""
        if call not in self.config.fault_calls:
            return None
        for kind in CALL_KINDS:
            p = self.config.faults.get(kind, 0.0)
            if p > 0 and self._rng.random() < p:
                return kind
        return None

    def for_job(self) -> JobFaults:
        """Per-job faults drawn at submit (only when configured, so other draws are unaffected)."""
        faults = self.config.faults
        r404 = False
        err = None
        p = faults.get("result_404_once", 0.0)
        if p > 0 and self._rng.random() < p:
            r404 = True
        p = faults.get("request_error", 0.0)
        if p > 0 and self._rng.random() < p:
            err = "content_policy_violation" if self._rng.random() < 0.5 else "runner_disconnected"
        return JobFaults(result_404_once=r404, request_error=err)


def _retry_after(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def fault_response(kind: str, config: SimulatorConfig) -> Response:
    """The HTTP answer for the response-level kinds rate_limit / server_error / unavailable / malformed."""
    if kind == "rate_limit":
        return JSONResponse({"detail": "Rate limited"}, status_code=429,
                            headers={"Retry-After": _retry_after(config.retry_after_seconds)})
    if kind == "server_error":
        return JSONResponse({"detail": "Internal server error (simulated)", "error_type": "internal_server_error"},
                            status_code=500, headers={"X-Fal-Error-Type": "internal_server_error"})
    if kind == "unavailable":
        return JSONResponse({"detail": "Service temporarily unavailable (simulated)"}, status_code=503)
    if kind == "malformed":
        return Response(b"{not json", status_code=200, media_type="application/json")
    raise ValueError(f"{kind!r} has no canned response")


def request_error_response(kind: str) -> Response:
    """The result of a job that failed with a `request_error` fault."""
    if kind == "content_policy_violation":
        body = {"detail": [{"loc": ["body", "prompt"],
                            "msg": "The content could not be processed because it was flagged by a content checker.",
                            "type": "content_policy_violation"}]}
        return JSONResponse(body, status_code=422, headers={"X-Fal-Retryable": "false"})
    body = {"detail": "The runner disconnected while processing the request (simulated)",
            "error_type": "runner_disconnected"}
    return JSONResponse(body, status_code=500,
                        headers={"X-Fal-Retryable": "true", "X-Fal-Error-Type": "runner_disconnected"})
