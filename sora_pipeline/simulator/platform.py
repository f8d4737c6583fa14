"""The simulator's stand-in for fal's platform API, on its own origin (so `SORA_FAL_API_URL` is `<sim base>/v1`):

- `GET /v1/models/billing-events` (an ADMIN key: `admin_keys`; any other key → 403): one event per job that
  completed (or failed on content policy) — `request_id`, `endpoint_id`, `timestamp` (its end), `output_units`
  (video seconds for per-second prices, 1 per video), `unit_price`, `percent_discount`, `cost_subtotal`,
  `cost_discount`, `cost_total`, `cost_estimate_nano_usd` — shown `billing_lag_seconds` after the job ended,
  discounted by `billing_discount_percent`, the `billing_outlier_job`-th job billed `billing_outlier`× its units, plus
  `billing_foreign_requests` events for ids nobody submitted here. Filters `start`/`end` (end exclusive, at most
  90 days apart), `endpoint_id`, `request_id` (1-50 each, comma-separated or repeated); `limit` up to 10,000.
- `GET /v1/models/requests/by-endpoint` (a key): jobs that ended, by end time (or `sort_by=duration`);
  `expand=payloads` adds `json_input` (the submitted body exactly) and `json_output` (the result's JSON);
  `status` success | error | user_error; `request_id` (one); `limit` 1-100 (default 50).
- `GET /v1/models` (no key needed): the registry — every served endpoint, `metadata.status` "active" or
  "deprecated" (`deprecated_endpoints`); `retired_endpoints` are absent. `endpoint_id` (1-50), `status`,
  `category`, `q`, `expand=openapi-3.0`.
- `GET /v1/models/pricing` lives in `openapi_docs.py` (one implementation).

Listings page with `limit` and an opaque `cursor` (`next_cursor`, `has_more`); errors are fal's
`{"error": {"type", "message"}}`. `routes(...)` returns the Starlette routes; `app.py` wires them."""

from __future__ import annotations

import base64
import bisect
import json
import random
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sora_pipeline.endpoints import EndpointProfile
from sora_pipeline.simulator import endpoint_inputs
from sora_pipeline.simulator.config import SimulatorConfig
from sora_pipeline.simulator.core import _clip_failed
from sora_pipeline.simulator.jobs import Job, JobBook

MAX_VALUES = 50
MAX_BILLING_PAGE, MAX_REQUESTS_PAGE, DEFAULT_REQUESTS_PAGE, DEFAULT_MODELS_PAGE = 10_000, 100, 50, 50
MAX_RANGE = timedelta(days=90)
BILLED_FAILURES = (None, "content_policy_violation")  # what fal bills: a video, or a content-policy refusal
STATUS_CLASSES = {"success": (200, 300), "user_error": (400, 500), "error": (500, 600)}
Gate = Callable[[Request, str], Awaitable[Response | None]]
ResultOf = Callable[[Job, str], tuple[int, Any, dict[str, str]]]


def fal_error(status: int, kind: str, message: str) -> JSONResponse:
    """fal's platform error answer."""
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


def auth_error(config: SimulatorConfig, request: Request, *, admin: bool = False) -> Response | None:
    """401 without a usable key; 403 for a key not accepted here (or, for `admin`, not in `admin_keys`)."""
    if not config.auth_required:
        return None
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme != "Key" or not key:
        return fal_error(401, "authorization_error",
                         "Missing or invalid Authorization header; expected 'Authorization: Key <API key>'")
    admins = config.admin_keys or []
    if admin and key not in admins:
        return fal_error(403, "authorization_error", "This operation requires an admin API key")
    if config.accepted_keys is not None and key not in config.accepted_keys and key not in admins:
        return fal_error(403, "authorization_error", "The provided API key is not authorized")
    return None


# ---- money -------------------------------------------------------------------------------------------------------

def job_price(profile: EndpointProfile, payload: dict[str, Any], submitted: dict[str, Any]) -> tuple[str, float,
                                                                                                      float]:
    """(unit, USD per unit, requested seconds) of an accepted submit, by the profile's prices: per second at the
    requested resolution's tier (`auto`: the auto tier), or per video by duration; 0 with the user's own OpenAI
    key (fal does not bill it)."""
    seconds = endpoint_inputs.video_shape(profile, payload)[3]
    byo = profile.catalog_mapping.get("openai_api_key")
    if byo and submitted.get(byo):
        return profile.pricing.unit, 0.0, seconds
    if profile.pricing.unit == "video":
        tiers = profile.pricing.per_video or {"*": 0.0}
        key = str(int(seconds)) if float(seconds).is_integer() else ""
        return "video", tiers.get(key, tiers.get("*", max(tiers.values()))), seconds
    audio = profile.pricing.audio_input  # the audio switch's own prices when it is on (accepted payload: defaults in)
    table = profile.pricing.per_second_audio if audio and payload.get(audio) and profile.pricing.per_second_audio \
        else profile.pricing.per_second
    tiers = {k.lower(): v for k, v in (table or {"*": 0.0}).items()}
    found = profile.field_for("resolution")
    value, _ = profile.catalog_value("resolution", payload.get(found[0]) if found else None)
    tier = str(value or "auto").lower()
    if tier == "auto":
        tier = (profile.pricing.auto_tier or "").lower()
    return "second", tiers.get(tier, tiers.get("*", max(tiers.values()))), seconds


def billable_units(job: Job) -> float | None:
    """What fal bills a finished job for (its `x-fal-billable-units`); None when it is not billed."""
    if job.price is None or job.state != "COMPLETED" or job.failure not in BILLED_FAILURES:
        return None
    unit, _price, seconds = job.price
    if job.failure is None:
        if job.clip is None or _clip_failed(job.clip) or not job.clip.done():
            return None
        seconds = job.clip.result().duration
    return 1.0 if unit == "video" else float(seconds)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def _event(request_id: str, endpoint_id: str, ts: float, units: float, unit_price: float,
           config: SimulatorConfig) -> dict[str, Any]:
    pct = config.billing_discount_percent
    subtotal = round(units * unit_price, 9)
    discount = round(subtotal * pct / 100, 9)
    total = round(subtotal - discount, 9)
    return {"request_id": request_id, "endpoint_id": endpoint_id, "timestamp": _iso(ts), "output_units": units,
            "unit_price": unit_price, "percent_discount": pct or None, "cost_subtotal": subtotal,
            "cost_discount": discount, "cost_total": total, "cost_estimate_nano_usd": round(total * 1e9)}


def billing_events(book: JobBook, config: SimulatorConfig, now: float) -> list[tuple[float, dict[str, Any]]]:
    """(timestamp, event) of every event visible at wall time `now`."""
    lag, out = config.billing_lag_seconds, []
    for job in book.ended():
        units = billable_units(job)
        if units is None:
            continue
        ts = job.wall_ts(job.finished_at)
        if ts + lag > now:
            continue
        if config.billing_outlier and job.seq == config.billing_outlier_job:
            units *= config.billing_outlier
        out.append((ts, _event(job.id, job.endpoint, ts, units, job.price[1], config)))
    rng = random.Random(f"sora-sim-foreign:{config.seed}")
    for i in range(config.billing_foreign_requests):
        rid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        ts = book.started_wall + i / 1000
        if ts + lag <= now and config.endpoint_ids:
            endpoint = config.endpoint_ids[i % len(config.endpoint_ids)]
            pricing = book.profiles[endpoint].pricing
            price = min([*pricing.per_second.values(), *pricing.per_video.values()] or [0.0])
            out.append((ts, _event(rid, endpoint, ts, 4.0, price, config)))
    return out


# ---- query parameters ---------------------------------------------------------------------------------------------

class BadQuery(Exception):
    """A parameter fal would refuse (400 validation_error)."""


def _values(request: Request, name: str) -> list[str]:
    return list(dict.fromkeys(v.strip() for raw in request.query_params.getlist(name) for v in raw.split(",")
                              if v.strip()))


def _multi(request: Request, name: str, required: bool = False) -> list[str]:
    values = _values(request, name)
    if (required and not values) or len(values) > MAX_VALUES:
        raise BadQuery(f"{name}: give 1 to {MAX_VALUES} values")
    return values


def _limit(request: Request, default: int, most: int, clamp: bool) -> int:
    raw = request.query_params.get("limit")
    try:
        limit = default if raw is None else int(raw)
    except ValueError:
        raise BadQuery("limit must be an integer") from None
    if limit < 1 or (limit > most and not clamp):
        raise BadQuery(f"limit must be between 1 and {most}")
    return min(limit, most)


def _when(raw: str | None, default: float) -> float:
    if raw is None or not raw.strip():
        return default
    try:
        value = datetime.fromisoformat(raw.strip().replace("z", "Z"))
    except ValueError:
        raise BadQuery(f"{raw[:40]!r} is not an ISO 8601 date or date-time") from None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _window(request: Request, now: float, back: timedelta = timedelta(hours=24)) -> tuple[float, float]:
    start = _when(request.query_params.get("start"), now - back.total_seconds())
    end = _when(request.query_params.get("end"), now)
    if end - start > MAX_RANGE.total_seconds():
        raise BadQuery("the date range may span at most 90 days")
    return start, end


def _cursor(request: Request) -> dict[str, Any] | None:
    raw = request.query_params.get("cursor")
    if not raw:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(raw.encode() + b"==="))
    except (ValueError, TypeError):
        raise BadQuery("cursor is not a cursor this API gave") from None
    if not isinstance(value, dict):
        raise BadQuery("cursor is not a cursor this API gave")
    return value


def _encode(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).decode().rstrip("=")


def _page(rows: list[tuple[Any, Any]], cursor: dict[str, Any] | None, limit: int,
          extra: dict[str, Any]) -> tuple[list[Any], str | None]:
    """Keyset paging over (sort key, row) pairs: rows after the cursor's key, and the next cursor (or None)."""
    rows.sort(key=lambda r: r[0])
    first = 0
    if cursor and isinstance(cursor.get("after"), list):
        try:
            first = bisect.bisect_right(rows, tuple(cursor["after"]), key=lambda r: r[0])
        except TypeError:
            raise BadQuery("cursor is not a cursor this API gave") from None
    page = rows[first:first + limit]
    more = len(rows) > first + limit
    return [r for _k, r in page], _encode({"after": list(page[-1][0]), **extra}) if more else None


# ---- routes ---------------------------------------------------------------------------------------------------------

def routes(config: SimulatorConfig, *, book: JobBook, result_of: ResultOf, gate: Gate,
           profiles: Callable[[], dict[str, dict[str, Any]]], openapi_of: Callable[[dict[str, Any]], Any]
           ) -> list[Route]:
    """`/v1/models/billing-events`, `/v1/models/requests/by-endpoint` and `/v1/models`. `gate(request, path)` counts
    the call and answers a configured fault (or None); `result_of(job, base)` is a finished job's result."""
    results: weakref.WeakKeyDictionary[Job, tuple[int, Any]] = weakref.WeakKeyDictionary()

    def result(job: Job) -> tuple[int, Any]:
        """(status code, JSON) of a finished job's result, made once (it no longer changes)."""
        if (found := results.get(job)) is None:
            code, body, _headers = result_of(job, job.base_url or "")
            found = results[job] = (code, body)
        return found

    async def answer(request: Request, path: str, handler, admin: bool | None) -> Response:
        if (resp := await gate(request, path)) is not None:
            return resp
        if admin is not None and (resp := auth_error(config, request, admin=admin)) is not None:
            return resp
        try:
            return JSONResponse(handler(request))
        except BadQuery as exc:
            return fal_error(400, "validation_error", str(exc))

    def billing(request: Request) -> dict[str, Any]:
        now = time.time()
        cursor = _cursor(request) or {}
        start, end = _window(request, now)
        end = cursor.get("end", end) if request.query_params.get("end") is None else end
        endpoints, ids = set(_multi(request, "endpoint_id")), set(_multi(request, "request_id"))
        limit = _limit(request, MAX_BILLING_PAGE, MAX_BILLING_PAGE, clamp=True)
        rows = [((ts, e["request_id"]), e) for ts, e in billing_events(book, config, now)
                if start <= ts < end and (not endpoints or e["endpoint_id"] in endpoints)
                and (not ids or e["request_id"] in ids)]
        events, nxt = _page(rows, cursor, limit, {"end": end})
        return {"billing_events": events, "next_cursor": nxt, "has_more": nxt is not None}

    def history(request: Request) -> dict[str, Any]:
        now = time.time()
        cursor = _cursor(request) or {}
        endpoints = set(_multi(request, "endpoint_id", required=True))
        rid = request.query_params.get("request_id")
        start, end = _window(request, now, MAX_RANGE if rid else timedelta(hours=24))
        end = cursor.get("end", end) if request.query_params.get("end") is None else end
        status = request.query_params.get("status")
        if status is not None and status not in STATUS_CLASSES:
            raise BadQuery(f"status must be one of {', '.join(STATUS_CLASSES)}")
        sort_by = request.query_params.get("sort_by", "ended_at")
        if sort_by not in ("ended_at", "duration"):
            raise BadQuery("sort_by must be ended_at or duration")
        payloads = "payloads" in _values(request, "expand")
        limit = _limit(request, DEFAULT_REQUESTS_PAGE, MAX_REQUESTS_PAGE, clamp=False)
        rows = []
        for job in book.ended():
            ended = job.wall_ts(job.finished_at)
            if job.endpoint not in endpoints or not start <= ended < end or (rid and job.id != rid):
                continue
            if status and not STATUS_CLASSES[status][0] <= result(job)[0] < STATUS_CLASSES[status][1]:
                continue
            key = ended if sort_by == "ended_at" else round(job.finished_at - began_at(job), 3)
            rows.append(((key, job.id), job))
        jobs, nxt = _page(rows, cursor, limit, {"end": end})
        return {"items": [item(job, payloads) for job in jobs], "next_cursor": nxt, "has_more": nxt is not None}

    def began_at(job: Job) -> float:
        return job.started_at if job.started_at is not None else job.submitted_at

    def item(job: Job, payloads: bool) -> dict[str, Any]:
        code, body = result(job)
        out = {"request_id": job.id, "endpoint_id": job.endpoint, "started_at": job.wall(began_at(job)),
               "sent_at": job.wall(job.submitted_at), "ended_at": job.wall(job.finished_at), "status_code": code,
               "duration": round(job.finished_at - began_at(job), 3)}
        if payloads:
            out.update(json_input=job.submitted_input, json_output=body)
        return out

    def registry(request: Request) -> dict[str, Any]:
        wanted = _multi(request, "endpoint_id")
        status, category = request.query_params.get("status"), request.query_params.get("category")
        q = (request.query_params.get("q") or "").strip().lower()
        if status is not None and status not in ("active", "deprecated"):
            raise BadQuery("status must be active or deprecated")
        expand = _values(request, "expand")
        limit = _limit(request, DEFAULT_MODELS_PAGE, 1000, clamp=True)
        served = [e for e in dict.fromkeys([*config.endpoint_ids, *config.deprecated_endpoints])
                  if e not in config.retired_endpoints]
        known = profiles()
        rows = []
        for n, endpoint in enumerate(served):
            model = _model(endpoint, known.get(endpoint), config)
            meta = model["metadata"]
            if ((wanted and endpoint not in wanted) or (status and meta["status"] != status)
                    or (category and meta["category"] != category)
                    or (q and q not in f"{endpoint} {meta['display_name']}".lower())):
                continue
            if "openapi-3.0" in expand:
                model["openapi"] = (openapi_of(known[endpoint]) if endpoint in known else
                                    {"error": {"code": "expansion_failed", "message": "no OpenAPI document"}})
            rows.append(((n, endpoint), model))
        models, nxt = _page(rows, _cursor(request), limit, {})
        return {"models": models, "next_cursor": nxt, "has_more": nxt is not None}

    def route(path: str, handler, admin: bool | None) -> Route:
        async def endpoint(request: Request) -> Response:
            return await answer(request, path, handler, admin)

        return Route(path, endpoint, methods=["GET"])

    return [route("/v1/models/billing-events", billing, True),
            route("/v1/models/requests/by-endpoint", history, False),
            route("/v1/models", registry, None)]


def _model(endpoint: str, profile: dict[str, Any] | None, config: SimulatorConfig) -> dict[str, Any]:
    profile = profile or {}
    latency = (profile.get("video") or {}).get("latency_s")
    meta = {"display_name": profile.get("title") or endpoint, "category": "image-to-video",
            "description": profile.get("title") or endpoint,
            "status": "deprecated" if endpoint in config.deprecated_endpoints else "active",
            "tags": [], "updated_at": "2026-01-01T00:00:00Z", "is_favorited": None,
            "thumbnail_url": f"https://fal.media/simulator/{endpoint}.jpg", "model_url": f"https://fal.run/{endpoint}",
            "date": "2026-01-01T00:00:00Z", "highlighted": False, "pinned": False, "kind": "inference"}
    if isinstance(latency, (int, float)):
        meta["duration_estimate"] = round(latency / 60, 3)
    return {"endpoint_id": endpoint, "metadata": meta}
