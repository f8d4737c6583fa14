"""`EndpointSet`: the endpoints one run may use, resolved once at the edge (the Dagster resource) and passed down.
Rows without an `endpoint_id` use the default (`SORA_ENDPOINT_ID`); a row may name any other endpoint of the set
(every profile known: shipped or from `SORA_ENDPOINT_PROFILES`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .profile import EndpointProfile

#: the longest endpoint id a catalog cell may hold (fal's are under 100 characters)
MAX_ENDPOINT_ID = 200


@dataclass(frozen=True)
class EndpointSet:
    """The default endpoint's profile and every profile a catalog row may pick, by endpoint id."""

    default: EndpointProfile
    profiles: Mapping[str, EndpointProfile] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default.endpoint_id not in self.profiles:
            object.__setattr__(self, "profiles", {**self.profiles, self.default.endpoint_id: self.default})

    @classmethod
    def only(cls, profile: EndpointProfile) -> EndpointSet:
        """Just one endpoint: rows naming another are rejected."""
        return cls(profile, {profile.endpoint_id: profile})

    @property
    def default_id(self) -> str:
        return self.default.endpoint_id

    def __getitem__(self, endpoint_id: str) -> EndpointProfile:
        return self.profiles[endpoint_id]

    def __contains__(self, endpoint_id: object) -> bool:
        return endpoint_id in self.profiles

    def __len__(self) -> int:
        return len(self.profiles)

    def pick(self, cell: Any) -> tuple[EndpointProfile | None, str | None]:
        """A catalog row's `endpoint_id` cell → (its profile, None) or (None, why not). Null or blank → default."""
        if cell is None or (isinstance(cell, float) and cell != cell):
            return self.default, None
        if not isinstance(cell, str):
            return None, f"{type(cell).__name__} is not a string"
        value = cell.strip()
        if not value:
            return self.default, None
        profile = self.profiles.get(value)
        if profile is not None:
            return profile, None
        shown = value if len(value) <= 80 else value[:77] + "..."
        known = ", ".join(sorted(self.profiles))
        return None, (f"{shown!r} is not an endpoint this pipeline has a profile for (known: {known}; add a "
                      "profile file to SORA_ENDPOINT_PROFILES to use another)")

    def given(self, cell: Any) -> str:
        """The endpoint a row asked for, as a table stores it (the default for a null; clipped)."""
        if isinstance(cell, str) and cell.strip():
            return cell.strip()[:MAX_ENDPOINT_ID]
        return self.default_id
