"""The shipped endpoint profiles (`profiles/*.json`) plus a user's own folder (`SORA_ENDPOINT_PROFILES`), by
endpoint id. One reader of a profile file (`read_profile_json`: size cap, JSON object) under the typed loader
(`load_file` → `EndpointProfile`) and the plain-dict one that `refresh` edits and the simulator serves
(`read_profiles`). `load_profiles(extra_dir)` is every profile of the shipped folder and `extra_dir`; the
`env`-taking functions read `SORA_ENDPOINT_PROFILES` from the mapping they are given (the process environment
when given none). `get_profile(id)` fails with the list of known endpoints when the id has no profile."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .profile import EndpointProfile

PROFILES_DIR = Path(__file__).with_name("profiles")
PROFILES_ENV = "SORA_ENDPOINT_PROFILES"
DEFAULT_ENDPOINT_ID = "fal-ai/sora-2/image-to-video/pro"
MAX_PROFILE_BYTES = 1024 * 1024


class UnknownEndpoint(ValueError):
    """No profile for this endpoint id (the message lists the known ones)."""


class BadProfile(ValueError):
    """A profile file does not parse or is inconsistent (the message names the file and the field)."""


def file_name(endpoint_id: str) -> str:
    return endpoint_id.strip("/").replace("/", "__") + ".json"


def read_profile_json(path: Path) -> dict[str, Any]:
    """A profile file as a plain dict: at most `MAX_PROFILE_BYTES`, a JSON object; `BadProfile` otherwise."""
    try:
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise BadProfile(f"{path}: over {MAX_PROFILE_BYTES:,} bytes")
        profile = json.loads(path.read_text(encoding="utf-8"))
    except BadProfile:
        raise
    except (OSError, ValueError) as exc:
        raise BadProfile(f"endpoint profile {path}: {exc}") from None
    if not isinstance(profile, dict):
        raise BadProfile(f"endpoint profile {path}: not a JSON object")
    return profile


def load_file(path: Path) -> EndpointProfile:
    """One profile file, validated."""
    raw = read_profile_json(path)
    try:
        return EndpointProfile.model_validate(raw)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise BadProfile(f"endpoint profile {path}: {detail}") from None


def read_profiles(folder: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Every `*.json` profile of a folder (the shipped ones by default) by endpoint id, as plain dicts (files
    without an `endpoint_id` are skipped)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(folder or PROFILES_DIR).glob("*.json")):
        profile = read_profile_json(path)
        if isinstance(profile.get("endpoint_id"), str):
            found[profile["endpoint_id"]] = profile
    return found


def extra_dir(env: Mapping[str, str] | None = None) -> str | None:
    """`SORA_ENDPOINT_PROFILES` of `env` (None: the process environment), or None when unset."""
    return (os.environ if env is None else env).get(PROFILES_ENV) or None


def profile_dirs(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where profiles come from, later folders overriding earlier ones: the shipped folder, then
    `SORA_ENDPOINT_PROFILES` of `env` if set."""
    return _dirs(extra_dir(env))


def _dirs(extra: str | None) -> list[Path]:
    return [PROFILES_DIR, *([Path(extra).expanduser()] if extra else [])]


@functools.lru_cache(maxsize=8)
def load_profiles(extra: str | None = None) -> dict[str, EndpointProfile]:
    """The typed loader: every profile of the shipped folder and then of the folder `extra` (overriding), by
    endpoint id. Cached per folder: the result is shared, do not change it."""
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


def profiles(env: Mapping[str, str] | None = None) -> dict[str, EndpointProfile]:
    """Every known profile by endpoint id."""
    return dict(load_profiles(extra_dir(env)))


def known_endpoints(env: Mapping[str, str] | None = None) -> list[str]:
    return sorted(load_profiles(extra_dir(env)))


def get_profile(endpoint_id: str | None = None, env: Mapping[str, str] | None = None) -> EndpointProfile:
    endpoint_id = (endpoint_id or DEFAULT_ENDPOINT_ID).strip().strip("/")
    known = load_profiles(extra_dir(env))  # the cached mapping itself: this runs for every request key and submit
    if endpoint_id not in known:
        raise UnknownEndpoint(f"no profile for endpoint {endpoint_id!r}; known endpoints: {', '.join(sorted(known))} "
                              f"(add one with `python -m sora_pipeline.endpoint_tools refresh {endpoint_id} "
                              f"--mapping …`, see docs/endpoints.md)")
    return known[endpoint_id]
