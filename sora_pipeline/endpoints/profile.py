"""One fal endpoint's profile: what it accepts (its input schema, reduced from fal's OpenAPI document), how the
catalog's columns map onto its inputs, what it returns, what it costs and what videos it makes. Profiles are data
(`profiles/*.json`); this module reads them and applies them: catalog values → endpoint values (with the allowed
values in every refusal), the submit payload, its validation before spend, extra `params`, and prices. Every
free-text input is capped: by its `maxLength`, else by `DEFAULT_MAX_TEXT_CHARS` (URL inputs and enums are not
free text: images are capped by their bytes)."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

CONCEPTS = ("prompt", "image", "end_image", "resolution", "aspect_ratio", "duration", "openai_api_key")
_HEIGHT = re.compile(r"^(\d{3,4})[pP]$")
_SECONDS = re.compile(r"^\s*(\d{1,4})\s*s\s*$")
MAX_PARAMS_JSON = 16 * 1024  # characters of a catalog row's `params` JSON
DEFAULT_MAX_TEXT_CHARS = 5000  # a free-text input whose fal document gives no maxLength (Sora 2's prompt cap)
_URL_SUFFIXES = ("_url", "_uri", "_urls", "_uris")


class Source(BaseModel):
    model_config = ConfigDict(extra="allow")
    what: str
    url: str
    retrieved: str
    note: str | None = None


class FieldSpec(BaseModel):
    """One input property (a JSON Schema subset)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    type: Literal["string", "integer", "number", "boolean", "array", "object"] | None = None
    enum: list[Any] | None = None
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = Field(default=None, alias="minLength")
    max_length: int | None = Field(default=None, alias="maxLength")
    description: str | None = None
    _default_cap: int | None = PrivateAttr(default=None)  # set by the profile for free text without maxLength

    @property
    def text_cap(self) -> int | None:
        """The most characters a string value may have (None: no cap)."""
        return self.max_length if self.max_length is not None else self._default_cap

    def problem(self, value: Any) -> str | None:
        """Why `value` is not acceptable, or None. Never echoes long values."""
        if value is None:
            return None
        if self.enum is not None:  # as lax as fal's pydantic: 8 and "8" both pass an integer enum
            ok = any(_lax_equal(e, value) for e in self.enum)
            return None if ok else f"{_show(value)} is not one of {allowed_text(self.enum)}"
        kind = self.type
        ok = {"string": isinstance(value, str), "boolean": isinstance(value, bool),
              "integer": isinstance(value, int) and not isinstance(value, bool),
              "number": isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(float(value)),
              "array": isinstance(value, list), "object": isinstance(value, dict), None: True}[kind]
        if not ok:
            return f"{_show(value)} is not a{'n' if kind in ('integer', 'array', 'object') else ''} {kind}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                return f"{_show(value)} is below the minimum {self.minimum:g}"
            if self.maximum is not None and value > self.maximum:
                return f"{_show(value)} is above the maximum {self.maximum:g}"
        if isinstance(value, str):
            if self.min_length is not None and len(value) < self.min_length:
                return f"must have at least {self.min_length} characters"
            if self.text_cap is not None and len(value) > self.text_cap:
                return f"must have at most {self.text_cap} characters"
        return None


class InputSchema(BaseModel):
    model_config = ConfigDict(extra="ignore")
    required: list[str] = Field(default_factory=list)
    properties: dict[str, FieldSpec]


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="ignore")
    video_field: str = "video"
    id_field: str | None = None
    required: list[str] = Field(default_factory=list)
    properties: list[str] = Field(default_factory=list)


class Pricing(BaseModel):
    """USD per generated second by the endpoint's resolution value (`*`: any), per video by duration value, or per
    1,000 tokens (Seedance: tokens = height × width × seconds × `token_fps` / 1024). `audio_input` names the
    endpoint's audio switch (e.g. `generate_audio`); `per_second_audio` is the per-second price when it is on."""

    model_config = ConfigDict(extra="ignore")
    unit: Literal["second", "video", "token"] = "second"
    per_second: dict[str, float] = Field(default_factory=dict)
    per_second_audio: dict[str, float] = Field(default_factory=dict)
    audio_input: str | None = None
    per_video: dict[str, float] = Field(default_factory=dict)
    per_1k_tokens: float | None = None
    token_fps: float = 24.0
    auto_tier: str | None = None
    currency: str = "USD"


class VideoSpec(BaseModel):
    """What the endpoint's videos look like (the simulator makes them so; estimates use it)."""

    model_config = ConfigDict(extra="ignore")
    auto_resolution: str | None = None
    auto_aspect_ratio: str = "16:9"
    heights: dict[str, int] = Field(default_factory=lambda: {"*": 720})
    fps: float = 24.0
    latency_s: float = 120.0
    fixed_duration: int | None = None  # when the endpoint has no duration input
    default_duration: int | None = None  # sent when the catalog gives none and fal's default is not whole seconds


class EndpointProfile(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    endpoint_id: str
    title: str
    sources: list[Source] = Field(default_factory=list)
    input: InputSchema
    secret_inputs: list[str] = Field(default_factory=list)
    catalog_mapping: dict[str, str | None]
    output: OutputSpec = Field(default_factory=OutputSpec)
    pricing: Pricing
    video: VideoSpec = Field(default_factory=VideoSpec)
    unconfirmed: list[str] = Field(default_factory=list)  # what fal's public documents did not say

    @model_validator(mode="after")
    def _consistent(self) -> EndpointProfile:
        props = self.input.properties
        for concept in ("prompt", "image"):
            if not self.catalog_mapping.get(concept):
                raise ValueError(f"catalog_mapping.{concept} is required")
        for concept, name in self.catalog_mapping.items():
            if concept not in CONCEPTS:
                raise ValueError(f"catalog_mapping: unknown concept {concept!r} (known: {', '.join(CONCEPTS)})")
            if name is not None and name not in props:
                raise ValueError(f"catalog_mapping.{concept} names {name!r}, which is not an input")
        for name, spec in props.items():
            if spec.enum is not None and spec.default is not None and spec.default not in spec.enum:
                raise ValueError(f"input {name}: default {spec.default!r} is not in its enum")
        pricing = self.pricing
        if not pricing.per_second and not pricing.per_video and pricing.per_1k_tokens is None:
            raise ValueError("pricing needs per_second, per_video or per_1k_tokens")
        if pricing.unit == "token" and pricing.per_1k_tokens is None:
            raise ValueError("pricing.unit token needs per_1k_tokens")
        if pricing.audio_input is not None and props.get(pricing.audio_input, FieldSpec()).type != "boolean":
            raise ValueError(f"pricing.audio_input names {pricing.audio_input!r}, which is not a boolean input")
        for name, spec in props.items():
            free_text = spec.type == "string" and spec.enum is None and spec.max_length is None
            images = (self.catalog_mapping["image"], self.catalog_mapping.get("end_image"))
            if free_text and name not in images and not name.lower().endswith(_URL_SUFFIXES):
                spec._default_cap = DEFAULT_MAX_TEXT_CHARS
        return self

    # ---- the catalog's concepts on this endpoint -------------------------------------------------------------
    def field_for(self, concept: str) -> tuple[str, FieldSpec] | None:
        name = self.catalog_mapping.get(concept)
        return (name, self.input.properties[name]) if name else None

    def text_cap(self, name: str) -> int | None:
        """The most characters input `name` takes (its maxLength, else the default for free text; None: no cap)."""
        spec = self.input.properties.get(name)
        return spec.text_cap if spec is not None else None

    def text_problem(self, concept: str, value: Any) -> str | None:
        """Why a catalog text (the prompt) is too long for this endpoint, or None; never echoes the text."""
        found = self.field_for(concept)
        cap = found[1].text_cap if found else None
        if cap is None or not isinstance(value, str) or len(value) <= cap:
            return None
        return f"is {len(value):,} characters, over the {cap:,} that {self.endpoint_id} accepts"

    def allowed(self, concept: str) -> list[Any] | None:
        """The endpoint's allowed values for a catalog concept (None: free, or no such input)."""
        found = self.field_for(concept)
        if found is None or found[1].enum is None:
            return None
        values = [_as_catalog(concept, v) for v in found[1].enum]
        return [v for v in values if isinstance(v, int)] if concept == "duration" else values

    def default(self, concept: str) -> Any:
        found = self.field_for(concept)
        if found is None:
            return self.video.fixed_duration if concept == "duration" else None
        value = _as_catalog(concept, found[1].default)
        if concept == "duration" and value is not None and not isinstance(value, int):
            return self.video.default_duration  # fal's default is not whole seconds (Seedance's "auto")
        if concept == "duration" and value is None:
            return self.video.default_duration
        return value

    def audio_on(self, params: dict[str, Any] | None) -> bool | None:
        """Whether a request with these `params` makes sound (the audio switch's value, else its default); None
        when the endpoint has no audio switch."""
        name = self.pricing.audio_input
        if name is None:
            return None
        value = (params or {}).get(name, self.input.properties[name].default)
        return bool(value) if value is not None else False

    def catalog_value(self, concept: str, value: Any) -> tuple[Any, str | None]:
        """A catalog cell (already plain: str for resolution/aspect_ratio, int for duration, or None) → the
        value to record for this endpoint, or a reason naming the allowed values."""
        found = self.field_for(concept)
        if value is None:
            return self.default(concept), None
        if found is None:
            if concept == "duration" and value == self.video.fixed_duration:
                return value, None
            if concept in ("resolution", "aspect_ratio") and str(value).strip().lower() == "auto":
                return None, None
            return None, f"{_show(value)}: {self.endpoint_id} has no {concept} input (leave it empty)"
        name, spec = found
        if spec.enum is None:
            wire = wire_value(spec, value)
            why = spec.problem(wire)
            return (None, why) if why else (_as_catalog(concept, wire), None)
        for candidate in spec.enum:
            if _same(candidate, value):
                return _as_catalog(concept, candidate), None
        return None, self.refusal(concept, value)

    def refusal(self, concept: str, value: Any) -> str:
        """The one-line reason a catalog value is refused, naming what this endpoint accepts."""
        allowed = self.allowed(concept)
        if allowed is None:
            return f"{_show(value)} is not accepted by {self.endpoint_id}"
        return f"{_show(value)} is not one of {allowed_text(allowed)} (the values {self.endpoint_id} accepts)"

    def validate_params(self, params: Any) -> tuple[dict[str, Any], str | None]:
        """The `params` column: a JSON object of extra inputs, each an input of this endpoint that no catalog
        column maps to and that is not a secret, each value valid for it."""
        if params is None:
            return {}, None
        if not isinstance(params, dict):
            return {}, "must be a JSON object"
        mapped = {n for n in self.catalog_mapping.values() if n}
        for key, value in params.items():
            spec = self.input.properties.get(key)
            if spec is None:
                extra = sorted(set(self.input.properties) - mapped - set(self.secret_inputs))
                return {}, (f"{_show(key)} is not an input of {self.endpoint_id} "
                            f"(extra inputs: {', '.join(extra) or 'none'})")
            if key in self.secret_inputs:
                return {}, f"{key!r} is a secret input: set it in the environment, never in the catalog"
            if key in mapped:
                concept = next(c for c, n in self.catalog_mapping.items() if n == key)
                return {}, f"{key!r} comes from the catalog's {concept} column, not from params"
            why = spec.problem(value)
            if why:
                return {}, f"{key}: {why}"
        return dict(params), None

    # ---- the request -----------------------------------------------------------------------------------------
    def payload(self, *, prompt: str, image_url: str, resolution: Any = None, aspect_ratio: Any = None,
                duration: Any = None, params: dict[str, Any] | None = None,
                secrets: dict[str, str | None] | None = None, end_image_url: str | None = None) -> dict[str, Any]:
        """The submit body (reveals secrets; never log it). `end_image_url`: the last frame, where the endpoint
        takes one (`catalog_mapping.end_image`)."""
        body: dict[str, Any] = {self.catalog_mapping["prompt"]: prompt, self.catalog_mapping["image"]: image_url}
        if end_image_url is not None:
            found = self.field_for("end_image")
            if found is None:
                raise ValueError(f"{self.endpoint_id} takes no end frame (leave end_image_uri empty)")
            body[found[0]] = end_image_url
        for concept, value in (("resolution", resolution), ("aspect_ratio", aspect_ratio), ("duration", duration)):
            found = self.field_for(concept)
            if found is None:
                continue
            value = self.default(concept) if value is None else value
            if value is not None:
                body[found[0]] = wire_value(found[1], value)
        body.update(params or {})
        for concept, secret in (secrets or {}).items():
            found = self.field_for(concept)
            if found is not None and secret is not None:
                body[found[0]] = secret
        return body

    def payload_problems(self, body: Any) -> list[tuple[str, str, str]]:
        """(field, message, pydantic-style error type) for everything the endpoint would refuse with a 422:
        missing required inputs, unknown inputs, wrong types, values outside an enum or a range."""
        if not isinstance(body, dict):
            return [("body", "Input should be a JSON object", "model_type")]
        problems = [(name, "Field required", "missing") for name in self.input.required if body.get(name) is None]
        for name, value in body.items():
            spec = self.input.properties.get(name)
            if spec is None:
                problems.append((name, "Extra inputs are not permitted", "extra_forbidden"))
            elif name in self.input.required and isinstance(value, str) and not value.strip():
                problems.append((name, "must not be blank", "value_error"))
            elif (why := spec.problem(value)) is not None:
                kind = "enum" if spec.enum is not None else "value_error"
                problems.append((name, why if name not in self.secret_inputs else "invalid", kind))
        return problems

    # ---- media -----------------------------------------------------------------------------------------------
    def seconds_of(self, duration: Any) -> float:
        d = self.default("duration") if duration is None else duration
        if isinstance(d, str) and not d.strip().isdigit():  # fal's "auto": the model picks; taken as the default
            d = self.video.default_duration
        return float(d) if d is not None else float(self.video.fixed_duration or 0)

    def height_of(self, resolution: Any) -> int:
        """Output height for a recorded resolution value (`auto`: the profile's auto_resolution)."""
        heights = self.video.heights
        r = resolution if resolution not in (None, "auto") else (self.video.auto_resolution or "*")
        if r in heights:
            return heights[r]
        if m := _HEIGHT.match(str(r)):
            return int(m.group(1))
        return heights.get("*", max(heights.values()))


def allowed_text(values: list[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _lax_equal(candidate: Any, value: Any) -> bool:
    if isinstance(candidate, bool) or isinstance(value, bool):
        return candidate is value
    if isinstance(candidate, int) and isinstance(value, str):
        return value.strip().lstrip("-").isdigit() and int(value.strip()) == candidate
    return type(candidate) is type(value) and candidate == value or (
        isinstance(candidate, (int, float)) and isinstance(value, (int, float)) and candidate == value)


def _same(candidate: Any, value: Any) -> bool:
    if isinstance(candidate, str):
        if isinstance(value, str):
            return candidate == value or candidate.lower() == value.strip().lower()
        if isinstance(value, int) and not isinstance(value, bool):
            return candidate == str(value) or _with_unit(candidate) == value
        return False
    if isinstance(candidate, bool) or isinstance(value, bool):
        return False
    if isinstance(candidate, (int, float)) and isinstance(value, (int, float)):
        return candidate == value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return candidate == int(value.strip())
    return False


def _with_unit(text: str) -> int | None:
    """8 for "8s" (a duration written with its unit), else None."""
    m = _SECONDS.match(text)
    return int(m.group(1)) if m else None


def wire_value(spec: FieldSpec, value: Any) -> Any:
    """A recorded value in the type the endpoint declares ("5" for a string enum, "8s" where the enum writes the
    unit, 4 for an integer one)."""
    if spec.enum and isinstance(value, int) and not isinstance(value, bool):
        for candidate in spec.enum:
            if isinstance(candidate, str) and _same(candidate, value):
                return candidate
    kinds = {type(e) for e in spec.enum or ()} or ({str} if spec.type == "string" else
                                                    {int} if spec.type == "integer" else set())
    if kinds == {str} and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if kinds == {int} and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if spec.enum:
        for candidate in spec.enum:
            if _same(candidate, value):
                return candidate
    return value


def _as_catalog(concept: str, value: Any) -> Any:
    """An endpoint value as the catalog records it: durations are whole seconds (int), others strings."""
    if value is None:
        return None
    if concept == "duration":
        if isinstance(value, str):
            digits = value.strip().rstrip("s")
            return int(digits) if digits.isdigit() else value
        return int(value) if isinstance(value, (int, float)) and float(value).is_integer() else value
    return value
