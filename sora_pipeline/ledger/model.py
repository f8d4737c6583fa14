"""Value types of the ledger: request keys, states, decisions, specs, entries and the resubmit policy."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from sora_pipeline.coordination.errors import LedgerError
from sora_pipeline.endpoints import UnknownEndpoint, get_profile

KEY_VERSION = 1
BACKENDS = ("fal", "simulator")  # what answered: the real fal account, or a simulator (embedded or standalone)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class RequestState(str, Enum):
    PLANNED = "planned"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


class Decision(str, Enum):
    """What `Ledger.claim` tells the caller to do."""

    REUSE = "reuse"  # completed: use the stored output, do not submit
    RESUME = "resume"  # submitted: poll the recorded request id
    SUBMIT = "submit"  # the caller won the claim: state is SUBMITTING under a new attempt number
    SKIP_UNKNOWN = "skip_unknown"  # a submit may have been sent without a recorded id: needs a human
    SKIP_FAILED = "skip_failed"  # not retryable, or the attempt cap is reached
    BUSY = "busy"  # another live owner is submitting: wait and claim again
    SKIP_BUDGET = "skip_budget"  # a submit would cross the day's budget (counted in the claim's transaction)


class LedgerConflict(LedgerError):
    """A transition was refused because the request moved on (stale attempt or unexpected state).

    `recorded` is True when the facts were still written to the attempt's own history row (e.g. the request id of
    a stale attempt): that attempt is no longer the current one, and the caller may want to cancel its request.
    """

    def __init__(self, message: str, *, recorded: bool = False) -> None:
        super().__init__(message)
        self.recorded = recorded


class RequestNotPlanned(LedgerError, KeyError):
    """`claim` or a `mark_*` call named a request key that was never planned."""

    def __str__(self) -> str:  # KeyError's str() would add quotes
        return str(self.args[0]) if self.args else "request not planned"


def _plain(value: Any) -> Any:
    value = value.value if isinstance(value, Enum) else value
    if isinstance(value, str):
        value = value.strip()
        return int(value) if value.isdigit() else value
    return value


def normalized_spec(
    endpoint_id: str, *, item_id: str, prompt: str, resolution: Any, aspect_ratio: Any, duration: Any,
    image_sha256: str, params: dict[str, Any] | None = None, end_image_sha256: str | None = None,
) -> dict[str, Any]:
    """The normalized fields a request key is computed from (no secrets; validated against the endpoint's profile
    when it has one). `params` (extra endpoint inputs) count only when there are some, so the keys of requests
    without them are the keys ledgers have always held."""
    prompt_n = str(prompt).strip()
    if not prompt_n:
        raise ValueError("prompt must not be blank")
    sha = str(image_sha256).strip().lower()
    if not _SHA256_RE.match(sha):
        raise ValueError("image_sha256 must be 64 hex characters")
    endpoint = str(endpoint_id).strip()
    if not endpoint:
        raise ValueError("endpoint_id must not be blank")
    try:
        profile = get_profile(endpoint)
    except UnknownEndpoint:
        profile = None
    values = {"resolution": _plain(resolution), "aspect_ratio": _plain(aspect_ratio), "duration": _plain(duration)}
    values["resolution"] = None if values["resolution"] is None else str(values["resolution"])
    values["aspect_ratio"] = None if values["aspect_ratio"] is None else str(values["aspect_ratio"])
    if profile is not None:
        for concept, value in values.items():
            values[concept], why = profile.catalog_value(concept, value)
            if why:
                raise ValueError(f"{concept}: {why}")
        if params:
            params, why = profile.validate_params(params)
            if why:
                raise ValueError(f"params: {why}")
    if values["duration"] is not None and not isinstance(values["duration"], int):
        raise ValueError(f"duration must be whole seconds, not {values['duration']!r}")
    fields = {"endpoint_id": endpoint, "item_id": str(item_id), "prompt": prompt_n, **values, "image_sha256": sha}
    if params:
        fields["params"] = json.loads(json.dumps(params, sort_keys=True))
    if end_image_sha256 is not None:  # an end frame counts only when there is one: older keys stay as they were
        end = str(end_image_sha256).strip().lower()
        if not _SHA256_RE.match(end):
            raise ValueError("end_image_sha256 must be 64 hex characters")
        fields["end_image_sha256"] = end
    return fields


def simulator_key(spec: dict[str, Any]) -> str:
    """The key of a request answered by a simulator, from its stored spec (schema 2 re-keyed the simulator rows of
    older ledgers with it: `sora_pipeline.coordination.schema`)."""
    fields = {k: spec[k] for k in ("item_id", "prompt", "resolution", "aspect_ratio", "duration", "image_sha256")}
    return request_key(spec["endpoint_id"], **fields, backend="simulator")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    return backend


def request_key(
    endpoint_id: str, *, item_id: str, prompt: str, resolution: str, aspect_ratio: str, duration: int,
    image_sha256: str, backend: str = "fal", params: dict[str, Any] | None = None,
    end_image_sha256: str | None = None,
) -> str:
    """sha256 hex of the canonical JSON of the normalized request fields. There is deliberately no key parameter.

    The backend is part of the key: a simulator's result is never reused as fal's, nor fal's for the simulator.
    fal's keys leave it out (they are the keys ledgers have always held); the simulator's carry it."""
    fields = normalized_spec(
        endpoint_id, item_id=item_id, prompt=prompt, resolution=resolution, aspect_ratio=aspect_ratio,
        duration=duration, image_sha256=image_sha256, params=params, end_image_sha256=end_image_sha256,
    )
    fields["key_version"] = KEY_VERSION
    if check_backend(backend) != "fal":  # fal's keys stay what they always were: no paid result is orphaned
        fields["backend"] = backend
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RequestSpec:
    """One planned request. Build it with `RequestSpec.create` so the key always matches the fields."""

    request_key: str
    item_id: str
    day: str
    endpoint_id: str
    prompt: str
    resolution: str
    aspect_ratio: str
    duration: int
    image_sha256: str
    used_openai_key: bool
    estimated_cost: float
    backend: str = "fal"
    params: dict[str, Any] | None = None  # extra endpoint inputs (the catalog's `params`); part of the key
    end_image_sha256: str | None = None  # the end frame's hash (the catalog's `end_image_uri`); in the key if set

    @classmethod
    def create(
        cls, endpoint_id: str, *, item_id: str, day: str, prompt: str, resolution: Any, aspect_ratio: Any,
        duration: Any, image_sha256: str, used_openai_key: bool, estimated_cost: float, backend: str = "fal",
        params: dict[str, Any] | None = None, end_image_sha256: str | None = None,
    ) -> RequestSpec:
        n = normalized_spec(
            endpoint_id, item_id=item_id, prompt=prompt, resolution=resolution, aspect_ratio=aspect_ratio,
            duration=duration, image_sha256=image_sha256, params=params, end_image_sha256=end_image_sha256,
        )
        key = request_key(
            endpoint_id, item_id=item_id, prompt=prompt, resolution=resolution, aspect_ratio=aspect_ratio,
            duration=duration, image_sha256=image_sha256, backend=backend, params=params,
            end_image_sha256=end_image_sha256,
        )
        return cls(
            request_key=key, item_id=n["item_id"], day=str(day), endpoint_id=n["endpoint_id"], prompt=n["prompt"],
            resolution=n["resolution"], aspect_ratio=n["aspect_ratio"], duration=n["duration"],
            image_sha256=n["image_sha256"], used_openai_key=bool(used_openai_key),
            estimated_cost=float(estimated_cost), backend=backend, params=n.get("params"),
            end_image_sha256=n.get("end_image_sha256"),
        )

    def spec_json(self) -> dict[str, Any]:
        """The normalized input without secrets, plus `used_openai_key`; raises if the key does not match."""
        n = normalized_spec(
            self.endpoint_id, item_id=self.item_id, prompt=self.prompt, resolution=self.resolution,
            aspect_ratio=self.aspect_ratio, duration=self.duration, image_sha256=self.image_sha256,
            params=self.params, end_image_sha256=self.end_image_sha256,
        )
        expected = request_key(
            self.endpoint_id, item_id=self.item_id, prompt=self.prompt, resolution=self.resolution,
            aspect_ratio=self.aspect_ratio, duration=self.duration, image_sha256=self.image_sha256,
            backend=self.backend, params=self.params, end_image_sha256=self.end_image_sha256,
        )
        if expected != self.request_key:
            raise ValueError(f"request_key of item {self.item_id!r} does not match its fields")
        return n | {"used_openai_key": bool(self.used_openai_key), "backend": self.backend}


@dataclass(frozen=True)
class ResubmitPolicy:
    """How `claim` treats earlier attempts. `max_attempts` counts every attempt, the first included."""

    max_attempts: int = 3
    resubmit_unknown: bool = False
    regenerate: bool = False
    submit_lease_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.submit_lease_seconds <= 0:
            raise ValueError("submit_lease_seconds must be > 0")


@dataclass(frozen=True)
class AttemptRecord:
    """One row of an attempt's history."""

    request_key: str
    attempt: int
    state: RequestState
    owner: str | None
    estimated_cost: float | None
    request_id: str | None
    status_url: str | None
    response_url: str | None
    cancel_url: str | None
    submitted_at: datetime | None
    completed_at: datetime | None
    output: dict[str, Any] | None
    artifacts: dict[str, Any] | None
    error_type: str | None
    error_message: str | None
    retryable: bool | None
    seconds_generated: float | None
    actual_cost: float | None
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class AttemptRef:
    """Which attempt recorded a fal request id (for callbacks that only know the request id)."""

    request_key: str
    attempt: int
    state: RequestState  # state of that attempt's history row
    current: bool  # whether it is still the request's current attempt
    error_type: str | None


@dataclass(frozen=True)
class LedgerEntry:
    """A request row joined with its current attempt (attempt fields are None while only planned)."""

    request_key: str
    item_id: str
    day: str
    endpoint_id: str
    state: RequestState
    attempt: int
    spec: dict[str, Any]
    estimated_cost: float
    created_at: datetime
    updated_at: datetime
    owner: str | None
    claimed_at: datetime | None
    request_id: str | None = None
    status_url: str | None = None
    response_url: str | None = None
    cancel_url: str | None = None
    submitted_at: datetime | None = None
    completed_at: datetime | None = None
    output: dict[str, Any] | None = None
    artifacts: dict[str, Any] | None = None
    error_type: str | None = None
    error_message: str | None = None
    retryable: bool | None = None
    seconds_generated: float | None = None
    actual_cost: float | None = None
    attempt_owner: str | None = None
    attempt_state: RequestState | None = None

    @property
    def used_openai_key(self) -> bool:
        return bool(self.spec.get("used_openai_key"))

    @property
    def backend(self) -> str:
        return self.spec.get("backend") or "fal"
