"""`GenerationConfig`: one day's run of the generation room — its endpoints (resolved once by the caller), backend,
ledger owner, caps, budgets and waits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sora_pipeline.endpoints import EndpointProfile, EndpointSet, get_profile
from sora_pipeline.fal.caps import TransferCaps
from sora_pipeline.generation.costs import PriceTable
from sora_pipeline.ledger import ResubmitPolicy


@dataclass(frozen=True)
class GenerationConfig:
    """One day's run: its endpoints (resolved once, by the caller), backend, ledger owner, caps and waits."""

    endpoint_id: str  # the default endpoint: rows that name none use it
    backend: str
    queue_base_url: str
    owner: str  # the Dagster run id (claims are per owner)
    day: str
    max_concurrency: int = 8  # this run's requests in flight at most
    # the fal account's in-flight cap, shared through the ledger by every run, process and machine (None: none)
    account_cap: int | None = None
    admission_lease: float = 60.0  # seconds a dead process's places stay taken
    # claim→submit→record sections at once: a hard crash leaves at most this many requests `unknown`
    submit_concurrency: int = 4
    download_concurrency: int = 16
    total_timeout: float = 3600.0
    archive_root: str | None = None  # <warehouse>/videos/date=<day>; None = do not archive
    storage_options: dict = field(default_factory=dict)
    policy: ResubmitPolicy = field(default_factory=ResubmitPolicy)
    prices: PriceTable = field(default_factory=PriceTable)
    run_budget: float | None = None
    day_budget: float | None = None
    dry_run: bool = False
    openai_api_key: str | None = field(default=None, repr=False)
    progress_interval: float = 5.0
    webhook_wait: float | None = None  # webhook mode: wait this long for fal's callback before polling fal
    webhook_ledger_poll: float = 2.0
    cancel_timeout: float = 15.0
    submit_heartbeat: float = 5.0  # seconds between renewals of this run's submit claims (the lease is 4×)
    #: fal's request history: `history(endpoint_id, start, end)` → items with payloads (None: not available)
    history: Any = field(default=None, repr=False)
    unknown_settle: float = 7200.0  # seconds after which a claim absent from the history was never accepted
    #: every endpoint a row may use (the default's included); None: only `endpoint_id`'s profile
    endpoints: EndpointSet | None = field(default=None, repr=False)
    caps: TransferCaps = field(default_factory=TransferCaps)  # the video cap and fal storage uploads (settings)
    _price_tables: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        endpoints = self.endpoints or EndpointSet.only(get_profile(self.endpoint_id))
        if endpoints.default_id != self.endpoint_id:
            raise ValueError(f"endpoint_id {self.endpoint_id!r} is not the endpoint set's default "
                             f"{endpoints.default_id!r}")
        object.__setattr__(self, "endpoints", endpoints)
        self._price_tables[self.endpoint_id] = self.prices  # (SORA_PRICE_TABLE overrides the default's only)

    def profile_of(self, endpoint_id: str | None) -> EndpointProfile:
        """The profile of a row's endpoint (None: the default's)."""
        return self.endpoints[endpoint_id or self.endpoint_id]

    def prices_of(self, endpoint_id: str | None) -> PriceTable:
        """The prices of a row's endpoint: the run's own for the default, the profile's for the others."""
        endpoint_id = endpoint_id or self.endpoint_id
        table = self._price_tables.get(endpoint_id)
        if table is None:
            table = self._price_tables[endpoint_id] = PriceTable.from_profile(self.endpoints[endpoint_id])
        return table
