"""One catalog, many models: a row's optional `endpoint_id` picks its endpoint (null → SORA_ENDPOINT_ID). Each
row is checked against its own endpoint's profile; request keys, prices, payloads and the queue client follow the
row's endpoint; the account's in-flight cap stays one cap for all of them; every table carries `endpoint_id`; an
endpoint fal no longer lists has its rows rejected before any spend while the others run. All over HTTP against
the simulator (which checks each payload against its endpoint's schema), through real Dagster materializations."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.pipeline_helpers import check_results
from tests.support.fixtures import DAY, make_project, materialize_day, resources
from sora_pipeline.endpoints import get_profile
from sora_pipeline.generation.costs import PriceTable, estimate_cost
from sora_pipeline.generation.registry_check import ERROR_TYPE
from sora_pipeline.ledger import request_key
from sora_pipeline.fal.inputs import load_image_input
from sora_pipeline.warehouse.tables import read_day_partition

SORA_PRO = "fal-ai/sora-2/image-to-video/pro"
WAN = "fal-ai/wan/v2.7/image-to-video"  # takes an end frame
KLING3 = "fal-ai/kling-video/v3/pro/image-to-video"  # durations as strings ("5")
VEO = "fal-ai/veo3.1/image-to-video"  # durations as strings with units ("8s")
HAILUO = "fal-ai/minimax/hailuo-2.3/standard/image-to-video"  # priced per video
FIXTURES = Path(__file__).parent / "fixtures" / "endpoints"
SCHEMA = pa.schema([("item_id", pa.string()), ("prompt", pa.string()), ("image_uri", pa.string()),
                    ("scheduled_date", pa.date32()), ("duration", pa.int64()), ("end_image_uri", pa.string()),
                    ("endpoint_id", pa.string())])


def row(item_id: str, endpoint: str | None, duration: int | None, end: str | None = None) -> dict:
    return {"item_id": item_id, "prompt": f"a harbour at dawn, {item_id}", "image_uri": "../images/land.png",
            "scheduled_date": dt.date.fromisoformat(DAY), "duration": duration, "end_image_uri": end,
            "endpoint_id": endpoint}


ROWS = [row("sora-a", None, 4), row("sora-b", SORA_PRO, 8), row("wan-end", WAN, 5, end="../images/port.png"),
        row("kling", KLING3, 5), row("veo", VEO, 8), row("hailuo", HAILUO, 6),
        row("nowhere", "fal-ai/not-a-model/image-to-video", 5), row("hailuo-4s", HAILUO, 4)]


def table(project: dict, name: str) -> dict[str, dict]:
    return {r["item_id"]: r for r in read_day_partition(project["warehouse_uri"], name, DAY).to_pylist()}


def write(project: dict, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), f"{project['catalog_uri']}/part-0.parquet")


def test_a_day_mixing_five_endpoints_runs_each_row_on_its_own(tmp_path, make_simulator):
    sim = make_simulator(run_latency=0.3)
    project = make_project(tmp_path, rows=[])
    write(project, ROWS)
    res = resources(sim.base_url, project, endpoint_id=SORA_PRO, inflight_cap=2, max_concurrency=8)
    result = materialize_day(res)
    assert result.success
    # every check holds on the mixed day (two rows are rejected on purpose; the money check may warn: an `auto`
    # estimate is the dearest tier)
    assert all(v for k, v in check_results(result).items() if k not in ("fal_billing_matches_estimate", "no_rejected_rows")), \
        check_results(result)

    rejected = table(project, "rejected_items")
    assert set(rejected) == {"nowhere", "hailuo-4s"}
    assert rejected["nowhere"]["field"] == "endpoint_id" and "not-a-model" in rejected["nowhere"]["reason"]
    assert "known:" in rejected["nowhere"]["reason"] and "\n" not in rejected["nowhere"]["reason"]
    assert rejected["hailuo-4s"]["field"] == "duration" and rejected["hailuo-4s"]["endpoint_id"] == HAILUO
    assert rejected["nowhere"]["endpoint_id"] == "fal-ai/not-a-model/image-to-video"

    items = table(project, "catalog_items")
    want = {"sora-a": SORA_PRO, "sora-b": SORA_PRO, "wan-end": WAN, "kling": KLING3, "veo": VEO, "hailuo": HAILUO}
    assert {k: v["endpoint_id"] for k, v in items.items()} == want
    gens = table(project, "generations")
    assert {k: v["endpoint_id"] for k, v in gens.items()} == want
    assert all(g["status"] == "completed" for g in gens.values()), {k: g["error_message"] for k, g in gens.items()}
    videos = table(project, "video_metadata")
    assert {k: v["endpoint_id"] for k, v in videos.items()} == want

    # each endpoint got its own payload shape at its own URL
    jobs = {j.submitted_input["prompt"].rsplit(", ", 1)[1]: j for j in sim.app.sim.book.jobs.values()}
    assert {k: j.endpoint for k, j in jobs.items()} == want
    assert jobs["sora-a"].submitted_input["duration"] == 4
    assert jobs["kling"].submitted_input["duration"] == "5" and "start_image_url" in jobs["kling"].submitted_input
    assert jobs["veo"].submitted_input["duration"] == "8s"
    assert jobs["wan-end"].submitted_input["end_image_url"].startswith("data:image/png;base64,")
    assert all("end_image_url" not in j.submitted_input for k, j in jobs.items() if k != "wan-end")
    # one account cap over every endpoint (2 in flight at most), not one per endpoint
    assert sim.stats()["max_in_flight_seen"] <= 2 and sim.stats()["submits"] == 6

    # prices and request keys follow the row's endpoint; default rows keep the keys ledgers always had
    image = load_image_input(str(tmp_path / "data/images/land.png"))
    for item_id, endpoint in want.items():
        profile = get_profile(endpoint)
        asked = next(r for r in ROWS if r["item_id"] == item_id)
        cost = estimate_cost(PriceTable.from_profile(profile), resolution=items[item_id]["resolution"],
                             duration_s=asked["duration"], byo_openai_key=False, audio=profile.audio_on(None),
                             aspect_ratio=items[item_id]["aspect_ratio"])
        assert gens[item_id]["estimated_cost"] == pytest.approx(cost), item_id
    assert gens["hailuo"]["estimated_cost"] == pytest.approx(0.28)  # per video, not per second
    assert gens["sora-a"]["request_key"] == request_key(
        SORA_PRO, item_id="sora-a", prompt="a harbour at dawn, sora-a", resolution="auto", aspect_ratio="auto",
        duration=4, image_sha256=image.sha256, backend="simulator")

    # and against fal's own documents (hand transcriptions, not our profiles): only the page's inputs, in its enums
    checked = 0
    for item_id, job in jobs.items():
        fixture = FIXTURES / f"{job.endpoint.replace('/', '__')}.json"
        if fixture.exists():
            assert fal_document_problems(json.loads(fixture.read_text()), job.submitted_input) == [], item_id
            checked += 1
    assert checked == 4  # Wan, Kling 3, Veo 3.1, Hailuo 2.3 (Sora's page is not transcribed)

    again = materialize_day(res)
    assert again.success and sim.stats()["submits"] == 6  # every endpoint's rows reused: never paid twice


def fal_document_problems(document: dict, body: dict) -> list[str]:
    """What in a submitted body fal's page (its transcription) does not allow: an input the page does not list
    (unless the profile names it unconfirmed), a value outside the page's enum, text over its maxLength."""
    profile = get_profile(document["endpoint_id"])
    fields, unconfirmed = document["input"]["fields"], " ".join(profile.unconfirmed)
    problems = [f"{name}: not an input on fal's page" for name in body
                if name not in fields and name not in unconfirmed]
    for name, value in body.items():
        spec = fields.get(name, {})
        if "enum" in spec and value not in spec["enum"]:
            problems.append(f"{name}: {value!r} not in {spec['enum']}")
        if "maxLength" in spec and isinstance(value, str) and len(value) > spec["maxLength"]:
            problems.append(f"{name}: over {spec['maxLength']} characters")
    return problems


def test_a_retired_endpoint_s_rows_are_rejected_before_spend_while_the_others_run(tmp_path, make_simulator):
    sim = make_simulator(run_latency=0.2, retired_endpoints=(KLING3,), deprecated_endpoints=(VEO,))
    project = make_project(tmp_path, rows=[])
    write(project, [row("sora", None, 4), row("kling-1", KLING3, 5), row("kling-2", KLING3, 10), row("veo", VEO, 8)])
    result = materialize_day(resources(sim.base_url, project, endpoint_id=SORA_PRO))
    assert result.success
    gens = table(project, "generations")
    assert gens["sora"]["status"] == gens["veo"]["status"] == "completed"
    for k in ("kling-1", "kling-2"):
        assert gens[k]["decision"] == "rejected" and gens[k]["error_type"] == ERROR_TYPE
        assert KLING3 in gens[k]["error_message"] and gens[k]["endpoint_id"] == KLING3
        assert gens[k]["request_key"] is None and gens[k]["estimated_cost"] == 0.0
    assert {j.endpoint for j in sim.app.sim.book.jobs.values()} == {SORA_PRO, VEO}  # nothing sent to Kling
    mats = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "generations"]
    meta = {k: getattr(v, "value", v) for k, v in mats[0].materialization.metadata.items()}
    assert f"{KLING3}: absent" in meta["endpoint_status"] and f"{VEO}: deprecated" in meta["endpoint_status"]
    assert f"{SORA_PRO}: active" in meta["endpoint_status"]


def test_a_catalog_day_naming_an_endpoint_without_a_profile_stops_before_spend(tmp_path, make_simulator):
    """The profiles changed between the catalog step and the generations step: one line naming the endpoint and
    what to do, nothing planned or sent."""
    from sora_pipeline.warehouse.schemas import CATALOG_ITEMS

    sim = make_simulator(run_latency=0.1)
    project = make_project(tmp_path, rows=[])
    write(project, [row("sora", None, 4), row("kling", KLING3, 5)])
    res = resources(sim.base_url, project, endpoint_id=SORA_PRO)
    assert materialize_day(res).success and sim.stats()["submits"] == 2
    items = read_day_partition(project["warehouse_uri"], "catalog_items", DAY).to_pylist()
    items[1]["endpoint_id"], items[1]["item_id"] = "fal-ai/gone/image-to-video", "gone"
    res["warehouse"].write(CATALOG_ITEMS, DAY, items)
    result = materialize_day(res, selection="generations", raise_on_error=False)
    assert not result.success and sim.stats()["submits"] == 2
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    text = failure.event_specific_data.error.message
    assert "fal-ai/gone/image-to-video" in text and "catalog step" in text
