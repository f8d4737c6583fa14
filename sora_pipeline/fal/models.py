"""Pydantic models of the `fal-ai/sora-2/image-to-video/pro` input (exactly as its schema says) and of the video
output every image-to-video endpoint shares (`video` is fal's File; `video_id` is Sora's, absent elsewhere). Other
endpoints' inputs are checked by their profiles (`sora_pipeline.endpoints`)."""

from __future__ import annotations

from enum import Enum, IntEnum
from typing import Any

__all__ = ["AspectRatio", "Duration", "ImageToVideoInput", "ImageToVideoOutput",
           "Resolution", "VideoFile", "validation_messages"]

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_serializer,
                      field_validator)


class Resolution(str, Enum):
    AUTO = "auto"
    P720 = "720p"
    P1080 = "1080p"


class AspectRatio(str, Enum):
    AUTO = "auto"
    PORTRAIT = "9:16"
    LANDSCAPE = "16:9"


class Duration(IntEnum):
    S4 = 4
    S8 = 8
    S12 = 12


class ImageToVideoInput(BaseModel):
    """The endpoint's input. `prompt` and `image_url` are required; `api_key` is an OpenAI key (a secret)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    prompt: str = Field(min_length=1, description="The text prompt describing the video you want to generate")
    image_url: str = Field(min_length=1, description="The URL of the image to use as the first frame")
    resolution: Resolution = Resolution.AUTO
    aspect_ratio: AspectRatio = AspectRatio.AUTO
    duration: Duration = Duration.S4
    api_key: SecretStr | None = Field(default=None, repr=False, description="OpenAI key; fal does not bill if set")

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be blank")
        return value

    @field_validator("duration", mode="before")
    @classmethod
    def _duration_from_str(cls, value: Any) -> Any:
        # the schema lists the enum as strings ("4") but the example sends ints; accept both
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value

    @field_serializer("api_key", when_used="always")
    def _dump_api_key(self, value: SecretStr | None) -> str | None:
        # `to_payload` is the only place the raw key is revealed; plain dumps keep it masked
        return None if value is None else "**********"

    def to_payload(self) -> dict[str, Any]:
        """The JSON body for the submit call (reveals `api_key`; never log the result)."""
        body: dict[str, Any] = {
            "prompt": self.prompt,
            "image_url": self.image_url,
            "resolution": self.resolution.value,
            "aspect_ratio": self.aspect_ratio.value,
            "duration": int(self.duration),
        }
        if self.api_key is not None:
            body["api_key"] = self.api_key.get_secret_value()
        return body


class VideoFile(BaseModel):
    """fal's VideoFile: only `url` is required; fal's toolkit usually leaves the media fields empty."""

    model_config = ConfigDict(extra="allow")

    url: str
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None
    file_data: str | None = Field(default=None, repr=False)
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    duration: float | None = None
    num_frames: int | None = None


class ImageToVideoOutput(BaseModel):
    """The endpoint's output: the generated `video` and, for Sora, the model's `video_id` (which the profile's
    `output.required` makes mandatory there)."""

    model_config = ConfigDict(extra="allow")

    video: VideoFile
    video_id: str | None = None
    #: `x-fal-billable-units` of the result fetch (what fal bills this request by; None when fal did not say)
    _billable_units: float | None = PrivateAttr(default=None)

    @property
    def billable_units(self) -> float | None:
        return self._billable_units


def validation_messages(exc: ValidationError) -> list[str]:
    """One `field: message` line per pydantic error, never echoing the offending value."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ())) or "input"
        lines.append(f"{loc}: {err.get('msg', 'invalid')}")
    return lines
