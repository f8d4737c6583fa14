"""Seeded fault injection for the simulator (`random.Random` derived from the config seed).

Per-call kinds (answered instead of / around the normal response, on the calls in `fault_calls`; a status stream
counts as a status call): `rate_limit` (429 + Retry-After), `server_error` (500 + X-Fal-Error-Type),
`unavailable` (503), `drop` (connection closed, no response), `slow` (sleep `slow_seconds`, then answer
normally), `malformed` (200 with a non-JSON body), `echo_key` (401 whose `detail` repeats the request's
Authorization header verbatim: "invalid key: Key <the key>"), `redirect` (302 to the same path on
`foreign_base_url`).
Kinds of one call only (drawn on that call whatever `fault_calls` says; bodies built in `hostile.py`):
`cancel_already_completed` (cancel: 400 ALREADY_COMPLETED, the job is not cancelled and completes),
`huge_status_json` (status poll: JSON padded to `hostile_bytes`), `huge_json` (result of a completed job: JSON
padded to `hostile_bytes`), `huge_stream_event` (status stream: after the first event, one line that never ends),
`endless_video` (video file: a body that never ends).
Per-job kinds (decided once at submit): `result_404_once` (the first result fetch after completion answers 404),
`request_error` (the job completes but its result is a 422 content-policy error or a 500 runner_disconnected
error; which one is drawn from the seed), `foreign_urls` (the answers' status/response/cancel URLs point at
`foreign_base_url`), `bad_request_id` (the submit answer's request_id is a path, `../<id>`).

On submit, `rate_limit`/`server_error`/`unavailable`/`echo_key`/`redirect` are answered before the request is
recorded; `drop`, `slow` and `malformed` happen after it was recorded (queued and will run — the ambiguous case).
`drop` on submit is the lost answer: the job is created, runs, is billed and appears in the request history
(`faults={"drop": 1.0}, fault_calls={"submit"}` spares the other calls). With "platform" in `fault_calls` the
per-call kinds hit the `/v1/models…` routes too.
Billing faults are config fields (`config.py`, `platform.py`): `billing_lag_seconds`, `billing_discount_percent`,
`billing_outlier` (× units of the `billing_outlier_job`-th job), `billing_foreign_requests`.
Probabilities are per call (per job for the per-job kinds); a kind configured with probability 0 draws nothing,
so adding kinds never changes the draws of a configuration that does not use them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from starlette.responses import JSONResponse, Response

from sora_pipeline.simulator.config import SimulatorConfig

CALL_KINDS: tuple[str, ...] = ("rate_limit", "server_error", "unavailable", "drop", "slow", "malformed",
                               "echo_key", "redirect")
#: kinds that hit one call only: kind → call ("stream" is the status stream)
ONE_CALL_KINDS: dict[str, str] = {"cancel_already_completed": "cancel", "huge_status_json": "status",
                                  "huge_json": "result", "huge_stream_event": "stream", "endless_video": "file"}
JOB_KINDS: tuple[str, ...] = ("result_404_once", "request_error", "foreign_urls", "bad_request_id")
#: on submit these are answered before the request is recorded (nothing queued)
PRE_RECORD_KINDS = frozenset({"rate_limit", "server_error", "unavailable", "echo_key", "redirect"})


@dataclass(frozen=True)
class JobFaults:
    """Faults attached to one job at submit time."""

    result_404_once: bool = False
    request_error: str | None = None  # None | "content_policy_violation" | "runner_disconnected"
    foreign_urls: bool = False
    bad_request_id: bool = False


class FaultInjector:
    """Draws faults from a seeded RNG; the draw order is fixed so runs with the same calls are reproducible."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self._rng = random.Random(f"sora-sim-faults:{self.config.seed}")

    def pick(self, call: str) -> str | None:
        """The per-call fault to serve for one `call` (submit/status/stream/result/cancel/file), or None."""
        if (call if call != "stream" else "status") not in self.config.fault_calls:
            return None
        return self._draw(CALL_KINDS)

    def pick_one_call(self, call: str) -> str | None:
        """The fault of `ONE_CALL_KINDS` to serve on this `call` now, or None."""
        return self._draw(tuple(k for k, c in ONE_CALL_KINDS.items() if c == call))

    def _draw(self, kinds: tuple[str, ...]) -> str | None:
        for kind in kinds:
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
        foreign, bad_id = (self._draw((kind,)) is not None for kind in ("foreign_urls", "bad_request_id"))
        return JobFaults(result_404_once=r404, request_error=err, foreign_urls=foreign, bad_request_id=bad_id)


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
