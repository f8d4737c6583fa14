"""`python -m sora_pipeline.endpoint_tools refresh` against a hostile pricing server on loopback: a key echoed in the
price unit (whole, or cut to fal's 40 characters) is masked wherever it is printed; a zero price, a drop over half
or a switch to a tiny per-video price is refused in one line (exit 5) and leaves the profile, and so the budget's
estimates, unchanged unless `--accept-price-drop`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sora_pipeline.endpoint_tools.profile_edit import dump_profile
from sora_pipeline.endpoints.openapi import openapi_document
from sora_pipeline.endpoints.registry import file_name
from tests.test_endpoint_refresh import KEY, MAPPING, SHIPPED, SORA2, AppServer, refresh

# ---- hostile price answers: echoed keys, zeroed and collapsed prices ------------------------------------------

SHORT_KEY = "sk-0123456789abcdef"  # short enough for a whole `Key …` echo to fit fal's 40-character unit


@pytest.fixture(scope="module")
def pricer():
    """fal's two routes for `test/<behaviour>` endpoints: an honest document (Sora 2's inputs) and a price answer
    chosen by the behaviour; `echo` puts the Authorization header it got into the unit (cut to 40 characters)."""
    answers = {"zero": (0, "second"), "tiny": (1e-9, "second"), "per-video": (0.05, "video"),
               "drop-60": (0.04, "second"), "drop-30": (0.07, "second")}

    async def document(request: Request) -> Response:
        eid = request.query_params.get("endpoint_id", "")
        return JSONResponse(openapi_document({**SHIPPED[SORA2], "endpoint_id": eid}))

    async def price(request: Request) -> Response:
        eid = request.query_params.get("endpoint_id", "")
        behaviour = eid.removeprefix("test/")
        if behaviour == "echo":
            amount, unit = 0.1, ("second " + request.headers.get("authorization", ""))[:40]
        else:
            amount, unit = answers[behaviour]
        return JSONResponse({"prices": [{"endpoint_id": eid, "unit_price": amount, "unit": unit, "currency": "USD"}],
                             "next_cursor": None, "has_more": False})

    app = Starlette(routes=[Route("/api/openapi/queue/openapi.json", document), Route("/v1/models/pricing", price)])
    with AppServer(app) as server:
        yield server


def with_old_profile(folder: Path, endpoint_id: str) -> Path:
    """`folder` holding Sora 2's shipped profile as `endpoint_id`'s (what a refresh then compares against)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name(endpoint_id)
    path.write_text(dump_profile({**SHIPPED[SORA2], "endpoint_id": endpoint_id}), encoding="utf-8")
    return path


@pytest.mark.parametrize("key", [SHORT_KEY, KEY], ids=["whole-key", "cut-key"])
def test_a_key_echoed_in_the_price_unit_is_never_printed(pricer, tmp_path, key):
    """fal's unit is free text: a server that echoes `Key <FAL_KEY>` into it (whole, or cut at 40 characters) gets
    a note with the key masked, and no fragment of the key reaches the output or the profile."""
    path = with_old_profile(tmp_path, "test/echo")
    before = path.read_bytes()
    result = refresh(pricer, "test/echo", tmp_path, key=key)
    shown = result.stdout + result.stderr
    assert result.returncode == 0, shown
    assert "not per second or per video" in result.stderr and "[REDACTED]" in result.stderr, shown
    for fragment in (key, key[:12], key[-8:], key[4:16]):
        assert fragment not in shown, fragment
    assert path.read_bytes() == before


def test_a_zero_price_is_refused_and_the_profile_and_budget_are_unchanged(pricer, tmp_path):
    """A price of 0 would make every estimate $0, so `day_budget_usd` would let a whole day through: the refresh
    refuses in one line naming the old and new price, writes nothing (the budget's estimates stay what they were),
    and takes it only with --accept-price-drop."""
    from sora_pipeline.endpoints.registry import load_file
    from sora_pipeline.generation.costs import PriceTable, estimate_cost

    path = with_old_profile(tmp_path, "test/zero")
    before = path.read_bytes()
    result = refresh(pricer, "test/zero", tmp_path)
    assert result.returncode == 5, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr
    assert "$0.10/s 720p → $0.00/s 720p" in result.stderr and "--accept-price-drop" in result.stderr
    assert "price: $0.10/s 720p → $0.00/s 720p" in result.stdout  # the diff shows both
    assert path.read_bytes() == before
    prices = PriceTable.from_profile(load_file(path))
    assert estimate_cost(prices, resolution="720p", duration_s=4, byo_openai_key=False) == pytest.approx(0.4)
    accepted = refresh(pricer, "test/zero", tmp_path, "--accept-price-drop")
    assert accepted.returncode == 0 and "wrote" in accepted.stdout, accepted.stderr
    assert json.loads(path.read_text(encoding="utf-8"))["pricing"]["per_second"] == {"720p": 0}


@pytest.mark.parametrize("behaviour, old, new", [
    ("tiny", "$0.10/s 720p", "$1e-09/s 720p"),
    ("drop-60", "$0.10/s 720p", "$0.04/s 720p"),
    ("per-video", "$0.10/s 720p", "$0.05/video"),
])
def test_a_price_drop_over_half_is_refused(pricer, tmp_path, behaviour, old, new):
    path = with_old_profile(tmp_path, f"test/{behaviour}")
    before = path.read_bytes()
    result = refresh(pricer, f"test/{behaviour}", tmp_path)
    assert result.returncode == 5, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and old in result.stderr and new in result.stderr
    assert f"price: {old} → {new}" in result.stdout
    assert path.read_bytes() == before
    dry = refresh(pricer, f"test/{behaviour}", tmp_path, "--dry-run", "--accept-price-drop")
    assert dry.returncode == 0 and "not written" in dry.stdout, dry.stderr
    assert path.read_bytes() == before


def test_a_smaller_drop_and_a_new_profile_s_zero_price(pricer, tmp_path):
    path = with_old_profile(tmp_path, "test/drop-30")
    result = refresh(pricer, "test/drop-30", tmp_path)
    assert result.returncode == 0 and "price: $0.10/s 720p → $0.07/s 720p" in result.stdout, result.stderr
    assert json.loads(path.read_text(encoding="utf-8"))["pricing"]["per_second"] == {"720p": 0.07}
    fresh = refresh(pricer, "test/zero", tmp_path / "new", *MAPPING)
    assert fresh.returncode == 5 and "$0" in fresh.stderr, fresh.stdout + fresh.stderr
    assert not (tmp_path / "new").exists()
