"""The records a day's generation passes around: the work items, what planning made of each, one outcome per item
(the run's settings are `config.GenerationConfig`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sora_pipeline.endpoints import EndpointProfile
from sora_pipeline.generation.config import GenerationConfig
from sora_pipeline.fal.inputs import ImageInput
from sora_pipeline.fal.models import ImageToVideoOutput
from sora_pipeline.ledger import LedgerEntry, RequestSpec, would_submit
from sora_pipeline.redact import redact


#: output fields that have their own column (or table) in `generations`; other scalar outputs go to `outputs_json`
OUTPUT_COLUMNS = frozenset({"video", "video_id", "thumbnail", "spritesheet", "seed"})


@dataclass(frozen=True)
class WorkItem:
    """A valid catalog row, as the generation step needs it."""

    item_id: str
    prompt: str
    image_ref: str
    resolution: str | None
    aspect_ratio: str | None
    duration: int | None
    day: str
    params: dict | None = None  # extra endpoint inputs (the catalog's `params`)
    end_image_ref: str | None = None  # the last frame (the catalog's `end_image_uri`), where the endpoint takes one
    endpoint_id: str | None = None  # the row's endpoint (the catalog's `endpoint_id`); None: the run's default


@dataclass
class Outcome:
    """One row of the `generations` table."""

    item_id: str
    request_key: str | None
    resolution: str
    aspect_ratio: str
    requested_duration: int
    endpoint_id: str
    backend: str
    status: str = "pending"
    decision: str = "skipped"
    attempt: int | None = None
    request_id: str | None = None
    video_id: str | None = None
    video_url: str | None = None
    content_type: str | None = None
    api_json: str | None = None
    archive_uri: str | None = None
    sha256: str | None = None
    file_size: int | None = None
    probe_json: str | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error_type: str | None = None
    error_message: str | None = None
    retryable: bool | None = None
    estimated_cost: float | None = None
    priced_cost: float | None = None
    billed_units: float | None = None
    unit_price_usd: float | None = None
    billed_cost_usd: float | None = None
    billing_source: str | None = None
    seconds_generated: float | None = None
    used_openai_key: bool = False
    thumbnail_url: str | None = None
    spritesheet_url: str | None = None
    seed: int | None = None
    outputs_json: str | None = None

    @classmethod
    def for_planned(cls, p: Planned, config: GenerationConfig) -> Outcome:
        """A fresh outcome of a planned item (what was asked, the estimate)."""
        i = p.item
        return cls(item_id=i.item_id, request_key=p.spec.request_key if p.spec else None,
                   resolution=i.resolution, aspect_ratio=i.aspect_ratio, requested_duration=i.duration,
                   endpoint_id=i.endpoint_id or config.endpoint_id, backend=config.backend,
                   estimated_cost=p.spec.estimated_cost if p.spec else None,
                   used_openai_key=bool(p.spec and p.spec.used_openai_key))

    @classmethod
    def dry_run(cls, p: Planned, config: GenerationConfig, entry: LedgerEntry | None) -> Outcome:
        """What a dry run reports for an item: `would_submit`, or `would_<state>` of its ledger entry."""
        out = cls.for_planned(p, config)
        if p.error:
            return out.fail("failed", "invalid_image", p.error, False)
        out.status = "planned"
        out.decision = "would_submit" if would_submit(entry, config.policy) else f"would_{entry.state.value}"
        return out

    def fill_from_entry(self, entry: LedgerEntry) -> None:
        self.attempt, self.request_id, self.submitted_at = entry.attempt, entry.request_id, entry.submitted_at

    def fill_completed(self, entry: LedgerEntry) -> LedgerEntry:
        """Completed from the ledger's stored result (a reuse, a webhook, or this run's own fetch)."""
        self.fill_from_entry(entry)
        output = ImageToVideoOutput.model_validate(entry.output)
        self.status, self.completed_at = "completed", entry.completed_at
        self.video_id, self.video_url = output.video_id, output.video.url
        self.content_type = output.video.content_type
        self.api_json = output.video.model_dump_json(exclude_none=True)
        self.apply_outputs(entry.output)
        self.seconds_generated, self.priced_cost = entry.seconds_generated, entry.actual_cost
        self.apply_billing(entry.artifacts or {})
        return entry

    def apply_outputs(self, document: dict[str, Any]) -> None:
        """What the endpoint answered besides the video: Sora's thumbnail and spritesheet URLs, a seed, and every
        other scalar output (JSON, sorted) — absent ones stay null."""
        def url(name: str) -> str | None:
            value = document.get(name)
            return value.get("url") if isinstance(value, dict) and isinstance(value.get("url"), str) else None

        self.thumbnail_url, self.spritesheet_url = url("thumbnail"), url("spritesheet")
        seed = document.get("seed")
        self.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
        others = {k: v for k, v in document.items() if k not in OUTPUT_COLUMNS
                  and (v is None or isinstance(v, (str, int, float, bool)))}
        self.outputs_json = json.dumps(others, sort_keys=True) if others else None

    def apply_billing(self, artifacts: dict[str, Any]) -> None:
        """fal's billable units of the result × the unit price in force (null when fal did not report units)."""
        if "billed_units" in artifacts:  # (a later write may carry only the unit price)
            self.billed_units = artifacts["billed_units"]
        if "unit_price_usd" in artifacts:
            self.unit_price_usd = artifacts["unit_price_usd"]
        if self.billed_units is not None and self.unit_price_usd is not None:
            self.billed_cost_usd = round(self.billed_units * self.unit_price_usd, 6)
            self.billing_source = "billable_units"

    def apply_artifacts(self, artifacts: dict[str, Any]) -> None:
        """The downloaded video's facts: archive, hash, size, probe."""
        self.archive_uri, self.sha256 = artifacts.get("archive_uri"), artifacts.get("sha256")
        self.file_size = artifacts.get("file_size")
        self.content_type = self.content_type or artifacts.get("content_type")
        self.probe_json = json.dumps(artifacts.get("probe"), sort_keys=True) if artifacts.get("probe") else None
        if artifacts.get("started_at") and self.started_at is None:
            self.started_at = datetime.fromisoformat(artifacts["started_at"])
        self.apply_billing(artifacts)

    def fail(self, status: str, error_type: str, message: str, retryable: bool | None = None) -> Outcome:
        self.status, self.error_type, self.retryable = status, redact(error_type), retryable
        self.error_message = redact(message)  # a server may echo a key back in its error
        return self


@dataclass(frozen=True)
class Planned:
    """A work item after planning: its ledger spec and image, or why it cannot be submitted."""

    item: WorkItem
    spec: RequestSpec | None
    image: ImageInput | None
    error: str | None = None
    end_image: ImageInput | None = None  # the last frame, when the item has one
    profile: EndpointProfile | None = None  # the item's endpoint

    @property
    def endpoint_id(self) -> str:
        return self.profile.endpoint_id if self.profile is not None else str(self.item.endpoint_id)
