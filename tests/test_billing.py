"""fal's billed cost beside our estimate: reconciling a day's requests with billing events (pure rules here; the
end-to-end path over HTTP against the simulator's platform API is further down)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sora_pipeline.billing.reconcile import KnownRequest, billing_window, event_cost, findings, reconcile

DAY = "2026-11-20"
NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)
T0 = datetime(2026, 12, 6, 9, tzinfo=UTC)


def known(rid: str, estimate: float = 1.0, units: float | None = None, price: float | None = None) -> KnownRequest:
    return KnownRequest(request_id=rid, item_id=f"item-{rid}", endpoint_id="fal-ai/x", backend="fal",
                        estimated_cost=estimate, submitted_at=T0, completed_at=T0 + timedelta(minutes=2),
                        billed_units=units, unit_price=price)


def event(rid: str, total: float | None, at: datetime = T0, **extra) -> dict:
    return {"request_id": rid, "endpoint_id": "fal-ai/x", "timestamp": at.isoformat(), "cost_total": total, **extra}


def test_each_source_in_order_and_never_a_guess():
    rows = reconcile([known("a"), known("b", units=4, price=0.25), known("c")],
                     [event("a", 0.9, output_units=4, unit_price=0.25, percent_discount=10)],
                     day=DAY, ledger_knows={"a", "b", "c"}, now=NOW)
    by = {r["request_id"]: r for r in rows}
    assert (by["a"]["billing_source"], by["a"]["billed_cost_usd"], by["a"]["billed_units"]) == ("billing_events",
                                                                                                 0.9, 4)
    assert (by["b"]["billing_source"], by["b"]["billed_cost_usd"]) == ("billable_units", 1.0)
    assert (by["c"]["billing_source"], by["c"]["billed_cost_usd"]) == (None, None)  # billing lags: null


def test_spend_the_ledger_never_submitted_is_listed_once_on_the_day_it_was_billed():
    on_day = datetime(2026, 11, 20, 15, tzinfo=UTC)
    rows = reconcile([known("a")], [event("a", 1.0), event("x", 5.0, at=on_day), event("y", 2.0),
                                    event("other-day", 1.0)],
                     day=DAY, ledger_knows={"a", "other-day"}, now=NOW)
    foreign = [r for r in rows if not r["known_to_ledger"]]
    assert [r["request_id"] for r in foreign] == ["x"] and foreign[0]["item_id"] is None


@pytest.mark.parametrize("event_fields, cost", [
    ({"cost_total": 1.5}, 1.5),
    ({"cost_estimate_nano_usd": 1_500_000_000}, 1.5),
    ({"cost_subtotal": 2.0, "cost_discount": 0.5}, 1.5),
    ({"output_units": 10, "unit_price": 0.2, "percent_discount": 25}, 1.5),
    ({"output_units": None, "unit_price": 0.2}, None),
])
def test_event_cost_from_whatever_fields_fal_sent(event_fields, cost):
    assert event_cost(event_fields) == pytest.approx(cost) if cost is not None else event_cost(event_fields) is None


def test_findings_name_the_outliers_and_the_unknown_requests():
    rows = reconcile([known("a", 1.0), known("b", 1.0), known("c", 1.0)],
                     [event("a", 1.0), event("b", 3.5), event("z", 1.0, at=datetime(2026, 11, 20, tzinfo=UTC))],
                     day=DAY, ledger_knows={"a", "b", "c"}, now=NOW)
    f = findings(rows)
    assert f.outliers == ["b"] and f.unknown == ["z"] and f.pending == 1
    assert f.billed == pytest.approx(4.5) and f.estimated == pytest.approx(2.0)


def test_the_window_covers_the_day_and_every_request_but_not_the_future():
    start, end = billing_window([known("a")], DAY, NOW)
    assert start == datetime(2026, 11, 20, tzinfo=UTC)
    assert end == NOW + timedelta(minutes=10)  # the request ended 3 h ago: the 6 h lag reaches past now


# -------------------------------------------------------------------------------- over HTTP, through Dagster
def test_generations_record_billable_units_and_outputs_beyond_the_video(tmp_path, simulator):
    """fal's units of each result (the simulator answers `x-fal-billable-units` = seconds) × the unit price of the
    output's tier → billed_cost_usd with its source; Sora's thumbnail/spritesheet URLs in their columns."""
    from sora_pipeline.warehouse.tables import read_day_partition
    from tests.pipeline_helpers import materializations
    from tests.support.fixtures import DAY as PIPELINE_DAY, make_project, materialize_day, resources

    project = make_project(tmp_path)
    result = materialize_day(resources(simulator.base_url, project))
    assert result.success
    rows = read_day_partition(project["warehouse_uri"], "generations", PIPELINE_DAY).to_pylist()
    for row in rows:
        assert row["billed_units"] == row["seconds_generated"] and row["billing_source"] == "billable_units"
        tier = 0.5 if min(*_size(row)) >= 1080 else 0.3  # Sora 2 Pro: per second, by the output's short side
        assert row["unit_price_usd"] == tier
        assert row["billed_cost_usd"] == pytest.approx(row["billed_units"] * tier)
        assert row["thumbnail_url"].endswith("-thumbnail.jpg") and row["spritesheet_url"].endswith(".jpg")
        assert row["seed"] is None and row["outputs_json"] is None
    billing = read_day_partition(project["warehouse_uri"], "fal_billing", PIPELINE_DAY).to_pylist()
    assert {r["request_id"] for r in billing} == {r["request_id"] for r in rows}
    assert {r["billing_source"] for r in billing} == {"billable_units"} and {r["backend"] for r in billing} == \
        {"simulator"}
    (gen,) = materializations(result, "generations")
    assert gen.metadata["billed_cost_usd"].value == pytest.approx(sum(r["billed_cost_usd"] for r in rows))
    assert gen.metadata["cost_backend"].value == "simulator"
    (stats,) = materializations(result, "generation_daily_stats")
    assert "billed_cost_usd" not in stats.metadata  # fal's only: the simulator's figures are never added


def _size(row: dict) -> tuple[int, int]:
    import json

    probe = json.loads(row["probe_json"])
    return probe["width"], probe["height"]


def test_the_billing_schedule_rereads_the_two_previous_days():
    import dagster as dg

    from sora_pipeline.defs.automation import billing_schedule

    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 22, 0, 45, tzinfo=UTC))
    requests = list(billing_schedule(context))
    assert sorted(r.partition_key for r in requests) == ["2026-11-20", "2026-11-21"]
    assert len({r.run_key for r in requests}) == 2


def test_the_money_check_names_outliers_and_unknown_spend_and_warns_on_drift():
    import dagster as dg

    from sora_pipeline.defs.assets.billing import money_check

    def row(rid, est, billed, known=True, backend="fal"):
        return dict(request_id=rid, item_id=f"i-{rid}" if known else None, endpoint_id="fal-ai/x",
                    backend=backend if known else None, estimated_cost_usd=est, billed_cost_usd=billed,
                    known_to_ledger=known)

    ok = money_check([row("a", 1.0, 1.02), row("b", 1.0, None)])
    assert ok.passed
    drift = money_check([row("a", 1.0, 0.8), row("b", 1.0, 0.8)])
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.WARN and "-20.0%" in drift.description
    bad = money_check([row("a", 1.0, 3.5), row("z", None, 4.0, known=False)])
    assert not bad.passed and bad.severity == dg.AssetCheckSeverity.ERROR
    text = bad.metadata["findings"].value
    assert "request a (item i-a) billed $3.50, more than 3× its estimate $1.00" in text
    assert "fal billed request z" in text and "never submitted" in text
    sim_only = money_check([row("s", 1.0, 0.5, backend="simulator")])  # judged, but apart from fal's figures
    assert "simulator_billed_usd" in sim_only.metadata and "fal_billed_usd" not in sim_only.metadata


def _today_project(tmp_path, n: int = 3):
    from tests.support.fixtures import catalog_rows, make_project

    today = datetime.now(UTC).date().isoformat()
    # uniform 720p rows: the estimate is what fal would charge before any discount
    rows = [dict(r, resolution="720p", aspect_ratio="16:9", duration=4) for r in catalog_rows(day=today, n=n)]
    return today, make_project(tmp_path, rows)


def test_fal_billing_from_billing_events_with_an_admin_key(tmp_path, make_simulator):
    """The simulator's platform API with a 10 % discount, one job billed 10× and one billing event for a request
    nobody submitted here: fal_billing takes fal's figures (billing_events), the check fails naming the outlier and
    the foreign request, and billing events are read in one call (no call per request)."""
    from sora_pipeline.warehouse.tables import read_day_partition
    from tests.support.fixtures import materialize_day, resources
    from tests.pipeline_helpers import check_results, materializations

    sim = make_simulator(admin_keys=["admin-secret-0123456789"], billing_discount_percent=10.0,
                         billing_outlier=10.0, billing_outlier_job=2, billing_foreign_requests=1,
                         endpoint_ids=("fal-ai/sora-2/image-to-video/pro",))  # the foreign spend: same endpoint
    today, project = _today_project(tmp_path)
    result = materialize_day(resources(sim.base_url, project, admin_key="admin-secret-0123456789"), day=today)
    assert result.success
    rows = read_day_partition(project["warehouse_uri"], "fal_billing", today).to_pylist()
    known = [r for r in rows if r["known_to_ledger"]]
    foreign = [r for r in rows if not r["known_to_ledger"]]
    assert len(known) == 3 and len(foreign) == 1 and foreign[0]["item_id"] is None
    assert {r["billing_source"] for r in rows} == {"billing_events"}
    ratios = sorted(r["billed_cost_usd"] / r["estimated_cost_usd"] for r in known)
    assert ratios == pytest.approx([0.9, 0.9, 9.0])  # the discount, and the outlier's 10 units per unit
    outlier = next(r for r in known if r["billed_cost_usd"] > 3 * r["estimated_cost_usd"])
    (check,) = [e.event_specific_data for e in result.all_events
                if e.event_type_value == "ASSET_CHECK_EVALUATION"
                and e.event_specific_data.check_name == "fal_billing_matches_estimate"]
    assert not check.passed and check.severity.value == "ERROR"
    findings_md = check.metadata["findings"].value
    assert outlier["request_id"] in findings_md and foreign[0]["request_id"] in findings_md
    (mat,) = materializations(result, "fal_billing")
    assert "in 1 call(s)" in mat.metadata["source"].value
    assert sim.stats()["platform_calls"].get("/v1/models/billing-events") == 1, sim.stats()["platform_calls"]
    assert "admin-secret" not in str(mat.metadata) and check_results(result)


def test_an_ordinary_key_on_billing_events_falls_back_to_billable_units(tmp_path, make_simulator):
    from sora_pipeline.warehouse.tables import read_day_partition
    from tests.support.fixtures import materialize_day, resources
    from tests.pipeline_helpers import materializations

    sim = make_simulator(admin_keys=["the-admin-key-0123456789"])
    today, project = _today_project(tmp_path, n=2)
    result = materialize_day(resources(sim.base_url, project, admin_key="not-an-admin-key-0123456789"), day=today)
    assert result.success
    rows = read_day_partition(project["warehouse_uri"], "fal_billing", today).to_pylist()
    assert {r["billing_source"] for r in rows} == {"billable_units"}
    (mat,) = materializations(result, "fal_billing")
    assert "billing events unavailable" in mat.metadata["source"].value
    assert "not-an-admin-key" not in mat.metadata["source"].value


def test_endpoint_comparison_over_a_range(tmp_path, simulator):
    """Two endpoints' days in one warehouse: the DuckDB view compares them (videos, success, latency, estimated and
    billed cost per video-second, probed sizes); the range function restricts the days."""
    from sora_pipeline.analytics.query import connect, endpoint_comparison_for
    import datetime as dt

    from tests.support.fixtures import catalog_rows, make_project, materialize_day, resources, write_catalog

    project = make_project(tmp_path, catalog_rows(day="2026-11-20", n=2))
    assert materialize_day(resources(simulator.base_url, project), day="2026-11-20").success
    hailuo = "fal-ai/minimax/hailuo-02/standard/image-to-video"
    write_catalog(project["catalog_uri"], [
        {"item_id": f"h{i}", "prompt": f"hailuo {i}", "image_uri": "../images/land.png",
         "scheduled_date": dt.date(2026, 11, 21), "resolution": None, "aspect_ratio": None, "duration": 6}
        for i in range(2)])
    assert materialize_day(resources(simulator.base_url, project, endpoint_id=hailuo), day="2026-11-21").success
    con = connect(project["warehouse_uri"])
    rows = {r[0]: r for r in con.execute("SELECT endpoint_id, videos, success_rate, billed_cost_usd, "
                                         "estimated_usd_per_video_second, probed_sizes FROM endpoint_comparison")
            .fetchall()}
    assert set(rows) == {"fal-ai/sora-2/image-to-video/pro", hailuo}
    assert all(r[1] == 2 and r[2] == 1.0 and r[4] > 0 and r[5] for r in rows.values())
    only_first = endpoint_comparison_for(con, "2026-11-20", "2026-11-20")
    assert [r["endpoint_id"] for r in only_first] == ["fal-ai/sora-2/image-to-video/pro"]
