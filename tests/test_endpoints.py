"""Endpoints as profiles: every shipped profile runs a day end to end against the simulator (which speaks each
profile's schema), a catalog value one endpoint accepts and another refuses shows both behaviours, `params` reach the
request and its key, and an unknown endpoint fails at load with the known ones."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.fixtures import DAY, make_project, materialize_day, resources, write_images
from tests.pipeline_helpers import check_results
from sora_pipeline.catalog import read_catalog_day
from sora_pipeline.defs.resources import FalVideoResource
from sora_pipeline.defs.settings import ConfigError, PipelineSettings
from sora_pipeline.endpoints import EndpointSet, UnknownEndpoint, get_profile, known_endpoints
from sora_pipeline.generation.costs import PriceTable, estimate_cost
from sora_pipeline.ledger import request_key
from sora_pipeline.warehouse.tables import read_day_partition

SORA_PRO = "fal-ai/sora-2/image-to-video/pro"
KLING = "fal-ai/kling-video/v2.1/standard/image-to-video"
HAILUO = "fal-ai/minimax/hailuo-02/standard/image-to-video"
SCHEMA = pa.schema([("item_id", pa.string()), ("prompt", pa.string()), ("image_uri", pa.string()),
                    ("scheduled_date", pa.date32()), ("resolution", pa.string()), ("aspect_ratio", pa.string()),
                    ("duration", pa.int64()), ("params", pa.string())])


def rows_for(profile, n: int = 2) -> list[dict]:
    """Rows each of which this endpoint accepts: its own allowed values, cycled."""
    durations = profile.allowed("duration") or [None]
    resolutions = profile.allowed("resolution") or [None]
    aspects = profile.allowed("aspect_ratio") or [None]
    d = dt.date.fromisoformat(DAY)
    return [{"item_id": f"e{i}", "prompt": f"a lighthouse at dusk, take {i}", "image_uri": "../images/land.png",
             "scheduled_date": d, "resolution": resolutions[i % len(resolutions)],
             "aspect_ratio": aspects[(i + 1) % len(aspects)], "duration": durations[i % len(durations)],
             "params": None} for i in range(n)]


def write_rows(project: dict, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), f"{project['catalog_uri']}/part-0.parquet")


@pytest.mark.parametrize("endpoint_id", known_endpoints())
def test_a_day_runs_end_to_end_on_every_shipped_profile(endpoint_id, tmp_path, simulator):
    profile = get_profile(endpoint_id)
    project = make_project(tmp_path, rows=[])
    rows = rows_for(profile, n=2)
    write_rows(project, rows)
    result = materialize_day(resources(simulator.base_url, project, endpoint_id=endpoint_id))
    assert result.success
    # the money check may warn (an `auto` estimate is the dearest tier): tests/test_billing.py covers it
    assert all(v for k, v in check_results(result).items() if k != "fal_billing_matches_estimate"), \
        check_results(result)
    videos = read_day_partition(project["warehouse_uri"], "video_metadata", DAY).to_pylist()
    assert sorted(v["item_id"] for v in videos) == ["e0", "e1"]
    for v in videos:
        assert v["endpoint_id"] == endpoint_id and v["backend"] == "simulator"
        asked = next(r for r in rows if r["item_id"] == v["item_id"])
        seconds = profile.seconds_of(asked["duration"])
        assert abs(v["duration"] - seconds) < 0.1 and v["requested_duration"] == int(seconds)
        assert min(v["width"], v["height"]) == profile.height_of(asked["resolution"] or profile.default("resolution"))
        assert (v["video_id"] is not None) == (profile.output.id_field is not None)
    gens = read_day_partition(project["warehouse_uri"], "generations", DAY).to_pylist()
    prices = PriceTable.from_profile(profile)
    for g in gens:
        asked = next(r for r in rows if r["item_id"] == g["item_id"])
        want = estimate_cost(prices, resolution=asked["resolution"] or profile.default("resolution"),
                             duration_s=profile.seconds_of(asked["duration"]), byo_openai_key=False,
                             audio=profile.audio_on(None), aspect_ratio=asked["aspect_ratio"])
        assert g["estimated_cost"] == pytest.approx(want)
    stats = simulator.stats()
    assert stats["submits"] == 2
    again = materialize_day(resources(simulator.base_url, project, endpoint_id=endpoint_id))
    assert again.success and simulator.stats()["submits"] == 2  # reused from the ledger: never paid twice


def test_an_audio_switch_in_params_reaches_the_request_and_its_price(tmp_path, simulator):
    """Kling 3 Pro: `generate_audio: false` in a row's params is sent as such and priced at the silent rate."""
    kling3 = "fal-ai/kling-video/v3/pro/image-to-video"
    project = make_project(tmp_path, rows=[])
    d = dt.date.fromisoformat(DAY)
    rows = [{"item_id": "loud", "prompt": "a bell", "image_uri": "../images/land.png", "scheduled_date": d,
             "resolution": None, "aspect_ratio": None, "duration": 8, "params": None},
            {"item_id": "quiet", "prompt": "a bell", "image_uri": "../images/land.png", "scheduled_date": d,
             "resolution": None, "aspect_ratio": None, "duration": 8, "params": '{"generate_audio": false}'}]
    write_rows(project, rows)
    result = materialize_day(resources(simulator.base_url, project, endpoint_id=kling3))
    assert result.success and check_results(result)["fal_billing_matches_estimate"]  # billed with audio too
    gens = {g["item_id"]: g for g in read_day_partition(project["warehouse_uri"], "generations", DAY).to_pylist()}
    assert gens["loud"]["estimated_cost"] == pytest.approx(8 * 0.336)
    assert gens["quiet"]["estimated_cost"] == pytest.approx(8 * 0.224)
    sent = {j.submitted_input.get("generate_audio", "default"): j.submitted_input
            for j in simulator.app.sim.book.jobs.values()}
    assert set(sent) == {False, "default"} and sent[False]["duration"] == "8"
    assert "start_image_url" in sent[False] and "image_url" not in sent[False]


def test_an_end_frame_is_allowlisted_sent_and_keyed_only_where_the_endpoint_takes_one(tmp_path, simulator):
    """Wan 2.7 takes an end frame: the catalog's `end_image_uri` is resolved like `image_uri`, sent as
    `end_image_url`, and makes its own request key; Hailuo 2.3 has none: such a row is rejected in one line; a
    path outside the catalog folder is refused as for `image_uri`."""
    wan, hailuo = "fal-ai/wan/v2.7/image-to-video", "fal-ai/minimax/hailuo-2.3/standard/image-to-video"
    schema = SCHEMA.append(pa.field("end_image_uri", pa.string()))
    d = dt.date.fromisoformat(DAY)

    def row(item_id, end, duration):
        return {"item_id": item_id, "prompt": "a door opens", "image_uri": "../images/land.png",
                "scheduled_date": d, "resolution": None, "aspect_ratio": None, "duration": duration,
                "params": None, "end_image_uri": end}

    project = make_project(tmp_path / "wan", rows=[])
    pq.write_table(pa.Table.from_pylist([row("plain", None, 5), row("ends", "../images/port.png", 5),
                                         row("escape", "/etc/passwd", 5)], schema=schema),
                   f"{project['catalog_uri']}/part-0.parquet")
    assert materialize_day(resources(simulator.base_url, project, endpoint_id=wan)).success
    rejected = read_day_partition(project["warehouse_uri"], "rejected_items", DAY).to_pylist()
    assert [(r["item_id"], r["field"]) for r in rejected] == [("escape", "end_image_uri")]
    gens = {g["item_id"]: g for g in read_day_partition(project["warehouse_uri"], "generations", DAY).to_pylist()}
    assert gens["plain"]["status"] == gens["ends"]["status"] == "completed"
    sent = {j.submitted_input["prompt"] and ("end_image_url" in j.submitted_input): j.submitted_input
            for j in simulator.app.sim.book.jobs.values() if j.endpoint == wan}
    assert sent[True]["end_image_url"].startswith("data:image/png;base64,") and False in sent
    # the row without an end frame keeps the key it had before end frames existed
    items = {i.item_id: i for i in read_catalog_day(project["catalog_uri"], DAY, endpoints=EndpointSet.only(get_profile(wan))).valid}
    assert items["plain"].end_image_ref is None and items["ends"].end_image_ref.endswith("port.png")
    assert gens["plain"]["request_key"] != gens["ends"]["request_key"]

    project2 = make_project(tmp_path / "hailuo", rows=[])
    pq.write_table(pa.Table.from_pylist([row("ends", "../images/port.png", 6)], schema=schema),
                   f"{project2['catalog_uri']}/part-0.parquet")
    assert materialize_day(resources(simulator.base_url, project2, endpoint_id=hailuo)).success
    rejected = read_day_partition(project2["warehouse_uri"], "rejected_items", DAY).to_pylist()
    assert len(rejected) == 1 and rejected[0]["field"] == "end_image_uri"
    assert f"{hailuo} takes no end frame" in rejected[0]["reason"] and "\n" not in rejected[0]["reason"]


def test_a_value_one_endpoint_accepts_and_another_refuses(tmp_path):
    """duration 4 is Sora's and not Kling's; 10 is Kling's and not Sora's: each endpoint keeps its own rows and
    rejects the others with its allowed values."""
    project = make_project(tmp_path, rows=[])
    d = dt.date.fromisoformat(DAY)
    rows = [{"item_id": f"d{n}", "prompt": "waves", "image_uri": "../images/land.png", "scheduled_date": d,
             "resolution": None, "aspect_ratio": None, "duration": n, "params": None} for n in (4, 10)]
    write_rows(project, rows)
    sora = read_catalog_day(project["catalog_uri"], DAY, endpoints=EndpointSet.only(get_profile(SORA_PRO)))
    kling = read_catalog_day(project["catalog_uri"], DAY, endpoints=EndpointSet.only(get_profile(KLING)))
    assert [i.item_id for i in sora.valid] == ["d4"] and [i.item_id for i in kling.valid] == ["d10"]
    assert sora.rejected[0].field == "duration" and sora.rejected[0].reason == (
        f"row 1 (item_id='d10'): duration: 10 is not one of 4, 8, 12 (the values {SORA_PRO} accepts)")
    assert kling.rejected[0].reason == (
        f"row 0 (item_id='d4'): duration: 4 is not one of 5, 10 (the values {KLING} accepts)")
    # Kling has no resolution input: a row asking for one is refused, an empty one is fine
    rows[1]["resolution"] = "1080p"
    write_rows(project, rows)
    kling = read_catalog_day(project["catalog_uri"], DAY, endpoints=EndpointSet.only(get_profile(KLING)))
    assert kling.valid == [] and "has no resolution input" in kling.rejected[1].reason
    # Hailuo's resolutions are its own ("768P"); the catalog's case does not matter
    rows = [dict(rows[0], item_id="h", duration=6, resolution="768p")]
    write_rows(project, rows)
    hailuo = read_catalog_day(project["catalog_uri"], DAY, endpoints=EndpointSet.only(get_profile(HAILUO)))
    assert [(i.resolution, i.duration) for i in hailuo.valid] == [("768P", 6)]


def test_params_reach_the_request_and_its_key_and_bad_params_are_rejected(tmp_path, simulator):
    project = make_project(tmp_path, rows=[])
    d = dt.date.fromisoformat(DAY)
    base = {"prompt": "a fox in snow", "image_uri": "../images/land.png", "scheduled_date": d, "resolution": None,
            "aspect_ratio": None, "duration": 5}
    rows = [dict(base, item_id="plain", params=None),
            dict(base, item_id="tuned", params=json.dumps({"cfg_scale": 0.8, "negative_prompt": "text"})),
            dict(base, item_id="unknown", params=json.dumps({"seed": 3})),
            dict(base, item_id="range", params=json.dumps({"cfg_scale": 7})),
            dict(base, item_id="mapped", params=json.dumps({"duration": "10"})),
            dict(base, item_id="notjson", params="{cfg_scale: 1")]
    write_rows(project, rows)
    result = materialize_day(resources(simulator.base_url, project, endpoint_id=KLING))
    assert result.success
    rejected = {r["item_id"]: r["reason"]
                for r in read_day_partition(project["warehouse_uri"], "rejected_items", DAY).to_pylist()}
    assert set(rejected) == {"unknown", "range", "mapped", "notjson"}
    assert rejected["unknown"].endswith(f"params: 'seed' is not an input of {KLING} (extra inputs: cfg_scale, "
                                        "negative_prompt)")
    assert rejected["range"].endswith("params: cfg_scale: 7 is above the maximum 1")
    assert rejected["mapped"].endswith("params: 'duration' comes from the catalog's duration column, not from params")
    assert "params: is not valid JSON" in rejected["notjson"]
    payloads = [job.payload for job in simulator.app.sim.book.jobs.values()]
    tuned = [p for p in payloads if p.get("cfg_scale") == 0.8]
    assert len(payloads) == 2 and len(tuned) == 1 and tuned[0]["negative_prompt"] == "text"
    assert all(p["duration"] == "5" for p in payloads)  # Kling's durations are strings on the wire
    gens = {g["item_id"]: g for g in read_day_partition(project["warehouse_uri"], "generations", DAY).to_pylist()}
    assert gens["plain"]["request_key"] != gens["tuned"]["request_key"]


def test_sora_keys_are_the_keys_ledgers_already_hold():
    """Profiles changed nothing for Sora 2 Pro requests without params (values from the code before profiles)."""
    args = dict(item_id="a", prompt="hello", resolution="720p", aspect_ratio="16:9", duration=8, image_sha256="ab" * 32)
    assert request_key(SORA_PRO, **args) == "61df9769d6826fa6f0b21fba046050a8c2495703cd88d0b32d81cdf58e9a017d"
    assert request_key(SORA_PRO, **args | dict(resolution="auto", aspect_ratio="auto", duration=4),
                       backend="simulator") == "ff941cd2eef328eefcbec80d56b5fe36c8079f1f0da62dfe3a702de6e406ed83"
    kling = args | dict(resolution=None, aspect_ratio=None, duration=5)
    assert request_key(KLING, **kling, params={"cfg_scale": 0.8}) != request_key(KLING, **kling)
    assert request_key(KLING, **kling, params={}) == request_key(KLING, **kling)
    with pytest.raises(ValueError, match="not an input"):
        request_key(SORA_PRO, **args, params={"cfg_scale": 0.8})


def test_an_end_frame_enters_the_request_key_only_when_there_is_one():
    from sora_pipeline.ledger import RequestSpec

    args = dict(item_id="a", prompt="p", resolution=None, aspect_ratio=None, duration=5, image_sha256="1" * 64)
    wan = "fal-ai/wan/v2.7/image-to-video"
    plain = request_key(wan, **args)
    assert request_key(wan, **args, end_image_sha256=None) == plain
    with_end = request_key(wan, **args, end_image_sha256="2" * 64)
    assert with_end != plain and with_end != request_key(wan, **args, end_image_sha256="3" * 64)
    spec = RequestSpec.create(wan, day=DAY, used_openai_key=False, estimated_cost=0.5, end_image_sha256="2" * 64,
                              **args)
    assert spec.request_key == with_end and spec.spec_json()["end_image_sha256"] == "2" * 64
    assert "end_image_sha256" not in RequestSpec.create(wan, day=DAY, used_openai_key=False, estimated_cost=0.5,
                                                        **args).spec_json()


def test_an_unknown_endpoint_fails_at_load_with_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        PipelineSettings.from_env({"SORA_ENDPOINT_ID": "fal-ai/nope/image-to-video"})
    assert "fal-ai/nope/image-to-video" in str(err.value)
    assert all(e in str(err.value) for e in known_endpoints())
    with pytest.raises(Exception) as err:
        FalVideoResource(endpoint_id="fal-ai/nope/image-to-video")
    assert SORA_PRO in str(err.value)
    with pytest.raises(UnknownEndpoint):
        get_profile("fal-ai/nope/image-to-video")
    assert PipelineSettings.from_env({"SORA_ENDPOINT_ID": KLING}).endpoint_id == KLING


def test_the_simulator_refuses_what_each_endpoint_refuses(simulator):
    import httpx

    write = {"prompt": "x", "image_url": "https://example.com/a.png"}
    with httpx.Client(headers={"Authorization": "Key k"}) as c:
        ok = c.post(f"{simulator.base_url}/{KLING}", json=write | {"duration": "10"})
        assert ok.status_code == 200
        bad = c.post(f"{simulator.base_url}/{KLING}", json=write | {"duration": 4, "resolution": "720p"})
        assert bad.status_code == 422
        assert {tuple(e["loc"]) for e in bad.json()["detail"]} == {("body", "duration"), ("body", "resolution")}
        assert c.post(f"{simulator.base_url}/{SORA_PRO}", json=write | {"duration": 10}).status_code == 422
        assert c.post(f"{simulator.base_url}/{SORA_PRO}", json=write | {"duration": 8}).status_code == 200


def test_the_simulator_takes_each_endpoint_s_own_latency_and_output_fields(make_simulator):
    import httpx

    sim = make_simulator(profile_latency_scale=0.001, run_latency=0.0)
    body = {"prompt": "x", "image_url": "https://example.com/a.png"}
    with httpx.Client(headers={"Authorization": "Key k"}) as c:
        for endpoint in (SORA_PRO, KLING):
            assert c.post(f"{sim.base_url}/{endpoint}", json=body).status_code == 200
    jobs = {j.endpoint: j for j in sim.app.sim.book.jobs.values()}
    assert jobs[SORA_PRO].extra_latency == pytest.approx(0.001 * get_profile(SORA_PRO).video.latency_s)
    assert jobs[KLING].extra_latency == pytest.approx(0.001 * get_profile(KLING).video.latency_s)
    assert "Kling" in (jobs[KLING].summary or "") and "(5s, resolution=-" in jobs[KLING].summary


def test_refresh_against_the_simulator_changes_nothing_for_every_shipped_profile(simulator, tmp_path):
    """The simulator serves each profile's OpenAPI document and price, as fal does; refreshing from it is a no-op."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORA_", "FAL_"))} | {"FAL_KEY": "sim-key-7f3a91"}
    for endpoint in known_endpoints():
        done = subprocess.run([sys.executable, "-m", "sora_pipeline.endpoint_tools", "refresh", endpoint, "--dry-run",
                               "--openapi-url", simulator.base_url, "--api-url", simulator.base_url,
                               "--profiles-dir", str(tmp_path)], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "up to date" in done.stdout and "sim-key-7f3a91" not in done.stdout + done.stderr, done.stdout
    assert list(tmp_path.iterdir()) == []


def test_an_openai_key_is_free_only_where_the_endpoint_takes_it(tmp_path):
    """SORA_OPENAI_API_KEY makes Sora 2 Pro requests free at fal (its `api_key` input); Sora 2 standard has no such
    input, so the same key must not price its requests at $0 (budgets would let everything through)."""
    from sora_pipeline.generation.planning import plan_items
    from sora_pipeline.generation.config import GenerationConfig
    from sora_pipeline.generation.records import WorkItem
    from sora_pipeline.ledger import Ledger

    project = make_project(tmp_path, rows=[])
    write_images(str(tmp_path / "data"))
    item = WorkItem(item_id="k", prompt="a key", image_ref=str(tmp_path / "data/images/land.png"),
                    resolution="720p", aspect_ratio="16:9", duration=4, day=DAY)
    with Ledger.open(project["ledger_url"]) as ledger:
        for endpoint, free in ((SORA_PRO, True), ("fal-ai/sora-2/image-to-video", False)):
            cfg = GenerationConfig(endpoint_id=endpoint, backend="simulator", queue_base_url="http://127.0.0.1:1",
                                   owner="t", day=DAY, openai_api_key="sk-test-not-real",
                                   prices=PriceTable.from_profile(get_profile(endpoint)))
            (planned,) = plan_items([item], cfg, ledger)
            assert planned.spec.used_openai_key is free
            assert planned.spec.estimated_cost == (0.0 if free else pytest.approx(0.4))


# ---- free-text caps ------------------------------------------------------------------------------------------

SORA2 = "fal-ai/sora-2/image-to-video"
PROMPT_CAPS = {SORA_PRO: 5000, SORA2: 5000, KLING: 2500, HAILUO: 2000}


@pytest.mark.parametrize("endpoint_id", sorted(PROMPT_CAPS))
def test_a_prompt_over_the_endpoint_s_cap_is_rejected_naming_the_row(tmp_path, endpoint_id):
    """A 1 MiB prompt (and one character over the cap) is rejected in one line naming the row and the field, on
    the usual https row (the vectorised check) and on a local-image row (the full rules); the cap itself passes."""
    profile, cap = get_profile(endpoint_id), PROMPT_CAPS[endpoint_id]
    project = make_project(tmp_path, rows=[])
    base = rows_for(profile, n=1)[0]
    rows = [dict(base, item_id="mib", prompt="a" * (1 << 20), image_uri="https://example.com/a.png"),
            dict(base, item_id="over", prompt="é" * (cap + 1)),
            dict(base, item_id="at-cap", prompt="b" * cap, image_uri="https://example.com/a.png"),
            dict(base, item_id="at-cap-local", prompt="c" * cap)]
    write_rows(project, rows)
    day = read_catalog_day(project["catalog_uri"], DAY, endpoints=EndpointSet.only(profile))
    assert sorted(i.item_id for i in day.valid) == ["at-cap", "at-cap-local"]
    reasons = {r.item_id: (r.field, r.reason) for r in day.rejected}
    assert reasons["mib"] == ("prompt", f"row 0 (item_id='mib'): prompt: is 1,048,576 characters, over the "
                                        f"{cap:,} that {endpoint_id} accepts")
    assert reasons["over"][0] == "prompt" and reasons["over"][1].startswith("row 1 (item_id='over'): prompt: is ")
    assert len(reasons["mib"][1]) < 200


def test_a_free_text_input_without_a_cap_in_fal_s_document_gets_the_default():
    """A profile whose document gives no maxLength (a user's profile, a refreshed endpoint) caps its free text at
    5,000 characters: the prompt, a free-text `params` input; image URLs (data URIs) and enums are not texts."""
    from sora_pipeline.endpoints.profile import DEFAULT_MAX_TEXT_CHARS, EndpointProfile

    raw = json.loads(json.dumps(get_profile(SORA2).model_dump(by_alias=True, exclude_none=True)))
    raw["input"]["properties"]["prompt"].pop("maxLength")
    raw["input"]["properties"]["style"] = {"type": "string", "description": "free text"}
    profile = EndpointProfile.model_validate(raw)
    assert DEFAULT_MAX_TEXT_CHARS == 5000
    assert profile.text_cap("prompt") == 5000 and profile.text_cap("style") == 5000
    assert profile.text_cap("image_url") is None and profile.text_cap("resolution") is None
    body = profile.payload(prompt="p" * 5001, image_url="data:image/png;base64," + "A" * 20_000)
    assert [(f, m) for f, m, _ in profile.payload_problems(body)] == [("prompt", "must have at most 5000 characters")]
    assert profile.validate_params({"style": "s" * 5001})[1] == "style: must have at most 5000 characters"
    assert profile.validate_params({"style": "s" * 5000})[1] is None


def test_a_megabyte_prompt_is_never_submitted_nor_stored(tmp_path, simulator):
    """Sora 2 Pro's profile had no prompt cap: a 1 MiB prompt was submitted and stored whole in the ledger."""
    project = make_project(tmp_path, rows=[])
    rows = rows_for(get_profile(SORA_PRO), n=2)
    rows[1]["prompt"] = "x" * (1 << 20)
    write_rows(project, rows)
    result = materialize_day(resources(simulator.base_url, project, endpoint_id=SORA_PRO))
    assert result.success
    assert simulator.stats()["submits"] == 1
    assert all(len(job.payload["prompt"]) <= 5000 for job in simulator.app.sim.book.jobs.values())
    rejected = read_day_partition(project["warehouse_uri"], "rejected_items", DAY).to_pylist()
    assert [(r["item_id"], r["reason"].split(": ", 1)[1]) for r in rejected] == [
        ("e1", f"prompt: is 1,048,576 characters, over the 5,000 that {SORA_PRO} accepts")]
    ledger = project["ledger_url"].removeprefix("sqlite:///")
    assert sum(p.stat().st_size for p in Path(ledger).parent.glob(Path(ledger).name + "*")) < (1 << 20)
