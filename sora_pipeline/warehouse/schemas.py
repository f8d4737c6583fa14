"""Output table definitions: each column's Arrow type, description, and the catalog columns it derives from.

One source for the Parquet schema, the Dagster `TableSchema` and the column lineage of every table."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str
    derives_from: tuple[str, ...] = ()  # catalog columns (asset `catalog_items`)


@dataclass(frozen=True)
class TableDef:
    name: str
    description: str
    columns: tuple[Column, ...]

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, metadata={"description": c.description}) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def from_rows(self, rows: list[dict]) -> pa.Table:
        """Rows (dicts) → a table with exactly this schema (missing keys become nulls)."""
        return pa.Table.from_pylist([{c.name: row.get(c.name) for c in self.columns} for row in rows],
                                    schema=self.arrow_schema)


def _c(name, typ, desc, *src):
    return Column(name, typ, desc, tuple(src))


_REQUEST = (
    _c("resolution", pa.string(), "resolution asked for (auto, 720p, 1080p)", "resolution"),
    _c("aspect_ratio", pa.string(), "aspect ratio asked for (auto, 9:16, 16:9)", "aspect_ratio"),
    _c("requested_duration", pa.int32(), "duration asked for, seconds (4, 8, 12)", "duration"),
)

CATALOG_ITEMS = TableDef("catalog_items", "Valid catalog rows scheduled for the day", (
    _c("item_id", pa.string(), "catalog key, unique across the catalog", "item_id"),
    _c("prompt", pa.string(), "text prompt", "prompt"),
    _c("image_uri", pa.string(), "image reference as written in the catalog", "image_uri"),
    _c("image_ref", pa.string(), "resolved image location (https URL, data URI marker, or absolute URI)",
       "image_uri"),
    _c("resolution", pa.string(), "resolution (nulls → auto)", "resolution"),
    _c("aspect_ratio", pa.string(), "aspect ratio (nulls → auto)", "aspect_ratio"),
    _c("duration", pa.int32(), "seconds (nulls → the endpoint's default)", "duration"),
    _c("scheduled_date", pa.date32(), "the day partition", "scheduled_date"),
    _c("params", pa.string(), "extra endpoint inputs as a JSON object (null: none)", "params"),
    _c("end_image_uri", pa.string(), "last-frame image as written in the catalog (null: none)", "end_image_uri"),
    _c("end_image_ref", pa.string(), "resolved last-frame location (null: none)", "end_image_uri"),
    _c("endpoint_id", pa.string(), "the row's fal endpoint (the catalog's endpoint_id, else SORA_ENDPOINT_ID)",
       "endpoint_id"),
))

REJECTED_ITEMS = TableDef("rejected_items", "Catalog rows of the day that break a rule, with the reason", (
    _c("item_id", pa.string(), "catalog key (null if missing)", "item_id"),
    _c("row_index", pa.int64(), "row position in the day's slice"),
    _c("field", pa.string(), "the offending column"),
    _c("reason", pa.string(), "one-line reason naming the row and the field"),
    _c("scheduled_date", pa.date32(), "the day partition", "scheduled_date"),
    _c("endpoint_id", pa.string(), "the endpoint the row asked for (else SORA_ENDPOINT_ID); may be unknown",
       "endpoint_id"),
))

GENERATIONS = TableDef("generations", "One row per valid catalog item of the day: what happened to its request", (
    _c("item_id", pa.string(), "catalog key", "item_id"),
    _c("request_key", pa.string(), "deterministic hash of endpoint + normalized input + image content + item id",
       "item_id", "prompt", "image_uri", "resolution", "aspect_ratio", "duration"),
    _c("attempt", pa.int32(), "ledger attempt number of this outcome"),
    _c("status", pa.string(), "completed | failed | unknown | skipped | pending"),
    _c("decision", pa.string(), "submitted | resumed | reused | skipped (what this run did)"),
    _c("request_id", pa.string(), "fal queue request id"),
    _c("video_id", pa.string(), "model's video id"),
    _c("video_url", pa.string(), "result URL"),
    _c("content_type", pa.string(), "content type of the video"),
    _c("api_json", pa.string(), "the `video` object of the API result, as JSON"),
    _c("archive_uri", pa.string(), "archived copy under <warehouse>/videos/ (null if archiving is off)"),
    _c("sha256", pa.string(), "sha256 of the video file"),
    _c("file_size", pa.int64(), "bytes"),
    _c("probe_json", pa.string(), "PyAV probe of the file, as JSON"),
    *_REQUEST,
    _c("submitted_at", TS, "when fal accepted the request"),
    _c("started_at", TS, "first time the request was seen IN_PROGRESS (null if never observed)"),
    _c("completed_at", TS, "when the request was seen COMPLETED"),
    _c("error_type", pa.string(), "error class (e.g. request_failed, ambiguous_submit, budget)"),
    _c("error_message", pa.string(), "one-line reason"),
    _c("retryable", pa.bool_(), "whether a later run may resubmit"),
    _c("estimated_cost", pa.float64(), "USD estimated before submitting", "resolution", "duration"),
    _c("priced_cost", pa.float64(), "USD at the profile's prices for the generated seconds and output size: an "
       "estimate (0 with a BYO OpenAI key)"),
    _c("billed_units", pa.float64(), "units fal reported billing for this request (x-fal-billable-units of the "
       "result; null when fal did not say)"),
    _c("unit_price_usd", pa.float64(), "USD per billable unit in force (the profile's price)"),
    _c("billed_cost_usd", pa.float64(), "billed_units × unit_price_usd (null without billed units); fal's own "
       "billing record, when it arrives, is in fal_billing"),
    _c("billing_source", pa.string(), "`billable_units` when billed_cost_usd comes from fal's units, else null"),
    _c("seconds_generated", pa.float64(), "seconds of video generated"),
    _c("used_openai_key", pa.bool_(), "whether a BYO OpenAI key was sent (the key itself is never stored)"),
    _c("thumbnail_url", pa.string(), "the endpoint's thumbnail image (Sora; null when it answers none)"),
    _c("spritesheet_url", pa.string(), "the endpoint's spritesheet image (Sora; null when it answers none)"),
    _c("seed", pa.int64(), "the seed the model used, when the endpoint answers one"),
    _c("outputs_json", pa.string(), "the endpoint's other scalar outputs, as JSON (null when none)"),
    _c("endpoint_id", pa.string(), "fal endpoint", "endpoint_id"),
    _c("backend", pa.string(), "fal or simulator"),
))

VIDEO_METADATA = TableDef("video_metadata", "One row per successfully generated video of the day", (
    _c("item_id", pa.string(), "catalog key", "item_id"),
    _c("request_id", pa.string(), "fal queue request id"),
    _c("video_id", pa.string(), "model's video id"),
    _c("video_url", pa.string(), "result URL"),
    _c("content_type", pa.string(), "e.g. video/mp4"),
    _c("file_size", pa.int64(), "bytes"),
    _c("width", pa.int32(), "pixels", "resolution", "aspect_ratio", "image_uri"),
    _c("height", pa.int32(), "pixels", "resolution", "aspect_ratio", "image_uri"),
    _c("fps", pa.float64(), "frames per second"),
    _c("num_frames", pa.int64(), "frames", "duration"),
    _c("duration", pa.float64(), "seconds", "duration"),
    _c("metadata_source", pa.string(), "api, probe, or api+probe: where the media values came from"),
    *_REQUEST,
    _c("submitted_at", TS, "when fal accepted the request"),
    _c("completed_at", TS, "when the request completed"),
    _c("endpoint_id", pa.string(), "fal endpoint", "endpoint_id"),
    _c("backend", pa.string(), "fal or simulator"),
    _c("archive_uri", pa.string(), "archived copy of the video (null if archiving is off)"),
    _c("sha256", pa.string(), "sha256 of the video file"),
    _c("has_audio", pa.bool_(), "whether the file has an audio track"),
))

FAILED_GENERATIONS = TableDef("failed_generations", "Items of the day that did not produce a video, and why", (
    _c("item_id", pa.string(), "catalog key", "item_id"),
    _c("request_key", pa.string(), "ledger key (quote it when deciding about an unknown request)"),
    _c("attempt", pa.int32(), "ledger attempt number"),
    _c("status", pa.string(), "failed | unknown | skipped | pending"),
    _c("request_id", pa.string(), "fal request id, if one was recorded"),
    _c("error_type", pa.string(), "error class"),
    _c("reason", pa.string(), "one-line reason"),
    _c("retryable", pa.bool_(), "whether a later run may resubmit"),
    *_REQUEST,
    _c("submitted_at", TS, "when fal accepted the request (if it did)"),
    _c("endpoint_id", pa.string(), "fal endpoint", "endpoint_id"),
    _c("backend", pa.string(), "fal or simulator"),
))

FAL_BILLING = TableDef("fal_billing", "What fal billed for the day's requests, beside what was estimated", (
    _c("request_id", pa.string(), "fal request id"),
    _c("item_id", pa.string(), "catalog key (null for spend the ledger never submitted)"),
    _c("endpoint_id", pa.string(), "fal endpoint", "endpoint_id"),
    _c("backend", pa.string(), "fal or simulator (null for spend the ledger never submitted)"),
    _c("estimated_cost_usd", pa.float64(), "what the pipeline estimated before submitting"),
    _c("billed_units", pa.float64(), "units fal billed (billing event, else the result's billable units)"),
    _c("unit_price_usd", pa.float64(), "USD per unit (billing event, else the profile's price)"),
    _c("billed_cost_usd", pa.float64(), "USD fal charged (null until fal reports it: billing data can lag)"),
    _c("billing_source", pa.string(), "billing_events | billable_units | null (not reported yet)"),
    _c("known_to_ledger", pa.bool_(), "false: fal billed a request the ledger never submitted"),
    _c("percent_discount", pa.float64(), "fal's discount on this request, percent (billing events only)"),
    _c("billed_at", TS, "the billing event's time"),
    _c("reconciled_at", TS, "when this row was reconciled"),
))

ALL_TABLES = {t.name: t for t in (CATALOG_ITEMS, REJECTED_ITEMS, GENERATIONS, VIDEO_METADATA, FAILED_GENERATIONS,
                                  FAL_BILLING)}
