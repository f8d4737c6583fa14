"""Price table, estimates, actual cost by probed size, and the budget guard."""

from __future__ import annotations

import math
import threading

import pytest

from sora_pipeline.generation.costs import (
    PRICE_TABLE_ENV, BudgetGuard, PriceTable, PriceTableError, priced_cost, describe, estimate_cost, unit_price,
)
from sora_pipeline.fal.models import Resolution


def test_default_prices_and_estimates():
    p = PriceTable()
    assert p.per_second == {"720p": 0.30, "1080p": 0.50} and p.currency == "USD"
    assert estimate_cost(p, resolution="720p", duration_s=4, byo_openai_key=False) == pytest.approx(1.2)
    assert estimate_cost(p, resolution=Resolution.P1080, duration_s=12, byo_openai_key=False) == pytest.approx(6.0)
    assert estimate_cost(p, resolution="auto", duration_s=8, byo_openai_key=False) == pytest.approx(4.0)
    assert estimate_cost(p, resolution="1080p", duration_s=12, byo_openai_key=True) == 0.0
    with pytest.raises(KeyError):
        estimate_cost(p, resolution="4k", duration_s=4, byo_openai_key=False)
    with pytest.raises(ValueError):
        estimate_cost(p, resolution="720p", duration_s=-1, byo_openai_key=False)


def test_auto_priced_high_or_configured():
    assert PriceTable(per_second={"720p": 0.3, "1080p": 0.5, "480p": 0.1}).rate("auto") == 0.5
    assert PriceTable(auto=0.4).rate("auto") == 0.4
    assert describe(PriceTable())["auto"] == 0.5


def test_priced_cost_by_output_size():
    p = PriceTable()
    assert priced_cost(p, seconds_generated=4, byo_openai_key=False, height=1080, width=1920) == pytest.approx(2.0)
    assert priced_cost(p, seconds_generated=4, byo_openai_key=False, height=1920, width=1080) == pytest.approx(2.0)
    assert priced_cost(p, seconds_generated=4, byo_openai_key=False, height=720, width=1280) == pytest.approx(1.2)
    assert priced_cost(p, seconds_generated=4, byo_openai_key=False, height=1280, width=720) == pytest.approx(1.2)
    assert priced_cost(p, seconds_generated=4, byo_openai_key=False, height=1088) == pytest.approx(2.0)
    assert priced_cost(p, seconds_generated=4, byo_openai_key=False, height=480) == pytest.approx(1.2)
    assert priced_cost(p, seconds_generated=8, byo_openai_key=False, resolution="720p") == pytest.approx(2.4)
    assert priced_cost(p, seconds_generated=8, byo_openai_key=False) == pytest.approx(4.0)  # unknown size: auto
    assert priced_cost(p, seconds_generated=None, byo_openai_key=False, height=1080) is None
    assert priced_cost(p, seconds_generated=12, byo_openai_key=True, height=1080) == 0.0


def test_with_override():
    assert PriceTable.with_override(None) == PriceTable() == PriceTable.with_override("  ")
    assert PriceTable.with_override('{"720p": 0.25, "1080p": 0.6}').per_second == {"720p": 0.25, "1080p": 0.6}
    assert PriceTable.with_override('{"1080p": 0.7, "auto": 0.65}').rate("auto") == 0.65
    full = PriceTable.with_override('{"per_second": {"720p": 1}, "currency": "EUR"}')
    assert full.currency == "EUR" and full.rate("720p") == 1 and full.rate("1080p") == 0.5


@pytest.mark.parametrize("raw,needle", [
    ("{720p: 0.3}", "not valid JSON"),
    ("[0.3, 0.5]", "must be a JSON object"),
    ('{"720p": "cheap"}', "must be a number"),
    ('{"720p": -1}', ">= 0"),
    ('{"720": 0.3}', "must look like"),
    ('{"per_second": 3}', "per_second must be a JSON object"),
    ('{"720p": 0.3, "colour": "red"}', "must look like"),
])
def test_override_errors_are_clear(raw, needle):
    with pytest.raises(PriceTableError, match=PRICE_TABLE_ENV) as exc:
        PriceTable.with_override(raw)
    assert needle in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_budget_guard_caps():
    g = BudgetGuard(per_run_cap=10.0, per_day_cap=None, already_spent_today=0.0)
    assert g.try_reserve(6.0) and not g.try_reserve(4.5) and g.try_reserve(4.0)
    assert g.reserved == pytest.approx(10.0) and g.remaining() == pytest.approx(0.0)
    assert g.try_reserve(0.0)  # BYO-key work costs nothing
    g.release(4.0)
    assert g.remaining() == pytest.approx(4.0)
    d = BudgetGuard(per_run_cap=100.0, per_day_cap=20.0, already_spent_today=15.0)
    assert d.remaining() == pytest.approx(5.0) and not d.try_reserve(6.0) and d.try_reserve(5.0)
    assert BudgetGuard(None, None).remaining() == math.inf and BudgetGuard(None, None).try_reserve(1e6)
    over = BudgetGuard(per_run_cap=None, per_day_cap=5.0, already_spent_today=9.0)
    assert over.remaining() == 0.0 and not over.try_reserve(0.01) and over.try_reserve(0)
    with pytest.raises(ValueError):
        g.try_reserve(-1)
    with pytest.raises(ValueError):
        BudgetGuard(per_run_cap=-1, per_day_cap=None)


def test_budget_guard_threads():
    g = BudgetGuard(per_run_cap=50.0, per_day_cap=80.0, already_spent_today=20.0)  # effective cap 50
    granted: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def run() -> None:
        barrier.wait()
        for _ in range(100):
            ok = g.try_reserve(0.5)
            with lock:
                granted.append(ok)

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 100 and g.reserved == pytest.approx(50.0) and g.remaining() == pytest.approx(0.0)


def test_profile_prices_per_second_per_tier_and_per_video():
    from sora_pipeline.endpoints import get_profile
    from sora_pipeline.endpoints.profile import EndpointProfile

    hailuo = PriceTable.from_profile(get_profile("fal-ai/minimax/hailuo-02/standard/image-to-video"))
    assert estimate_cost(hailuo, resolution="768P", duration_s=10, byo_openai_key=False) == pytest.approx(0.45)
    assert priced_cost(hailuo, seconds_generated=6.0, height=512, width=910, byo_openai_key=False) == \
        pytest.approx(6 * 0.017)
    kling = PriceTable.from_profile(get_profile("fal-ai/kling-video/v2.1/standard/image-to-video"))
    assert estimate_cost(kling, resolution=None, duration_s=5, byo_openai_key=False) == pytest.approx(0.28)
    data = get_profile("fal-ai/kling-video/v2.1/standard/image-to-video").model_dump(by_alias=True)
    data["pricing"] = {"unit": "video", "per_video": {"5": 0.25, "10": 0.5}, "currency": "USD"}
    per_clip = PriceTable.from_profile(EndpointProfile.model_validate(data))
    assert estimate_cost(per_clip, resolution=None, duration_s=10, byo_openai_key=False) == 0.5
    assert priced_cost(per_clip, seconds_generated=5.04, byo_openai_key=False) == 0.25


# ---- per token, audio, 4k (the leading image-to-video endpoints) ---------------------------------------------------

def test_an_audio_switch_changes_the_price_and_defaults_to_fal_s_default():
    from sora_pipeline.endpoints import get_profile

    kling = PriceTable.from_profile(get_profile("fal-ai/kling-video/v3/pro/image-to-video"))
    assert estimate_cost(kling, resolution=None, duration_s=5, byo_openai_key=False) == pytest.approx(5 * 0.336)
    assert estimate_cost(kling, resolution=None, duration_s=5, byo_openai_key=False, audio=False) \
        == pytest.approx(5 * 0.224)
    veo = PriceTable.from_profile(get_profile("fal-ai/veo3.1/image-to-video"))
    assert estimate_cost(veo, resolution="4k", duration_s=8, byo_openai_key=False) == pytest.approx(8 * 0.60)
    assert estimate_cost(veo, resolution="1080p", duration_s=8, byo_openai_key=False, audio=False) \
        == pytest.approx(8 * 0.20)
    # a probed 3840x2160 clip is the 4k tier
    assert priced_cost(veo, seconds_generated=8, byo_openai_key=False, height=2160, width=3840, audio=True) \
        == pytest.approx(8 * 0.60)
    assert unit_price(veo, seconds=8, byo_openai_key=False, height=720, width=1280, audio=False) == 0.20


def test_a_per_token_price_follows_height_width_seconds_and_frame_rate():
    from sora_pipeline.endpoints import get_profile

    seedance = PriceTable.from_profile(get_profile("bytedance/seedance-2.0/image-to-video"))
    per_token = 0.014 / 1000
    assert estimate_cost(seedance, resolution="1080p", duration_s=10, byo_openai_key=False, aspect_ratio="1:1") \
        == pytest.approx(1080 * 1080 * 10 * 24 / 1024 * per_token)
    # the probed size wins over the requested resolution; generate_audio changes nothing (same price)
    assert priced_cost(seedance, seconds_generated=6, byo_openai_key=False, height=480, width=640) \
        == pytest.approx(480 * 640 * 6 * 24 / 1024 * per_token)
    assert estimate_cost(seedance, resolution="720p", duration_s=5, byo_openai_key=False, audio=False) \
        == estimate_cost(seedance, resolution="720p", duration_s=5, byo_openai_key=False, audio=True)
    assert unit_price(seedance, seconds=5, byo_openai_key=False) == pytest.approx(per_token)
    assert estimate_cost(seedance, resolution="720p", duration_s=5, byo_openai_key=True) == 0.0


def test_a_price_per_video_by_duration():
    from sora_pipeline.endpoints import get_profile

    hailuo = PriceTable.from_profile(get_profile("fal-ai/minimax/hailuo-2.3/standard/image-to-video"))
    assert estimate_cost(hailuo, resolution=None, duration_s=6, byo_openai_key=False) == 0.28
    assert estimate_cost(hailuo, resolution=None, duration_s=10, byo_openai_key=False) == 0.56
    assert priced_cost(hailuo, seconds_generated=10.04, byo_openai_key=False) == 0.56
