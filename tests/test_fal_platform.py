"""fal's platform API: the client (`sora_pipeline.fal.platform`) against the simulator's `/v1/models…` routes over
HTTP on loopback — every page followed, calls counted, filters chunked by 50, the admin-key rule — and against
hostile servers (redirects, oversized answers, an echoed key, 5xx, looping cursors). The simulator's answers are
checked against a hand transcription of fal's response schemas (tests/fixtures/fal_platform_schemas.json), so
these tests do not only compare the simulator with itself."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sora_pipeline.fal.platform import (PlatformAuthError, PlatformClient, PlatformError, PlatformUnavailable,
                                        billable_units)
from sora_pipeline.fal.policies import RetryPolicy
from sora_pipeline.redact import MASK
from sora_pipeline.serving import BackgroundServer
from tests.simulator_helpers import ENDPOINT, LANDSCAPE, running

KEY = "fal-platform-ordinary-key-0123456789"
ADMIN = "fal-platform-admin-key-9876543210"
PRO = ENDPOINT.strip("/")
SORA2 = "fal-ai/sora-2/image-to-video"
KLING = "fal-ai/kling-video/v2.1/standard/image-to-video"
SCHEMAS = json.loads((Path(__file__).parent / "fixtures" / "fal_platform_schemas.json").read_text())["schemas"]
FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05, total_timeout=10)


# ---- a small checker for the transcribed schemas (type, properties, required, items, enum, minimum, anyOf) -------

def problems(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    types = {"string": str, "boolean": bool, "object": dict, "array": list, "null": type(None)}
    out: list[str] = []
    if "anyOf" in schema:
        return [] if any(not problems(value, s, where) for s in schema["anyOf"]) else [f"{where}: matches no anyOf"]
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]

        def fits(kind: str) -> bool:
            if kind == "number":
                return isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind == "integer":
                return isinstance(value, int) and not isinstance(value, bool)
            return isinstance(value, types[kind])

        if not any(fits(k) for k in kinds):
            return [f"{where}: {type(value).__name__} is not {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        out.append(f"{where}: {value} < {schema['minimum']}")
    if isinstance(value, str) and not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 1 << 30):
        out.append(f"{where}: length {len(value)}")
    if isinstance(value, dict):
        out += [f"{where}: {name} is required" for name in schema.get("required", []) if name not in value]
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                out += problems(value[name], sub, f"{where}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += problems(item, schema["items"], f"{where}[{i}]")
    return out


def test_the_checker_catches_what_it_should():
    event = {"request_id": "r", "endpoint_id": "e", "timestamp": "t", "output_units": None, "unit_price": 0.1,
             "percent_discount": None, "cost_subtotal": 1, "cost_discount": 0, "cost_total": 1.0,
             "cost_estimate_nano_usd": 1e9}
    good = {"billing_events": [event], "next_cursor": None, "has_more": False}
    assert problems(good, SCHEMAS["billing_events"]) == []
    assert problems({**good, "has_more": "no"}, SCHEMAS["billing_events"])
    assert problems({**good, "billing_events": [{**event, "cost_total": None}]}, SCHEMAS["billing_events"])
    assert problems({"billing_events": [], "has_more": False}, SCHEMAS["billing_events"])  # next_cursor required
    assert problems({"error": {"type": "oops", "message": "m"}}, SCHEMAS["error"])


# ---- the simulator, with jobs -----------------------------------------------------------------------------------

def body(i: int) -> dict[str, Any]:
    return {"prompt": f"a cat number {i}", "image_url": LANDSCAPE, "duration": 4, "resolution": "720p"}


def run_jobs(server, bodies: list[dict[str, Any]], endpoint: str = ENDPOINT) -> list[str]:
    with httpx.Client(trust_env=False, headers={"Authorization": f"Key {KEY}"}, timeout=30) as c:
        ids = [c.post(server.base_url + endpoint, json=b).json()["request_id"] for b in bodies]
    deadline = time.monotonic() + 60
    while server.stats()["completed"] < len(ids):
        assert time.monotonic() < deadline, "jobs did not complete"
        time.sleep(0.05)
    return ids


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    with running(tmp_path_factory.mktemp("sim-videos"), accepted_keys=[KEY], admin_keys=[ADMIN], run_latency=0.0,
                 retired_endpoints=(KLING,), deprecated_endpoints=(SORA2,)) as server:
        server.ids = run_jobs(server, [body(i) for i in range(7)])
        yield server


def window() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(hours=1), now + timedelta(minutes=1)


def raw(sim, path: str, key: str | None = KEY, **params) -> httpx.Response:
    headers = {"Authorization": f"Key {key}"} if key else {}
    return httpx.get(f"{sim.base_url}/v1{path}", params=params, headers=headers, trust_env=False)


def test_billing_events_every_page_counted_and_priced(sim):
    start, end = window()
    with PlatformClient(sim.base_url + "/v1", ADMIN) as client:
        events = list(client.billing_events(start, end, endpoint_ids=[PRO], limit=3))
        assert client.calls == {"/models/billing-events": 3}  # 3 + 3 + 1 events
    assert sorted(e["request_id"] for e in events) == sorted(sim.ids)
    for e in events:  # 4 s of 720p at the profile's $0.30/s, no discount
        assert (e["output_units"], e["unit_price"], e["percent_discount"]) == (4.0, 0.3, None)
        assert e["cost_total"] == pytest.approx(1.2) and e["cost_estimate_nano_usd"] == pytest.approx(1.2e9)
    first = raw(sim, "/models/billing-events", ADMIN, limit=3)
    page = first.json()
    assert page["has_more"] is True and len(page["billing_events"]) == 3 and not problems(page,
                                                                                          SCHEMAS["billing_events"])
    last = raw(sim, "/models/billing-events", ADMIN, limit=3, cursor=page["next_cursor"]).json()
    last = raw(sim, "/models/billing-events", ADMIN, limit=3, cursor=last["next_cursor"]).json()
    assert last["has_more"] is False and last["next_cursor"] is None and len(last["billing_events"]) == 1
    assert sim.stats()["platform_calls"]["/v1/models/billing-events"] >= 6


def test_billing_events_need_an_admin_key(sim):
    start, end = window()
    with PlatformClient(sim.base_url + "/v1", KEY) as client:
        with pytest.raises(PlatformAuthError, match="HTTP 403.*admin key.*FAL_ADMIN_KEY") as caught:
            list(client.billing_events(start, end))
    assert caught.value.status_code == 403 and caught.value.error_type == "authorization_error"
    answer = raw(sim, "/models/billing-events", KEY)
    assert answer.status_code == 403 and not problems(answer.json(), SCHEMAS["error"])
    assert raw(sim, "/models/billing-events", None).status_code == 401
    with PlatformClient(sim.base_url + "/v1") as client:  # no key at all: refused before any request
        with pytest.raises(PlatformAuthError, match="no key; set FAL_ADMIN_KEY"):
            list(client.billing_events(start, end))
        assert client.calls == {}


def test_request_history_pages_with_the_submitted_input_exactly(sim):
    start, end = window()
    with PlatformClient(sim.base_url + "/v1", KEY) as client:
        items = list(client.requests_by_endpoint(PRO, start, end, limit=3))
        assert client.calls == {"/models/requests/by-endpoint": 3}
        assert len(list(client.requests_by_endpoint(PRO, start, end, status="user_error"))) == 0
        one = list(client.requests_by_endpoint(PRO, None, None, request_id=sim.ids[4], expand_payloads=False))
    assert [i["request_id"] for i in one] == [sim.ids[4]] and one[0]["json_input"] is None
    by_id = {i["request_id"]: i for i in items}
    assert set(by_id) == set(sim.ids)
    for n, rid in enumerate(sim.ids):
        item = by_id[rid]
        assert item["json_input"] == body(n) and item["status_code"] == 200 and item["duration"] >= 0
        result = httpx.get(f"{sim.base_url}/fal-ai/sora-2/requests/{rid}", headers={"Authorization": f"Key {KEY}"})
        assert item["json_output"] == result.json()
        assert billable_units(result.headers) == 4.0 and result.headers["x-fal-request-id"] == rid
    page = raw(sim, "/models/requests/by-endpoint", endpoint_id=PRO, expand="payloads", limit=100).json()
    assert not problems(page, SCHEMAS["requests_by_endpoint"]) and len(page["items"]) == 7
    assert raw(sim, "/models/requests/by-endpoint", endpoint_id=PRO, limit=101).status_code == 400


def test_registry_and_prices(sim):
    with PlatformClient(sim.base_url + "/v1") as client:
        models = {m["endpoint_id"]: m for m in client.models([PRO, SORA2, KLING, "fal-ai/nothing-here"])}
    assert set(models) == {PRO, SORA2}  # retired and unknown endpoints are absent
    assert models[PRO]["metadata"]["status"] == "active" and models[SORA2]["metadata"]["status"] == "deprecated"
    answer = raw(sim, "/models", None, endpoint_id=[PRO, SORA2], expand="openapi-3.0").json()
    assert not problems(answer, SCHEMAS["models"]) and answer["models"][0]["openapi"]["openapi"].startswith("3.")
    with PlatformClient(sim.base_url + "/v1", KEY) as client:
        prices = {p["endpoint_id"]: p for p in client.pricing([PRO, SORA2])}
        listed = client.models([PRO], expand_openapi=True)
    assert prices[PRO]["unit"] == "second" and prices[PRO]["unit_price"] == 0.3 and prices[PRO]["currency"] == "USD"
    assert "openapi" in listed[0]
    assert not problems(raw(sim, "/models/pricing", endpoint_id=PRO).json(), SCHEMAS["pricing"])
    missing = raw(sim, "/models/pricing", endpoint_id="fal-ai/nothing-here")
    assert missing.status_code == 404 and not problems(missing.json(), SCHEMAS["error"])


# ---- the key's rules and hostile servers ---------------------------------------------------------------------

def test_the_key_goes_only_over_https_or_to_loopback():
    with pytest.raises(PlatformError, match="plain http on a non-loopback host.*nothing was sent"):
        PlatformClient("http://fal-platform.invalid/v1", KEY)
    for url in ("https://fal-platform.invalid/v1", "http://127.0.0.1:9/v1", "http://localhost:9/v1",
                "http://[::1]:9/v1"):
        PlatformClient(url, KEY).close()
    PlatformClient("http://fal-platform.invalid/v1").close()  # no key: nothing to protect (the registry)
    for bad in ("ftp://x/v1", "https://user:pw@api.fal.ai/v1", "https://api.fal.ai/v1?x=1"):
        with pytest.raises(PlatformError, match="plain http"):
            PlatformClient(bad, KEY)


class Hostile(BackgroundServer):
    """A loopback server whose answer `mode` picks; it records each request's Authorization and query."""

    name = "hostile-platform"

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.mode, self.seen = "ok", []

    def make_app(self):
        async def handle(request: Request) -> Response:
            self.seen.append((request.headers.get("authorization"), list(request.query_params.multi_items())))
            key, mode = request.headers.get("authorization", ""), self.mode
            if mode == "redirect":
                return Response(status_code=307, headers={"Location": "http://127.0.0.2:9/v1/models/pricing"})
            if mode == "echo":
                return JSONResponse({"error": {"type": "authorization_error", "message": f"bad {key}"}}, 401)
            if mode == "echo500":
                return Response(f"upstream said: {key}", status_code=500)
            if mode in ("huge", "huge-chunked"):
                pad = b'{"prices": [], "pad": "' + b"A" * (2 << 20) + b'"}'
                if mode == "huge":
                    return Response(pad, media_type="application/json")
                return StreamingResponse(iter([pad[i:i + 65536] for i in range(0, len(pad), 65536)]),
                                         media_type="application/json")
            if mode == "flaky" and len(self.seen) < 3:
                return JSONResponse({"error": {"type": "rate_limited", "message": "slow down"}}, 429)
            if mode == "loop":
                return JSONResponse({"prices": [], "next_cursor": "same", "has_more": True})
            if mode == "no-cursor":
                return JSONResponse({"prices": [], "next_cursor": None, "has_more": True})
            ids = [v for k, v in request.query_params.multi_items() if k == "endpoint_id"]
            return JSONResponse({"prices": [{"endpoint_id": i, "unit_price": "0.1", "unit": None} for i in ids],
                                 "models": [{"endpoint_id": i, "metadata": None} for i in ids],
                                 "billing_events": [{"request_id": r, "cost_total": "1.5", "unit_price": True}
                                                    for k, r in request.query_params.multi_items() if k == "request_id"],
                                 "next_cursor": None, "has_more": False})

        return Starlette(routes=[Route("/v1/{path:path}", handle)])


@pytest.fixture()
def hostile():
    with Hostile() as server:
        yield server


def test_filters_are_chunked_by_50_and_fields_parsed_defensively(hostile):
    ids = [f"fal-ai/model-{i}" for i in range(120)]
    with PlatformClient(hostile.base_url + "/v1", KEY) as client:
        prices = client.pricing(ids)
        models = client.models(ids)
        assert client.calls == {"/models/pricing": 3, "/models": 3}
    assert [len([1 for k, _ in q if k == "endpoint_id"]) for _a, q in hostile.seen] == [50, 50, 20] * 2
    assert [a for a, _q in hostile.seen[3:]] == [f"Key {KEY}"] * 3  # the key is sent when given …
    assert [p["endpoint_id"] for p in prices] == ids and prices[0]["unit_price"] == 0.1 and prices[0]["unit"] is None
    assert models[0]["metadata"] is None
    hostile.seen.clear()
    with PlatformClient(hostile.base_url + "/v1", ADMIN) as client:
        billed = list(client.billing_events(None, None, endpoint_ids=[PRO, SORA2], request_ids=ids))
        assert client.calls == {"/models/billing-events": 3}
    assert [sum(k == "request_id" for k, _ in q) for _a, q in hostile.seen] == [50, 50, 20]
    assert all(sum(k == "endpoint_id" for k, _ in q) == 2 and "start" not in dict(q) for _a, q in hostile.seen)
    assert [e["request_id"] for e in billed] == ids
    assert (billed[0]["cost_total"], billed[0]["unit_price"], billed[0]["timestamp"]) == (1.5, None, None)
    hostile.seen.clear()
    with PlatformClient(hostile.base_url + "/v1") as client:
        client.models(["fal-ai/x"])
    assert hostile.seen[0][0] is None  # … and only then


def test_redirects_are_refused(hostile):
    hostile.mode = "redirect"
    with PlatformClient(hostile.base_url + "/v1", KEY) as client:
        with pytest.raises(PlatformError, match=r"HTTP 307, a redirect to http://127\.0\.0\.2:9; redirects are not"):
            client.pricing([PRO])
        assert client.calls == {"/models/pricing": 1}


@pytest.mark.parametrize("mode", ["huge", "huge-chunked"])
def test_an_oversized_answer_is_refused(hostile, mode):
    hostile.mode = mode
    with PlatformClient(hostile.base_url + "/v1", KEY, max_json_bytes=1 << 20) as client:
        with pytest.raises(PlatformError, match=r"(declares Content-Length|larger than).*1 MiB cap"):
            client.pricing([PRO])


@pytest.mark.parametrize("mode", ["echo", "echo500"])
def test_a_server_echoing_the_key_gets_it_redacted(hostile, mode):
    hostile.mode = mode
    client = PlatformClient(hostile.base_url + "/v1", KEY, retry=FAST)
    with pytest.raises(PlatformAuthError if mode == "echo" else PlatformUnavailable) as caught:
        client.pricing([PRO])
    text = f"{caught.value} {caught.value!r} {client!r}"
    assert KEY not in text and MASK in str(caught.value) and "\n" not in str(caught.value)
    assert client.calls["/models/pricing"] == (1 if mode == "echo" else FAST.max_attempts)


def test_429_is_retried_and_loops_are_stopped(hostile):
    hostile.mode = "flaky"
    with PlatformClient(hostile.base_url + "/v1", KEY, retry=FAST) as client:
        assert client.pricing([PRO])[0]["endpoint_id"] == PRO and client.calls == {"/models/pricing": 3}
    for mode, said in (("loop", "repeats an earlier page"), ("no-cursor", "has_more without a next_cursor")):
        hostile.mode = mode
        with PlatformClient(hostile.base_url + "/v1", KEY) as client, pytest.raises(PlatformError, match=said):
            client.pricing([PRO])


def test_an_unreachable_api_is_unavailable():
    with PlatformClient("http://127.0.0.1:9/v1", KEY, retry=FAST) as client:
        with pytest.raises(PlatformUnavailable, match="network error"):
            client.pricing([PRO])
        assert client.calls == {"/models/pricing": FAST.max_attempts}


def test_billable_units_header():
    assert billable_units({"X-Fal-Billable-Units": "12.5"}) == 12.5
    for headers in ({}, {"x-fal-billable-units": "lots"}, {"x-fal-billable-units": "-1"},
                    {"x-fal-billable-units": "nan"}):
        assert billable_units(headers) is None
