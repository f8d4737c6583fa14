"""Configuration of the fal queue simulator; everything random is derived from `seed`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sora_pipeline.endpoints import known_endpoints

#: fault kinds the simulator can inject, with what each does (see `faults.py` and `hostile.py`); enable one with
#: `SimulatorConfig(faults={"<kind>": probability})` or `python -m sora_pipeline.simulator --fault <kind>=<p>`
FAULT_DOCS: dict[str, str] = {
    # per call (every call listed in `fault_calls`)
    "rate_limit": "429 with Retry-After",
    "server_error": "500 with X-Fal-Error-Type",
    "unavailable": "503",
    "drop": "connection closed without an answer (on submit: after the job was recorded)",
    "slow": "sleep `slow_seconds`, then answer normally",
    "malformed": "200 with a non-JSON body (on submit: after the job was recorded)",
    "echo_key": "401 whose JSON `detail` repeats the request's Authorization header verbatim "
                "('invalid key: Key <the key>'); on submit before anything is recorded",
    "redirect": "302 to the same path on `foreign_base_url` (a client must not follow it); on submit before "
                "anything is recorded",
    # per call, on one call only (whatever `fault_calls` says)
    "cancel_already_completed": "cancel answers ALREADY_COMPLETED (HTTP 400) without cancelling: the job "
                                "still completes and its result stays fetchable",
    "huge_status_json": "a status poll answers the job's status padded (in `logs`) to `hostile_bytes`",
    "huge_json": "a completed job's result answers its JSON padded (in video.file_name) to `hostile_bytes`",
    "huge_stream_event": "the status stream sends its first event, then `data: ` and bytes without a newline "
                         "until `hostile_bytes`",
    "endless_video": "the video file answers 200 video/mp4 with a body that does not end (until `hostile_bytes`)",
    # per job (drawn once at submit)
    "result_404_once": "the first result fetch after completion answers 404",
    "request_error": "the job completes but its result is a 422 content-policy or a 500 runner_disconnected error",
    "foreign_urls": "the submit answer's (and status answers') status/response/cancel URLs point at "
                    "`foreign_base_url` instead of this server",
    "bad_request_id": "the submit answer's request_id is a path ('../<id>'); the job is recorded and runs",
}
#: a submit that creates the job but whose answer is lost is `drop` on submit (`faults={"drop": p}`, with
#: `fault_calls={"submit"}` to spare the other calls): the job is recorded and runs, the client hears nothing.
#: Add "platform" to `fault_calls` to let the per-call kinds hit the `/v1/models…` routes too.
FAULT_KINDS: tuple[str, ...] = tuple(FAULT_DOCS)


class SimulatorConfig(BaseModel):
    """Knobs of the simulated queue. Latencies are seconds; `faults` maps a kind (`FAULT_DOCS`) to a probability
    per call (per job for the per-job kinds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    queue_latency: float = Field(default=0.0, ge=0)
    run_latency: float = Field(default=0.5, ge=0)
    #: each job also takes this fraction of its endpoint's typical latency (the profile's `video.latency_s`, e.g.
    #: 150 s for Sora 2 Pro): 0 (the default) makes every endpoint equally fast, 1 as slow as the real model
    profile_latency_scale: float = Field(default=0.0, ge=0)
    max_running: int | None = Field(default=None, ge=1)
    include_metadata: bool = True
    fps: int = Field(default=24, ge=1, le=120)
    faults: dict[str, float] = Field(default_factory=dict)
    #: which calls faults may hit; add "file" to also fault MP4 downloads, "platform" the `/v1/models…` routes
    fault_calls: frozenset[str] = frozenset({"submit", "status", "result", "cancel"})
    slow_seconds: float = Field(default=2.0, ge=0)
    retry_after_seconds: float = Field(default=0.2, ge=0)
    accepted_keys: list[str] | None = None
    #: keys that may read `/v1/models/billing-events` (fal's admin keys; any other key gets 403); None: none may.
    #: They are accepted on the other `/v1/models…` routes too.
    admin_keys: list[str] | None = None
    auth_required: bool = True
    video_cache_dir: str | None = None
    fail_prompts_containing: str | None = "[simulate-failure]"
    #: the endpoints it serves: every shipped profile (`sora_pipeline.endpoints`), each with its own inputs
    endpoint_ids: tuple[str, ...] = Field(default_factory=lambda: tuple(known_endpoints()))
    encode_workers: int | None = Field(default=None, ge=1)
    # -- webhook delivery (submit with `?fal_webhook=<url>`; see `webhook.py`) ------------------------------------
    #: Ed25519 signing key: 64 hex characters are the 32-byte seed, any other text is hashed (sha256) into one;
    #: None derives it from `seed`. The public key is `SimulatorServer.webhook_public_key` (hex).
    webhook_signing_seed: str | None = None
    webhook_user_id: str = "sim-user"
    #: seconds between a job's completion and the first delivery attempt
    webhook_delay: float = Field(default=0.0, ge=0)
    #: delivery attempts per webhook (fal: up to 10 over 2 h); retried on non-2xx answers and network errors
    webhook_max_attempts: int = Field(default=10, ge=1)
    webhook_retry_base: float = Field(default=0.1, ge=0)  # backoff min(base * 2**(n-1), max), seeded ±50 % jitter
    webhook_retry_max: float = Field(default=2.0, ge=0)
    webhook_timeout: float = Field(default=15.0, gt=0)  # per delivery attempt (fal: 15 s)
    #: probability (per job, seeded) that a delivered webhook is delivered a second time, as fal may do
    webhook_duplicate_probability: float = Field(default=0.0, ge=0, le=1)
    #: probability (per job, seeded) that a webhook is never sent (to exercise the caller's polling fallback)
    webhook_drop_probability: float = Field(default=0.0, ge=0, le=1)
    #: hosts webhooks may be sent to; None = any. Loopback only by default: the simulator never calls out.
    webhook_allowed_hosts: tuple[str, ...] | None = ("127.0.0.1", "localhost", "::1")

    # -- fal's platform API (`/v1/models…`, see `platform.py`) -----------------------------------------------------
    #: endpoints the model registry (`GET /v1/models`) no longer lists (absent from its answers)
    retired_endpoints: tuple[str, ...] = ()
    #: endpoints the registry lists with `metadata.status = "deprecated"` (the others are "active")
    deprecated_endpoints: tuple[str, ...] = ()
    #: a job's billing event appears this many seconds after the job ended (fal's billing data lags)
    billing_lag_seconds: float = Field(default=0.0, ge=0)
    #: percent discount on every billing event (billed = estimated × (1 - p/100); 0: `percent_discount` null)
    billing_discount_percent: float = Field(default=0.0, ge=0, le=100)
    #: an outlier charge: the `billing_outlier_job`-th accepted submit (1-based, in the order the simulator
    #: numbers jobs; its request id follows from `seed` like every id) is billed this many times its units
    #: (e.g. 10); None: no outlier. Its result's `x-fal-billable-units` stays the true figure.
    billing_outlier: float | None = Field(default=None, gt=0)
    billing_outlier_job: int = Field(default=1, ge=1)
    #: billing events for this many request ids nobody submitted here (spend from elsewhere on the same key),
    #: ids derived from `seed`, timestamped a millisecond apart from the simulator's start (or last reset)
    billing_foreign_requests: int = Field(default=0, ge=0, le=100_000)

    # -- hostile modes (see `hostile.py`) --------------------------------------------------------------------------
    #: where `foreign_urls` and `redirect` point; None = http://127.0.0.2:<this server's port> (loopback, but
    #: another origin; nothing listens there unless a test starts a server)
    foreign_base_url: str | None = None
    #: size of the `huge_*` bodies and where the "endless" ones (`endless_video`, `huge_stream_event`) stop: a
    #: safety stop for tests; the default (4 GiB) is endless for any sane client
    hostile_bytes: int = Field(default=1 << 32, ge=1)
    #: the `huge_json` / `huge_status_json` / `endless_video` bodies declare `Content-Length: hostile_bytes` up
    #: front (else they are sent chunked, with no length)
    hostile_declare_length: bool = False
    #: stand in for fal: no `x-sora-simulator` header and no `/.well-known/sora-simulator` (404), so a client
    #: takes it for fal (tests of what must never be reused across backends)
    impersonate_fal: bool = False

    @field_validator("faults")
    @classmethod
    def _known_faults(cls, value: dict[str, float]) -> dict[str, float]:
        for kind, p in value.items():
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"fault probability for {kind!r} must be within [0, 1]")
        return {k: float(p) for k, p in value.items()}

    @field_validator("fault_calls")
    @classmethod
    def _known_calls(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = set(value) - {"submit", "status", "result", "cancel", "file", "platform"}
        if unknown:
            raise ValueError(f"unknown call kinds {sorted(unknown)}")
        return frozenset(value)
