"""Configuration of the fal queue simulator; everything random is derived from `seed`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sora_pipeline.simulator._models import DEFAULT_ENDPOINT_ID

#: fault kinds the simulator can inject (see `faults.py`)
FAULT_KINDS: tuple[str, ...] = (
    "rate_limit",
    "server_error",
    "unavailable",
    "drop",
    "slow",
    "malformed",
    "result_404_once",
    "request_error",
)


class SimulatorConfig(BaseModel):
    """Knobs of the simulated queue. Latencies are seconds; `faults` maps a kind to a probability per call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    queue_latency: float = Field(default=0.0, ge=0)
    run_latency: float = Field(default=0.5, ge=0)
    max_running: int | None = Field(default=None, ge=1)
    include_metadata: bool = True
    fps: int = Field(default=24, ge=1, le=120)
    faults: dict[str, float] = Field(default_factory=dict)
    #: which calls faults may hit; add "file" to also fault MP4 downloads
    fault_calls: frozenset[str] = frozenset({"submit", "status", "result", "cancel"})
    slow_seconds: float = Field(default=2.0, ge=0)
    retry_after_seconds: float = Field(default=0.2, ge=0)
    accepted_keys: list[str] | None = None
    auth_required: bool = True
    video_cache_dir: str | None = None
    fail_prompts_containing: str | None = "[simulate-failure]"
    endpoint_ids: tuple[str, ...] = (DEFAULT_ENDPOINT_ID,)
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
        unknown = set(value) - {"submit", "status", "result", "cancel", "file"}
        if unknown:
            raise ValueError(f"unknown call kinds {sorted(unknown)}")
        return frozenset(value)
