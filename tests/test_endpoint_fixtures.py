"""Profiles against fal's own documents, not against themselves: `tests/fixtures/endpoints/*.json` are hand
transcriptions of fal's public pages (source URL and date in each, what the page did not say under `unconfirmed`).
Each shipped profile with a fixture must agree with it: inputs (type, enum, default, caps), required inputs, the
catalog's targets, prices (per second by tier and audio, per video, per token); what the profile models beyond the
page must be named in the profile's `unconfirmed`. A body built from the page's required inputs and defaults passes
the profile's validation, and what the pipeline sends uses only the page's inputs and values."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from sora_pipeline.endpoints import get_profile
from sora_pipeline.generation.costs import PriceTable, estimate_cost

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "endpoints").glob("*.json"))
_ATTRS = {"type": "type", "enum": "enum", "default": "default", "maxLength": "max_length", "minimum": "minimum",
          "maximum": "maximum"}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_there_is_a_fixture_for_each_of_the_leading_endpoints():
    ids = {load(p)["endpoint_id"] for p in FIXTURES}
    assert {"bytedance/seedance-2.0/image-to-video", "fal-ai/kling-video/v3/pro/image-to-video",
            "fal-ai/veo3.1/image-to-video", "fal-ai/wan/v2.7/image-to-video",
            "fal-ai/minimax/hailuo-2.3/standard/image-to-video"} <= ids
    for p in FIXTURES:
        f = load(p)
        assert f["source"].startswith("https://") and dt.date.fromisoformat(f["transcribed_on"])
        assert isinstance(f["unconfirmed"], list) and f["unconfirmed"], p.name


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_the_shipped_profile_agrees_with_fal_s_document(path):
    f = load(path)
    profile = get_profile(f["endpoint_id"])
    fields = f["input"]["fields"]
    assert set(profile.input.required) == set(f["input"]["required"])
    unconfirmed = " ".join(profile.unconfirmed)
    for name, spec in profile.input.properties.items():
        if name not in fields:  # modelled from elsewhere: the profile must say so
            assert name in unconfirmed, f"{name} is not on fal's page and not named unconfirmed"
            continue
        doc = fields[name]
        for key, attr in _ATTRS.items():
            if key in doc:
                assert getattr(spec, attr) == doc[key], (name, key, getattr(spec, attr), doc[key])
        if "enum_incomplete" in doc:
            assert set(doc["enum_incomplete"]) <= set(spec.enum or ())
    for concept, name in profile.catalog_mapping.items():
        assert name is None or name in fields or name in unconfirmed, \
            f"catalog_mapping.{concept} → {name} is not on fal's page (nor named unconfirmed)"
    price, pricing = f["price"], profile.pricing
    assert pricing.unit == price["unit"]
    for key in ("per_second", "per_second_audio", "per_video", "per_1k_tokens", "audio_input"):
        if key in price:
            assert getattr(pricing, key) == pytest.approx(price[key]) if key != "audio_input" \
                else pricing.audio_input == price[key], key
    if price.get("audio_changes_price") is False:
        assert not pricing.per_second_audio
    if "height" in f.get("video", {}):
        assert profile.video.heights == {"*": f["video"]["height"]}
    if "fps" in f.get("video", {}):
        assert profile.video.fps == f["video"]["fps"]
    assert profile.unconfirmed or f["endpoint_id"].startswith("fal-ai/minimax/hailuo-02")


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_what_the_pipeline_sends_is_what_fal_s_document_accepts(path):
    f = load(path)
    profile = get_profile(f["endpoint_id"])
    fields = f["input"]["fields"]
    known = set(fields) | {n for n in profile.input.properties if n in " ".join(profile.unconfirmed)}
    # the page's required inputs and its defaults pass the profile's validation (the simulator's 422 check)
    body = {n: "https://example.com/a.png" if n.endswith("_url") else "a lighthouse"
            for n in f["input"]["required"]}
    body |= {n: d["default"] for n, d in fields.items() if "default" in d and n in profile.input.properties}
    assert profile.payload_problems(body) == []
    # a value outside one of the page's enums is refused
    for name, doc in fields.items():
        if doc.get("enum") and name in profile.input.properties:
            assert profile.payload_problems({**body, name: "no-such-value"}), name
    # each catalog duration goes out as a value of the page's enum ("8s" for 8 on Veo, "5" for 5 on Kling)
    spec = fields.get(profile.catalog_mapping.get("duration") or "", {})
    for seconds in profile.allowed("duration") or []:
        sent = profile.payload(prompt="p", image_url="https://example.com/a.png", duration=seconds)
        wire = sent[profile.catalog_mapping["duration"]]
        if "enum" in spec:
            assert wire in spec["enum"], (seconds, wire)
        assert set(sent) <= known
    if profile.catalog_mapping.get("end_image"):
        sent = profile.payload(prompt="p", image_url="https://example.com/a.png",
                               end_image_url="https://example.com/b.png")
        assert sent[profile.catalog_mapping["end_image"]] == "https://example.com/b.png" and set(sent) <= known


def test_seedance_s_token_price_gives_fal_s_stated_720p_rate():
    """fal: $0.014 per 1,000 tokens, tokens = height × width × seconds × 24 / 1024, "$0.3024/second" at 720p."""
    f = load(next(p for p in FIXTURES if "seedance" in p.name))
    prices = PriceTable.from_profile(get_profile(f["endpoint_id"]))
    stated = f["price"]["per_second_stated"]["720p"]
    assert estimate_cost(prices, resolution="720p", duration_s=5, byo_openai_key=False) == pytest.approx(5 * stated)
    assert estimate_cost(prices, resolution="720p", duration_s=5, byo_openai_key=False, aspect_ratio="9:16") \
        == pytest.approx(5 * stated)


def test_the_simulator_takes_fal_s_own_auto_duration_for_seedance(simulator):
    """A body with Seedance's `duration: "auto"` (fal's default, not a catalog value) is accepted and made at the
    profile's default length rather than failing the job."""
    import httpx

    seedance = "bytedance/seedance-2.0/image-to-video"
    from sora_pipeline.simulator.endpoint_inputs import video_shape

    profile = get_profile(seedance)
    assert video_shape(profile, {"image_url": "https://example.com/a.png", "duration": "auto"})[3] == 5.0
    body = {"prompt": "p", "image_url": "https://example.com/a.png", "duration": "auto"}
    with httpx.Client(timeout=10, headers={"Authorization": "Key k"}) as c:
        assert c.post(f"{simulator.base_url}/{seedance}", json=body).status_code == 200
