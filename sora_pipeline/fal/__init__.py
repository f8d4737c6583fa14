"""fal queue client for the Sora 2 Pro image-to-video endpoint (pure httpx; no Dagster import)."""

from sora_pipeline.fal.client import AsyncFalQueueClient, FalQueueClient
from sora_pipeline.fal.errors import (
    AmbiguousSubmitError,
    AuthenticationError,
    FalError,
    InputValidationError,
    RateLimitedError,
    RequestFailedError,
    ResultGoneError,
    TransientError,
    WaitTimeoutError,
)
from sora_pipeline.fal.models import (
    DEFAULT_ENDPOINT_ID,
    AspectRatio,
    Duration,
    ImageToVideoInput,
    ImageToVideoOutput,
    Resolution,
    VideoFile,
)
from sora_pipeline.fal.protocol import PollPolicy, QueueHandle, QueueStatus, RetryPolicy

__all__ = [
    "DEFAULT_ENDPOINT_ID",
    "AmbiguousSubmitError",
    "AspectRatio",
    "AsyncFalQueueClient",
    "AuthenticationError",
    "Duration",
    "FalError",
    "FalQueueClient",
    "ImageToVideoInput",
    "ImageToVideoOutput",
    "InputValidationError",
    "PollPolicy",
    "RetryPolicy",
    "QueueHandle",
    "QueueStatus",
    "RateLimitedError",
    "RequestFailedError",
    "Resolution",
    "ResultGoneError",
    "TransientError",
    "VideoFile",
    "WaitTimeoutError",
]
