"""The byte caps and upload settings one run works within, as one value passed down (never read here): the
pipeline's settings (`sora_pipeline.defs.settings`) read them from the environment once, the Dagster resource
carries them, and a day's `GenerationConfig` hands them to the downloads and uploads."""

from __future__ import annotations

from dataclasses import dataclass, field

from sora_pipeline.fal.limits import DEFAULT_MAX_JSON_BYTES, DEFAULT_MAX_STREAM_EVENT_BYTES, DEFAULT_MAX_VIDEO_BYTES
from sora_pipeline.fal.storage_uploads import StorageSettings


@dataclass(frozen=True)
class TransferCaps:
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES  # SORA_MAX_JSON_BYTES: one JSON answer of fal
    max_stream_event_bytes: int = DEFAULT_MAX_STREAM_EVENT_BYTES  # SORA_MAX_STREAM_EVENT_BYTES: one stream line
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES  # SORA_MAX_VIDEO_BYTES: one downloaded video
    uploads: StorageSettings = field(default_factory=StorageSettings)  # SORA_UPLOAD_* and SORA_FAL_STORAGE_URL
