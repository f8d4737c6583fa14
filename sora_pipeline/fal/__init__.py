"""The fal room: the queue client (`client`; sans-IO `protocol` with its `urls`, byte `limits`, `error_mapping`
and retry/poll `policies`; typed `errors`), the endpoint's input/output schema (`models`, shared with the
simulator), image inputs and their allowed sources (`inputs`, `image_sources`), uploads of large ones to fal
storage (`storage`), and which backend a queue URL is (`identity`). Pure httpx; no Dagster import.

Names are imported lazily, so importing the shared schema (`sora_pipeline.fal.models`) does not load the client."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AsyncFalQueueClient": "client", "FalQueueClient": "client",
    "AmbiguousSubmitError": "errors", "AuthenticationError": "errors", "FalError": "errors",
    "InputValidationError": "errors", "RateLimitedError": "errors", "RequestFailedError": "errors",
    "ResultGoneError": "errors", "TransientError": "errors", "WaitTimeoutError": "errors",
    "DEFAULT_ENDPOINT_ID": "models", "AspectRatio": "models", "Duration": "models",
    "ImageToVideoInput": "models", "ImageToVideoOutput": "models", "Resolution": "models", "VideoFile": "models",
    "PollPolicy": "policies", "QueueHandle": "protocol", "QueueStatus": "protocol", "RetryPolicy": "policies",
    "StorageSettings": "storage", "StorageUploader": "storage", "StorageUploadError": "storage",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"sora_pipeline.fal.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'sora_pipeline.fal' has no attribute {name!r}")
