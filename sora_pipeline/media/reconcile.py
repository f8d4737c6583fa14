"""Reconcile the media values the API returned with what probing the MP4 found, and say where each came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MEDIA_FIELDS = ("width", "height", "fps", "num_frames", "duration")
TOLERANCE = {"width": 0, "height": 0, "fps": 0.01, "num_frames": 1, "duration": 0.05}


@dataclass(frozen=True)
class Reconciled:
    values: dict[str, Any]
    source: str  # api | probe | api+probe
    disagreements: list[str] = field(default_factory=list)


def reconcile(api: dict[str, Any] | None, probe: dict[str, Any] | None) -> Reconciled:
    """The probe (what the file really contains) wins where both exist; disagreements are reported.

    `source` is `api` if every value came from the API, `probe` if every value came from the probe, else
    `api+probe` (both present — agreeing or reconciled — or the API filled some fields and the probe the rest)."""
    api, probe = api or {}, probe or {}
    values, from_api, from_probe, disagreements = {}, set(), set(), []
    for name in MEDIA_FIELDS:
        a, p = api.get(name), probe.get(name)
        if p is not None:
            values[name] = p
            from_probe.add(name)
            if a is not None:
                from_api.add(name)
                if abs(float(a) - float(p)) > TOLERANCE[name]:
                    disagreements.append(f"{name}: api says {a}, file has {p}")
        elif a is not None:
            values[name] = a
            from_api.add(name)
        else:
            values[name] = None
    if from_probe and not from_api:
        source = "probe"
    elif from_api and not from_probe:
        source = "api"
    else:
        source = "api+probe"
    return Reconciled(values, source, disagreements)
