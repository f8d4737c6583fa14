"""Is the day's endpoint still served? At the start of a day the pipeline asks fal's model registry
(`GET {platform}/models?endpoint_id=…`, no key needed) once per endpoint and run:

- listed `active`: proceed;
- listed `deprecated`: proceed, with a warning in the run and in the day's metadata;
- absent (fal no longer lists it): the endpoint's rows are rejected before anything is planned or paid, each with
  one line naming the endpoint and what fal answered;
- the registry cannot be asked (unreachable, an error): proceed, and say so.

No dagster here: the generations asset calls `check_endpoint` and `rejected_outcomes`."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Literal

from sora_pipeline.generation.records import Outcome, WorkItem

State = Literal["active", "deprecated", "absent", "unknown"]
ERROR_TYPE = "endpoint_not_served"
_cache: dict[tuple[str, str, str], EndpointStatus] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class EndpointStatus:
    """What fal's registry said of one endpoint; `line` is the one line for people."""

    endpoint_id: str
    state: State
    line: str

    @property
    def refused(self) -> bool:
        return self.state == "absent"

    def metadata(self) -> dict[str, str]:
        return {"endpoint_status": self.state, "endpoint_status_detail": self.line}


def _registry_url(url: str, endpoint_id: str) -> str:
    return f"{url.rstrip('/')}/models?endpoint_id={endpoint_id}"


def status_of(endpoint_id: str, models: list[dict[str, Any]], url: str) -> EndpointStatus:
    """The status of `endpoint_id` in the registry's answer `models` (PlatformClient.models)."""
    asked = _registry_url(url, endpoint_id)
    entry = next((m for m in models if m.get("endpoint_id") == endpoint_id), None)
    if entry is None:
        return EndpointStatus(endpoint_id, "absent", (
            f"endpoint {endpoint_id} is not served by fal any more: fal's model registry ({asked}) does not list it; "
            f"its rows were rejected before any spend (pick another endpoint with SORA_ENDPOINT_ID)"))
    status = str(((entry.get("metadata") or {}).get("status")) or "active").strip().lower()
    if status == "deprecated":
        return EndpointStatus(endpoint_id, "deprecated", (
            f"endpoint {endpoint_id} is deprecated at fal (its model registry says status=deprecated): "
            f"the day runs, but plan a move to another endpoint"))
    return EndpointStatus(endpoint_id, "active", f"endpoint {endpoint_id} is listed by fal's model registry "
                                                 f"(status={status})")


def check_endpoint(url: str, endpoint_id: str, *, run_id: str = "", timeout: float = 10.0,
                   client_factory: Callable[..., Any] | None = None) -> EndpointStatus:
    """Ask fal's registry at `url` (e.g. https://api.fal.ai/v1) about `endpoint_id`, once per run (`run_id`)."""
    key = (url, endpoint_id, run_id)
    with _lock:
        if key in _cache:
            return _cache[key]
    if client_factory is None:
        from sora_pipeline.fal.platform import PlatformClient
        from sora_pipeline.fal.policies import RetryPolicy

        def client_factory(u: str) -> Any:
            return PlatformClient(u, None, timeout=timeout,
                                  retry=RetryPolicy(max_attempts=2, initial_delay=0.5, max_delay=2.0,
                                                    total_timeout=max(timeout * 2, 5.0)))
    try:
        with client_factory(url) as client:
            found = status_of(endpoint_id, client.models([endpoint_id]), url)
    except Exception as exc:  # unreachable, an HTTP error, a malformed answer: never stops the day
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        found = EndpointStatus(endpoint_id, "unknown", (
            f"fal's model registry could not be asked about {endpoint_id} ({_registry_url(url, endpoint_id)}: "
            f"{reason}); proceeding without the check"))
    with _lock:
        if found.state != "unknown":  # an unanswered question is asked again next time
            _cache[key] = found
    return found


def rejected_outcomes(items: list[WorkItem], status: EndpointStatus, backend: str) -> list[Outcome]:
    """One failed outcome per row of an endpoint fal no longer serves (nothing planned, nothing paid)."""
    return [Outcome(item_id=i.item_id, request_key=None, resolution=str(i.resolution or ""),
                    aspect_ratio=str(i.aspect_ratio or ""), requested_duration=int(i.duration or 0),
                    endpoint_id=status.endpoint_id, backend=backend, status="failed", decision="rejected",
                    error_type=ERROR_TYPE, error_message=status.line, retryable=False, estimated_cost=0.0)
            for i in items]


def split_served(items: list[WorkItem], statuses: dict[str, EndpointStatus], default_endpoint: str,
                 backend: str) -> tuple[list[WorkItem], list[Outcome]]:
    """The items whose endpoint fal still serves (or could not be asked about), and one rejected outcome per item
    of an endpoint it no longer lists."""
    run, rejected = [], []
    for item in items:
        status = statuses.get(item.endpoint_id or default_endpoint)
        if status is not None and status.refused:
            rejected.extend(rejected_outcomes([item], status, backend))
        else:
            run.append(item)
    return run, rejected


def statuses_metadata(statuses: dict[str, EndpointStatus]) -> dict[str, str]:
    """The day's endpoint statuses for its metadata: one endpoint's as it is; several as `id: state` lines."""
    if len(statuses) == 1:
        return next(iter(statuses.values())).metadata()
    return {"endpoint_status": "; ".join(f"{e}: {s.state}" for e, s in sorted(statuses.items())),
            "endpoint_status_detail": "\n".join(s.line for _, s in sorted(statuses.items()))}

