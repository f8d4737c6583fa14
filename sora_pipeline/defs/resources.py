"""`FalVideoResource`: the configured fal endpoint (or the embedded simulator when no key and no URL are set)."""

from __future__ import annotations

import logging
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr, field_validator

from sora_pipeline.generation.costs import PriceTable
from sora_pipeline.fal.client import AsyncFalQueueClient, FalQueueClient
from sora_pipeline.fal.identity import identify_backend
from sora_pipeline.endpoints import DEFAULT_ENDPOINT_ID, EndpointProfile, EndpointSet, get_profile, profiles
from sora_pipeline.fal.policies import PollPolicy, RetryPolicy
from sora_pipeline.fal.urls import check_base_url, split_endpoint
from sora_pipeline.redact import install_log_redaction, register_secret
from sora_pipeline.defs.settings import DEFAULT_POLL_INTERVAL, TransferCapsConfig

SIMULATOR_KEY = "simulator-local-key"  # the simulator wants *a* key; this one is not a secret
log = logging.getLogger("sora_pipeline")


class FalVideoResource(dg.ConfigurableResource):
    """fal's queue API for one endpoint. With neither `fal_key` nor `queue_url`, an embedded simulator is
    started on a free loopback port for the duration of the step (`backend == "simulator"`)."""

    endpoint_id: str = Field(default=DEFAULT_ENDPOINT_ID, description="fal model endpoint id")
    queue_url: str | None = Field(default=None, description="queue base URL (https://queue.fal.run for fal)")
    fal_key: str | None = Field(default=None, description="fal API key; pass EnvVar('FAL_KEY')")
    openai_api_key: str | None = Field(default=None, description="optional OpenAI key sent as `api_key`")
    price_table: str | None = Field(default=None, description="JSON prices overriding the default endpoint's "
                                    "per-second prices (SORA_PRICE_TABLE), e.g. {\"720p\": 0.3}")
    account_concurrency: int | None = Field(default=None, ge=1, description="the fal account's concurrency C "
                                            "(requests it runs at once), shared by every run, process and worker "
                                            "of the ledger; unset: 8")
    inflight_cap: int | None = Field(default=None, ge=1, description="requests in flight account-wide at most "
                                     "(running + queued at fal); default 2 × C (C unset: the larger of 16 and "
                                     "max_concurrency, so one run keeps the concurrency it was given)")
    max_concurrency: int = Field(default=8, ge=1, description="requests in flight in one run at most (never "
                                 "more than the account's in-flight cap)")
    submit_concurrency: int = Field(default=4, ge=1, description="submit calls at once; a crash mid-submit "
                                    "leaves at most this many requests `unknown`")
    poll_interval: float = Field(default=DEFAULT_POLL_INTERVAL, gt=0, description="seconds between polls")
    max_poll_interval: float = Field(default=10.0, gt=0, description="poll interval cap once backing off")
    poll_backoff_after: float = Field(default=30.0, ge=0, description="seconds of running before backing off")
    request_timeout: float = Field(default=30.0, gt=0, description="per HTTP call timeout (seconds)")
    total_timeout: float = Field(default=3600.0, gt=0, description="give up waiting on one request after this")
    retry_max_attempts: int = Field(default=6, ge=1, description="attempts per HTTP call")
    retry_total_timeout: float = Field(default=120.0, gt=0, description="seconds of retrying per HTTP call")
    queue_priority: str | None = Field(default=None, description="X-Fal-Queue-Priority: normal or low")
    start_timeout: float | None = Field(default=None, description="X-Fal-Request-Timeout (seconds to start)")
    archive_videos: bool = Field(default=True, description="copy videos into <warehouse>/videos/")
    webhook_url: str | None = Field(default=None, description="webhook mode: public URL of the receiver "
                                    "(`python -m sora_pipeline.webhooks`), sent as ?fal_webhook= on submit")
    webhook_wait_seconds: float = Field(default=900.0, gt=0, description="webhook mode: wait this long for the "
                                        "callback before polling fal")
    webhook_ledger_poll_seconds: float = Field(default=2.0, gt=0, description="webhook mode: ledger re-read interval")
    simulator_run_latency: float = Field(default=1.0, ge=0, description="embedded simulator: seconds per job")
    simulator_include_metadata: bool = Field(default=True,
                                             description="embedded simulator: put width/height/… in results")
    caps: TransferCapsConfig = Field(default_factory=TransferCapsConfig, description="byte caps, fal storage uploads")

    _simulator: Any = PrivateAttr(default=None)
    _endpoints: EndpointSet | None = PrivateAttr(default=None)
    _base_url: str | None = PrivateAttr(default=None)
    _backend: str | None = PrivateAttr(default=None)

    @field_validator("queue_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value:
            try:
                check_base_url(value)
            except ValueError as exc:
                raise ValueError(f"{exc}") from None
        return value or None

    @field_validator("endpoint_id")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        split_endpoint(value)
        get_profile(value)  # an unknown endpoint fails at load, listing the known ones
        return value

    def prices(self) -> PriceTable:
        """The default endpoint's prices: its profile's, overridden by `price_table` (SORA_PRICE_TABLE)."""
        return PriceTable.with_override(self.price_table, self.endpoints().default)

    def endpoints(self) -> EndpointSet:
        """The endpoints this code location may call, resolved once: `endpoint_id`'s profile as the default, and
        every known profile (shipped, or from SORA_ENDPOINT_PROFILES) for catalog rows naming their own."""
        if self._endpoints is None:
            known = profiles()
            self._endpoints = EndpointSet(known[self.endpoint_id], known)
        return self._endpoints

    @field_validator("price_table")
    @classmethod
    def _check_prices(cls, value: str | None) -> str | None:
        PriceTable.with_override(value)  # a bad table fails at load, saying what is wrong
        return value or None

    @field_validator("queue_priority")
    @classmethod
    def _check_priority(cls, value: str | None) -> str | None:
        if value not in (None, "", "normal", "low"):
            raise ValueError("queue_priority must be 'normal' or 'low'")
        return value or None

    def __repr__(self) -> str:  # never show keys
        return (f"FalVideoResource(endpoint_id={self.endpoint_id!r}, queue_url={self.queue_url!r}, "
                f"fal_key={'set' if self.fal_key else 'unset'}, backend={self.backend!r})")

    __str__ = __repr__

    @property
    def backend(self) -> str:
        """`simulator` without a key (embedded or a local test server), or when the queue URL is a simulator
        (`python -m sora_pipeline.simulator`, found out at setup); else `fal`. It scopes the ledger's keys."""
        if not self.fal_key:
            return "simulator"
        return self._backend or "fal"

    @property
    def account_cap(self) -> int:
        """Requests in flight account-wide at most (admission through the ledger)."""
        if self.inflight_cap:
            return self.inflight_cap
        if self.account_concurrency is None:  # the account was never described: do not cap a run below its own
            return max(2 * 8, self.max_concurrency)
        return 2 * self.account_concurrency

    @property
    def run_concurrency(self) -> int:
        return min(self.max_concurrency, self.account_cap)

    @property
    def uses_embedded_simulator(self) -> bool:
        return not self.fal_key and not self.queue_url

    @property
    def base_url(self) -> str:
        if self._base_url:
            return self._base_url
        if self.queue_url:
            return self.queue_url.rstrip("/")
        if self.fal_key:
            return "https://queue.fal.run"
        raise RuntimeError("the embedded simulator is not running; use the resource inside a Dagster step")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        register_secret(self.fal_key)
        register_secret(self.openai_api_key)
        install_log_redaction()
        if self.fal_key:
            self._backend = identify_backend(self.base_url, timeout=self.request_timeout)
            if self._backend == "simulator":
                (context.log or log).warning(f"the queue at {self.base_url} is a SIMULATOR: videos are synthetic, "
                                             "nothing is billed, and its results are kept apart from fal's")
        if self.uses_embedded_simulator:
            from sora_pipeline.simulator import SimulatorConfig, SimulatorServer

            config = SimulatorConfig(run_latency=self.simulator_run_latency,
                                     include_metadata=self.simulator_include_metadata)
            self._simulator = SimulatorServer(config)
            self._simulator.start()
            self._base_url = self._simulator.base_url
            message = (f"NO FAL_KEY SET: using the EMBEDDED fal SIMULATOR at {self._base_url} — videos are "
                       "synthetic and nothing is billed. Set FAL_KEY to call fal.")
            (context.log or log).warning(message)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._simulator is not None:
            self._simulator.stop()
            self._simulator = None
            self._base_url = None

    # -- clients -------------------------------------------------------------------------------------
    def client_kwargs(self, profile: EndpointProfile | None = None) -> dict[str, Any]:
        """A queue client's settings for `profile`'s endpoint (None: the default endpoint)."""
        profile = profile or self.endpoints().default
        return dict(
            key=self.fal_key or SIMULATOR_KEY, base_url=self.base_url, endpoint_id=profile.endpoint_id,
            profile=profile,
            retry=RetryPolicy(max_attempts=self.retry_max_attempts, total_timeout=self.retry_total_timeout),
            poll=PollPolicy(interval=self.poll_interval, max_interval=max(self.max_poll_interval,
                                                                           self.poll_interval),
                            backoff_after=self.poll_backoff_after),
            timeout=self.request_timeout, priority=self.queue_priority, start_timeout=self.start_timeout,
            webhook_url=self.webhook_url,
            max_connections=max(2 * self.run_concurrency, 16),
            max_json_bytes=self.caps.max_json_bytes, max_stream_event_bytes=self.caps.max_stream_event_bytes)

    def async_client(self, profile: EndpointProfile | None = None) -> AsyncFalQueueClient:
        return AsyncFalQueueClient(**self.client_kwargs(profile))

    def sync_client(self, profile: EndpointProfile | None = None) -> FalQueueClient:
        return FalQueueClient(**self.client_kwargs(profile))

