"""The simulator's stand-ins for fal's schema and price services, made from the endpoint profiles:

- `GET /api/openapi/queue/openapi.json?endpoint_id=<id>` (no auth, like fal): the endpoint's queue OpenAPI
  document in fal's shape (`sora_pipeline.endpoints.openapi.openapi_document`), so that
  `python -m sora_pipeline.endpoint_tools refresh <id> --openapi-url <simulator>` finds nothing to change;
- `GET /v1/models/pricing?endpoint_id=<id>[,<id>…]` (a key, as the other `/v1/models…` routes: `platform.py`):
  `{"prices": [{"endpoint_id", "unit_price", "unit", "currency"}], "next_cursor": null, "has_more": false}`;
  errors in fal's platform shape `{"error": {"type", "message"}}`.

Profiles are the shipped ones, overridden by `SORA_ENDPOINT_PROFILES` (or by `profiles_dir`), read per request.
`routes(config)` returns the Starlette routes; the app adds them to its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sora_pipeline.endpoints.openapi import openapi_document, price_answer
from sora_pipeline.endpoints.registry import profile_dirs, read_profiles
from sora_pipeline.simulator.config import SimulatorConfig
from sora_pipeline.simulator.core import _detail
from sora_pipeline.simulator.platform import Gate, auth_error, fal_error

QUEUE_URL = "https://queue.fal.run"
MAX_ENDPOINTS = 50  # per pricing request, as fal's API


def known_profiles(profiles_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Profiles (plain dicts) by endpoint id: those of `profiles_dir`, else the shipped ones plus
    `SORA_ENDPOINT_PROFILES` (the pipeline's own rule)."""
    if profiles_dir is not None:
        return read_profiles(profiles_dir)
    found: dict[str, dict[str, Any]] = {}
    for folder in profile_dirs():
        if folder.is_dir():
            found.update(read_profiles(folder))
    return found


def queue_document(profile: dict[str, Any]) -> dict[str, Any]:
    """The endpoint's queue OpenAPI document as fal serves it."""
    return openapi_document(profile, QUEUE_URL)


def routes(config: SimulatorConfig, profiles_dir: str | Path | None = None, gate: Gate | None = None) -> list[Route]:
    """The two routes, serving the profiles of `profiles_dir` (else the shipped ones plus `SORA_ENDPOINT_PROFILES`);
    `gate(request, path)` (the app's) counts pricing calls and answers configured faults."""

    def known() -> dict[str, dict[str, Any]]:
        return known_profiles(profiles_dir)

    async def document(request: Request) -> Response:
        endpoint_id = request.query_params.get("endpoint_id", "").strip().strip("/")
        if not endpoint_id:
            return _detail(422, "endpoint_id is required")
        profile = known().get(endpoint_id)
        if profile is None:
            return _detail(404, f"Endpoint '{endpoint_id[:200]}' not found")
        return JSONResponse(queue_document(profile))

    async def pricing(request: Request) -> Response:
        if gate is not None and (resp := await gate(request, "/v1/models/pricing")) is not None:
            return resp
        if (resp := auth_error(config, request)) is not None:
            return resp
        ids = [i.strip().strip("/") for v in request.query_params.getlist("endpoint_id") for i in v.split(",")]
        ids = list(dict.fromkeys(i for i in ids if i))
        if not 1 <= len(ids) <= MAX_ENDPOINTS:
            return fal_error(400, "validation_error", f"endpoint_id: give 1 to {MAX_ENDPOINTS} endpoint ids")
        profiles = known()
        if unknown := [i for i in ids if i not in profiles]:
            return fal_error(404, "not_found", f"Endpoint '{unknown[0][:200]}' not found")
        prices = [price_answer(i, profiles[i]["pricing"]) for i in ids]
        return JSONResponse({"prices": prices, "next_cursor": None, "has_more": False})

    return [Route("/api/openapi/queue/openapi.json", document, methods=["GET"]),
            Route("/v1/models/pricing", pricing, methods=["GET"])]
