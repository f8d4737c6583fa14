"""The shipped endpoint profiles (`profiles/*.json`) plus a user's own folder (`SORA_ENDPOINT_PROFILES`), by
endpoint id. `get_profile(id)` fails with the list of known endpoints when the id has no profile."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from pydantic import ValidationError

from .profile import EndpointProfile

PROFILES_DIR = Path(__file__).with_name("profiles")
PROFILES_ENV = "SORA_ENDPOINT_PROFILES"
DEFAULT_ENDPOINT_ID = "fal-ai/sora-2/image-to-video/pro"
_MAX_PROFILE_BYTES = 1024 * 1024


class UnknownEndpoint(ValueError):
    """No profile for this endpoint id (the message lists the known ones)."""


class BadProfile(ValueError):
    """A profile file does not parse or is inconsistent (the message names the file and the field)."""


def file_name(endpoint_id: str) -> str:
    return endpoint_id.strip("/").replace("/", "__") + ".json"


def load_file(path: Path) -> EndpointProfile:
    try:
        if path.stat().st_size > _MAX_PROFILE_BYTES:
            raise BadProfile(f"{path}: over {_MAX_PROFILE_BYTES:,} bytes")
        return EndpointProfile.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        if isinstance(exc, BadProfile):
            raise
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)) \
            if isinstance(exc, ValidationError) else str(exc)
        raise BadProfile(f"endpoint profile {path}: {detail}") from None


def _dirs(extra: str | None) -> list[Path]:
    dirs = [PROFILES_DIR]
    if extra:
        dirs.append(Path(extra).expanduser())
    return dirs


def profile_dirs(env: dict[str, str] | None = None) -> list[Path]:
    """Where profiles come from, later folders overriding earlier ones: the shipped folder, then
    `SORA_ENDPOINT_PROFILES` if set."""
    return _dirs(_extra(env))


def _extra(env: dict[str, str] | None) -> str | None:
    return (os.environ if env is None else env).get(PROFILES_ENV) or None


@functools.lru_cache(maxsize=8)
def _profiles(extra: str | None) -> dict[str, EndpointProfile]:
    found: dict[str, EndpointProfile] = {}
    for folder in _dirs(extra):
        if not folder.is_dir():
            raise BadProfile(f"{PROFILES_ENV}={folder} is not a folder")
        for path in sorted(folder.glob("*.json")):
            profile = load_file(path)
            if path.name != file_name(profile.endpoint_id):
                raise BadProfile(f"{path}: holds {profile.endpoint_id}, so it must be named "
                                 f"{file_name(profile.endpoint_id)}")
            found[profile.endpoint_id] = profile  # a user's folder overrides a shipped profile
    return found


def profiles(env: dict[str, str] | None = None) -> dict[str, EndpointProfile]:
    """Every known profile by endpoint id."""
    return dict(_profiles(_extra(env)))


def known_endpoints(env: dict[str, str] | None = None) -> list[str]:
    return sorted(profiles(env))


def get_profile(endpoint_id: str | None = None, env: dict[str, str] | None = None) -> EndpointProfile:
    endpoint_id = (endpoint_id or DEFAULT_ENDPOINT_ID).strip().strip("/")
    known = _profiles(_extra(env))  # the cached mapping itself: this runs for every request key and submit
    if endpoint_id not in known:
        raise UnknownEndpoint(f"no profile for endpoint {endpoint_id!r}; known endpoints: {', '.join(sorted(known))} "
                              f"(add one with `python -m sora_pipeline.endpoints refresh {endpoint_id} --mapping …`, "
                              f"see docs/endpoints.md)")
    return known[endpoint_id]
