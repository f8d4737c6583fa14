"""What the simulator makes of a submit body, by the endpoint's profile: the 422 details fal's validation would
answer, the stored payload (defaults filled, secrets dropped), and the shape of the video to make (first-frame
image, output height, aspect ratio, seconds)."""

from __future__ import annotations

from typing import Any

from sora_pipeline.endpoints import EndpointProfile
from sora_pipeline.endpoints.profile import wire_value


def problems(profile: EndpointProfile, body: Any) -> list[dict[str, Any]]:
    """fal's 422 `detail` list for a body the endpoint refuses (empty when it accepts it)."""
    return [{"loc": ["body", field], "msg": msg, "type": kind} for field, msg, kind in profile.payload_problems(body)]


def accepted_payload(profile: EndpointProfile, body: dict[str, Any]) -> dict[str, Any]:
    """The input as the endpoint runs it: defaults filled in, mapped fields in the declared type, no secrets."""
    props = profile.input.properties
    payload = {name: spec.default for name, spec in props.items() if spec.default is not None}
    payload.update(body)
    for name in profile.secret_inputs:
        payload.pop(name, None)
    for concept in ("resolution", "aspect_ratio", "duration"):
        found = profile.field_for(concept)
        if found is not None and payload.get(found[0]) is not None:
            payload[found[0]] = wire_value(found[1], payload[found[0]])
    return payload


def video_shape(profile: EndpointProfile, payload: dict[str, Any]) -> tuple[str, str, str, float]:
    """(image_url, resolution label like "720p", aspect ratio or "auto", seconds) of the clip to make."""
    def concept(name: str) -> Any:
        found = profile.field_for(name)
        raw = payload.get(found[0]) if found else None
        value, _ = profile.catalog_value(name, raw)
        return value

    height = profile.height_of(concept("resolution"))
    aspect = concept("aspect_ratio") or "auto"  # no aspect input: follow the image, as the models do
    seconds = profile.seconds_of(concept("duration"))
    return payload[profile.catalog_mapping["image"]], f"{height}p", str(aspect), seconds


def asked(profile: EndpointProfile, payload: dict[str, Any]) -> tuple[str, str, str]:
    """(duration, resolution, aspect_ratio) as the request asked for them ("-": the endpoint has no such input)."""
    def shown(concept: str) -> str:
        found = profile.field_for(concept)
        return "-" if found is None else str(payload.get(found[0], "-"))

    return shown("duration"), shown("resolution"), shown("aspect_ratio")


def describe(profile: EndpointProfile, payload: dict[str, Any]) -> str:
    """One log line: the model and what it was asked for."""
    duration, res, aspect = asked(profile, payload)
    return f"Starting {profile.title} ({duration}s, resolution={res}, aspect_ratio={aspect})"
