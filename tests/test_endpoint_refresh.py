"""Endpoint profiles and `python -m sora_pipeline.endpoint_tools refresh`: every shipped profile is consistent; the
OpenAPI conversion round-trips; the command, run as a subprocess over real HTTP on loopback against the
simulator's schema and price routes, finds nothing to change in a shipped profile, shows and writes a changed
document, and meets a hostile server (oversized, redirecting, echoing the key, $ref cycles, bad JSON) with a
one-line error while the key reaches no other origin and never the output."""

from __future__ import annotations

import copy
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from sora_pipeline.endpoint_tools.profile_edit import dump_profile, profile_problems
from sora_pipeline.endpoints.openapi import (OpenAPIError, openapi_document, price_answer, price_entry,
                                             pricing_from_price, profile_sections_from_openapi)
from sora_pipeline.endpoints.registry import PROFILES_DIR, file_name, read_profiles
from sora_pipeline.serving import BackgroundServer
from sora_pipeline.simulator import SimulatorConfig
from sora_pipeline.simulator.openapi_docs import routes

REPO = Path(__file__).resolve().parents[1]
KEY = "fal-refresh-test-key-0123456789"
SHIPPED = read_profiles()
SORA2 = "fal-ai/sora-2/image-to-video"
KLING = "fal-ai/kling-video/v2.1/standard/image-to-video"


class AppServer(BackgroundServer):
    name = "test-app"

    def __init__(self, app) -> None:
        super().__init__()
        self._app = app

    def make_app(self):
        return self._app


def run_cli(*args: str, key: str | None = KEY, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORA_", "FAL_"))}
    env["PYTHONPATH"] = str(REPO)
    if key:
        env["FAL_KEY"] = key
    return subprocess.run([sys.executable, "-m", "sora_pipeline.endpoint_tools", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def refresh(server, endpoint_id: str, out_dir, *extra: str, api=None, key: str | None = KEY):
    return run_cli("refresh", endpoint_id, "--openapi-url", server.base_url, "--api-url", (api or server).base_url,
                   "--profiles-dir", str(out_dir), *extra, key=key)


def sim_server(profiles_dir=None) -> AppServer:
    config = SimulatorConfig(accepted_keys=[KEY])
    return AppServer(Starlette(routes=routes(config, profiles_dir=profiles_dir)))


@pytest.fixture(scope="module")
def sim():
    with sim_server() as server:
        yield server


# ---- the shipped profiles ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(PROFILES_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_profile_is_valid(path):
    from sora_pipeline.endpoints.profile import EndpointProfile

    p = json.loads(path.read_text(encoding="utf-8"))
    assert path.name == file_name(p["endpoint_id"])
    props, mapping = p["input"]["properties"], p["catalog_mapping"]
    assert mapping["prompt"] and mapping["image"]
    for concept, name in mapping.items():
        assert name is None or name in props, f"catalog_mapping.{concept} → {name} is not an input"
    assert set(p["input"]["required"]) <= set(props) and set(p["secret_inputs"]) <= set(props)
    for name, spec in props.items():
        if "enum" in spec and "default" in spec:
            assert spec["default"] in spec["enum"], name
    resolutions = props[mapping["resolution"]]["enum"] if mapping.get("resolution") else []
    tiers, heights = set(p["pricing"].get("per_second") or {"*"}), set(p["video"]["heights"])
    concrete = {r for r in resolutions if r != "auto"}
    assert tiers == (concrete or {"*"}) or tiers == {"*"}, (tiers, resolutions)
    if p["pricing"].get("per_second_audio"):  # audio prices: the same tiers, never cheaper than silence
        audio = p["pricing"]["per_second_audio"]
        assert set(audio) == tiers and all(audio[t] >= p["pricing"]["per_second"][t] for t in tiers)
        assert props[p["pricing"]["audio_input"]]["type"] == "boolean"
    assert heights == (concrete or {"*"}), (heights, resolutions)
    if "auto" in resolutions:
        assert p["pricing"]["auto_tier"] in tiers and p["video"]["auto_resolution"] in heights
    assert all(s["url"].startswith("https://") and datetime.date.fromisoformat(s["retrieved"]) for s in p["sources"])
    assert profile_problems(p) == ([], [])
    EndpointProfile.model_validate(p)  # the lead's loader takes it too


def test_the_shipped_endpoints_disagree_on_catalog_durations():
    """A catalog duration Sora takes (4) is refused by Kling and Hailuo, one they take (10) is refused by Sora."""
    def durations(endpoint_id):
        p = SHIPPED[endpoint_id]
        return [int(d) for d in p["input"]["properties"][p["catalog_mapping"]["duration"]]["enum"]]

    assert 4 in durations(SORA2) and 10 not in durations(SORA2)
    assert 4 not in durations(KLING) and 10 in durations(KLING)
    assert 10 in durations("fal-ai/minimax/hailuo-02/standard/image-to-video")
    assert len(SHIPPED) >= 4


@pytest.mark.parametrize("endpoint_id", sorted(SHIPPED))
def test_profile_document_profile_round_trips(endpoint_id):
    p = SHIPPED[endpoint_id]
    doc = json.loads(json.dumps(openapi_document(p)))
    assert profile_sections_from_openapi(doc, endpoint_id) == {"input": p["input"], "output": p["output"]}
    answer = {"prices": [price_answer(endpoint_id, p["pricing"])], "next_cursor": None, "has_more": False}
    assert pricing_from_price(price_entry(answer, endpoint_id), p["pricing"])[0] == p["pricing"]


def test_conversion_flattens_refs_and_nullable_unions():
    doc = openapi_document(SHIPPED[SORA2])
    schemas = doc["components"]["schemas"]
    schemas["Seconds"] = {"type": "integer", "enum": [4, 8], "default": 4}
    inp = schemas["Sora2ImageToVideoInput"]["properties"]
    inp["duration"] = {"allOf": [{"$ref": "#/components/schemas/Seconds"}], "description": "how long"}
    inp["seed"] = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}], "title": "Seed"}
    inp["tags"] = {"type": ["array", "null"], "items": {"$ref": "#/components/schemas/Missing"}}
    got = profile_sections_from_openapi(doc, SORA2)["input"]["properties"]
    assert got["duration"] == {"type": "integer", "enum": [4, 8], "default": 4, "description": "how long"}
    assert got["seed"] == {"type": "integer", "minimum": 0} and got["tags"] == {"type": "array", "items": {}}


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("paths"), "no paths"),
    (lambda d: d["components"]["schemas"].__setitem__("Sora2ImageToVideoInput", {"$ref": "http://x/y.json"}),
     "only local"),
    (lambda d: d["components"]["schemas"]["Sora2ImageToVideoInput"]["properties"].__setitem__(
        "bad name;rm", {"type": "string"}), "plain identifier"),
    (lambda d: d["components"]["schemas"]["Sora2ImageToVideoInput"]["properties"]["duration"].__setitem__(
        "enum", list(range(10_000))), "enum"),
    (lambda d: d["components"]["schemas"]["Sora2ImageToVideoInput"]["properties"]["duration"].__setitem__(
        "enum", [{"x": 1}]), "short scalar"),
])
def test_conversion_refuses_hostile_documents(mutate, message):
    doc = openapi_document(SHIPPED[SORA2])
    mutate(doc)
    with pytest.raises(OpenAPIError, match=message):
        profile_sections_from_openapi(doc, SORA2)


def test_pricing_of_several_tiers_takes_the_lowest_and_says_so():
    pro = SHIPPED["fal-ai/sora-2/image-to-video/pro"]["pricing"]
    new, note = pricing_from_price({"unit_price": 0.35, "unit": "second", "currency": "USD"}, pro)
    assert new["per_second"] == {"720p": 0.35, "1080p": 0.5} and "lowest" in note and "1080p" in note
    kept, note = pricing_from_price({"unit_price": 0.02, "unit": "megapixel", "currency": "USD"}, pro)
    assert kept is None and "kept" in note


# ---- the command over HTTP -----------------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint_id", sorted(SHIPPED))
def test_refresh_against_the_simulator_changes_nothing(sim, tmp_path, endpoint_id):
    result = refresh(sim, endpoint_id, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout and "+++" not in result.stdout and result.stderr == ""
    assert list(tmp_path.iterdir()) == []


def test_a_changed_document_shows_a_diff_and_is_written(tmp_path):
    served = tmp_path / "served"
    shutil.copytree(PROFILES_DIR, served)
    changed = copy.deepcopy(SHIPPED[SORA2])
    changed["input"]["properties"]["duration"]["enum"] = [4, 8, 12, 16, 20]
    changed["pricing"]["per_second"]["720p"] = 0.12
    (served / file_name(SORA2)).write_text(json.dumps(changed), encoding="utf-8")
    out = tmp_path / "out"
    with sim_server(served) as server:
        dry = refresh(server, SORA2, out, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert '+      "duration": {"type": "integer", "enum": [4, 8, 12, 16, 20]' in dry.stdout
        assert '+    "per_second": {"720p": 0.12},' in dry.stdout and "not written" in dry.stdout
        assert not out.exists()
        wrote = refresh(server, SORA2, out)
        assert wrote.returncode == 0 and "wrote" in wrote.stdout, wrote.stderr
        again = refresh(server, SORA2, out)
        assert again.returncode == 0 and "up to date" in again.stdout and "+++" not in again.stdout
    new = json.loads((out / file_name(SORA2)).read_text(encoding="utf-8"))
    old = SHIPPED[SORA2]
    assert new["input"]["properties"]["duration"]["enum"] == [4, 8, 12, 16, 20]
    assert new["pricing"]["per_second"] == {"720p": 0.12}
    assert new["catalog_mapping"] == old["catalog_mapping"] and new["video"] == old["video"]
    assert new["sources"][:len(old["sources"])] == old["sources"]
    added = {s["what"]: s for s in new["sources"][len(old["sources"]):]}
    today = datetime.date.today().isoformat()
    assert added["input and output schema (refresh)"]["retrieved"] == today
    assert "duration" in added["input and output schema (refresh)"]["note"]
    assert "$0.12 per second" in added["price (refresh)"]["note"]
    assert KEY not in json.dumps(new)


def test_a_new_endpoint_needs_a_mapping(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    new_id = "fal-ai/kling-video/v2.1/pro/image-to-video"
    (served / file_name(new_id)).write_text(json.dumps({**SHIPPED[KLING], "endpoint_id": new_id}), encoding="utf-8")
    out = tmp_path / "out"
    with sim_server(served) as server:
        asked = refresh(server, new_id, out)
        assert asked.returncode == 4 and "cfg_scale: number" in asked.stdout
        assert "--mapping prompt=prompt,image=image_url,end_image=none,resolution=none" in asked.stderr and not out.exists()
        made = refresh(server, new_id, out, "--mapping", "prompt=prompt,image=image_url,resolution=none",
                       "--mapping", "aspect_ratio=none,duration=duration,openai_api_key=none")
        assert made.returncode == 0, made.stderr
    profile = json.loads((out / file_name(new_id)).read_text(encoding="utf-8"))
    assert profile["catalog_mapping"]["duration"] == "duration" and profile["pricing"]["per_second"] == {"*": 0.056}
    assert profile_problems(profile)[0] == []


def test_list_prints_every_profile():
    result = run_cli("list", key=None)
    assert result.returncode == 0, result.stderr
    for endpoint_id in SHIPPED:
        assert endpoint_id in result.stdout
    kling = next(line for line in result.stdout.splitlines() if line.startswith(KLING))
    assert "5 s, 10 s" in kling and "$0.056/s" in kling


# ---- hostile servers -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recorder():
    """Another origin: records every request that reaches it (none should)."""
    seen: list[dict] = []

    async def record(request: Request) -> Response:
        seen.append({"path": request.url.path, "headers": dict(request.headers)})
        return JSONResponse({"prices": []})

    with AppServer(Starlette(routes=[Route("/{path:path}", record)])) as server:
        server.seen = seen
        yield server


@pytest.fixture(scope="module")
def hostile(recorder):
    """Answers by endpoint id: `test/<behaviour>`; any other id gets the shipped profile's honest document."""
    seen: list[dict] = []

    def doc_of(endpoint_id: str) -> dict:
        return openapi_document({**SHIPPED[SORA2], "endpoint_id": endpoint_id})

    async def endless(total: int):
        for _ in range(total // 65536):
            yield b" " * 65536

    async def handle(request: Request) -> Response:
        seen.append({"path": request.url.path, "headers": dict(request.headers)})
        eid, price = request.query_params.get("endpoint_id", ""), request.url.path.startswith("/v1/")
        behaviour = eid.removeprefix("test/") if eid.startswith("test/") else "honest"
        if behaviour == "oversized" and not price:
            return StreamingResponse(endless(6 << 20), media_type="application/json")
        if behaviour == "declared" and not price:
            return Response(b"{}", headers={"content-length": str(64 << 20)})
        if behaviour == "redirect" or (behaviour == "price-redirect" and price):
            return RedirectResponse(recorder.base_url + request.url.path + "?" + request.url.query, 302)
        if behaviour == "echo-key" and price:
            return JSONResponse({"detail": f"invalid key: {request.headers.get('authorization')}"}, 401)
        if behaviour == "bad-json" and not price:
            return Response(b'{"openapi": "3.0.4", "paths": {', media_type="application/json")
        if behaviour == "nan" and not price:
            return Response(b'{"x": NaN}', media_type="application/json")
        if behaviour == "nested" and not price:
            return Response(b"[" * 200_000 + b"]" * 200_000, media_type="application/json")
        if behaviour == "unknown":
            return JSONResponse({"detail": f"Endpoint '{eid}' not found"}, 404)
        if price:
            return JSONResponse({"prices": [{"endpoint_id": eid, "unit_price": 0.1, "unit": "second",
                                             "currency": "USD"}], "next_cursor": None, "has_more": False})
        doc = doc_of(eid)
        if behaviour == "ref-cycle":
            schemas = doc["components"]["schemas"]
            schemas["Loop1"], schemas["Loop2"] = ({"$ref": "#/components/schemas/Loop2"},
                                                  {"$ref": "#/components/schemas/Loop1"})
            schemas[next(n for n in schemas if n.endswith("Input"))]["properties"]["prompt"] = {
                "$ref": "#/components/schemas/Loop1"}
        if behaviour == "key-in-doc":
            schemas = doc["components"]["schemas"]
            schemas[next(n for n in schemas if n.endswith("Input"))]["properties"]["prompt"]["description"] = KEY
        return JSONResponse(doc)

    app = Starlette(routes=[Route("/api/openapi/queue/openapi.json", handle), Route("/v1/models/pricing", handle)])
    with AppServer(app) as server:
        server.seen = seen
        yield server


MAPPING = ("--mapping", "prompt=prompt,image=image_url")


@pytest.mark.parametrize("behaviour, code, message", [
    ("oversized", 1, "over the 4,194,304-byte cap"),
    ("declared", 1, "declares 67,108,864 bytes"),
    ("redirect", 1, "redirects are not followed"),
    ("unknown", 1, "HTTP 404"),
    ("bad-json", 3, "not JSON"),
    ("nan", 3, "not JSON"),
    ("nested", 3, "not JSON"),
    ("ref-cycle", 3, "deeper than 16 levels"),
    ("echo-key", 1, "HTTP 401"),
    ("price-redirect", 1, "redirects are not followed"),
    ("key-in-doc", 3, "would contain a secret"),
])
def test_a_hostile_server_gets_a_one_line_error(hostile, recorder, tmp_path, behaviour, code, message):
    before = len(recorder.seen)
    result = refresh(hostile, f"test/{behaviour}", tmp_path, *MAPPING)
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert KEY not in result.stdout + result.stderr
    assert len(recorder.seen) == before, "a redirect was followed"
    assert list(tmp_path.iterdir()) == []


def test_the_key_goes_only_to_the_configured_api_origin(hostile, sim, recorder, tmp_path):
    start = len(hostile.seen)
    result = refresh(hostile, SORA2, tmp_path, api=sim)
    assert result.returncode == 0 and "up to date" in result.stdout, result.stderr
    asked = hostile.seen[start:]
    assert [r["path"] for r in asked] == ["/api/openapi/queue/openapi.json"]
    assert "authorization" not in asked[0]["headers"]
    assert all("authorization" not in r["headers"] for r in recorder.seen)


def test_the_key_is_never_sent_over_plain_http_off_loopback(tmp_path):
    result = run_cli("refresh", SORA2, "--api-url", "http://api.example.invalid", "--profiles-dir", str(tmp_path))
    assert result.returncode == 2 and "not https" in result.stderr and KEY not in result.stderr


def test_without_a_key_the_price_is_kept(sim, tmp_path):
    result = refresh(sim, SORA2, tmp_path, key=None)
    assert result.returncode == 0 and "FAL_KEY is not set" in result.stderr and "up to date" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_profiles_written_by_refresh_read_back_the_same():
    for endpoint_id, profile in SHIPPED.items():
        assert json.loads(dump_profile(profile)) == profile, endpoint_id
