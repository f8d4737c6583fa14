"""A refreshed price, checked before `refresh` writes it: budgets (`day_budget_usd`) trust the profile's price, so
a zero price, or one that makes some video of the endpoint cost less than half of what it did (a lower tier, a
switch from per second to a tiny per-video price), is refused unless the user confirms it (`--accept-price-drop`).
Also the price as people read it (`$0.30/s 720p, $0.50/s 1080p`), for `list`, the diff and the refusal."""

from __future__ import annotations

import math
from typing import Any

MIN_PRICE_USD = 0.001  # a tier below this is taken as a zero price
MAX_DROP = 0.5  # a video may get at most this much cheaper without --accept-price-drop
ACCEPT_FLAG = "--accept-price-drop"


def usd(value: float) -> str:
    return f"${value:.2f}" if math.isclose(round(value, 2), value, rel_tol=1e-9) else f"${value:g}"


def price_text(pricing: dict[str, Any] | None) -> str:
    """`$0.30/s 720p, $0.50/s 1080p` or `$0.28/video (5)`; the unit the pricing says it bills."""
    pricing = pricing or {}
    per_second, per_video = pricing.get("per_second") or {}, pricing.get("per_video") or {}
    if pricing.get("unit") == "token" and pricing.get("per_1k_tokens") is not None:
        return f"{usd(pricing['per_1k_tokens'])}/1k tokens (h×w×s×{pricing.get('token_fps', 24):g}/1024)"
    if per_second and (pricing.get("unit", "second") == "second" or not per_video):
        text = ", ".join(f"{usd(v)}/s" + ("" if t == "*" else f" {t}") for t, v in per_second.items())
        audio = pricing.get("per_second_audio") or {}
        return text + (f"; audio on: {', '.join(f'{usd(v)}/s' + ('' if t == '*' else f' {t}') for t, v in audio.items())}"
                       if audio else "")
    return ", ".join(f"{usd(v)}/video" + ("" if t == "*" else f" ({t})") for t, v in per_video.items()) or "?"


def _seconds(values: list[Any]) -> list[float]:
    found = []
    for value in values:
        text = str(value).strip().rstrip("s") if value is not None and not isinstance(value, bool) else ""
        try:
            found.append(float(text))
        except ValueError:
            continue
    return [s for s in found if s > 0]


def video_prices(profile: dict[str, Any], pricing: dict[str, Any]) -> dict[str, float]:
    """USD of one video per duration and resolution the profile's inputs offer, priced as the pipeline's
    `PriceTable` prices it (a per-video table wins; `auto` costs `auto_tier`; `*` is any tier)."""
    props, mapping = profile.get("input", {}).get("properties", {}), profile.get("catalog_mapping", {})
    duration = props.get(mapping.get("duration") or "", {})
    durations = (_seconds(duration.get("enum") or [duration.get("default")])
                 or _seconds([profile.get("video", {}).get("fixed_duration")]) or [1.0])
    resolutions = props.get(mapping.get("resolution") or "", {}).get("enum") or ["*"]
    per_second, per_video = pricing.get("per_second") or {}, pricing.get("per_video") or {}
    prices: dict[str, float] = {}
    for seconds in durations:
        for res in map(str, resolutions):
            if per_video:
                price = per_video.get(f"{seconds:g}", per_video.get("*", max(per_video.values())))
            elif per_second:
                tier = (pricing.get("auto_tier") or "") if res == "auto" else res
                price = per_second.get(tier, per_second.get("*", max(per_second.values()))) * seconds
            else:
                continue
            prices[f"{seconds:g} s" + ("" if res == "*" else f" {res}")] = float(price)
    return prices


def price_refusal(endpoint_id: str, profile: dict[str, Any], old: dict[str, Any] | None,
                  new: dict[str, Any]) -> str | None:
    """Why the refreshed pricing `new` (replacing `old`, None for a new profile) needs a person, or None."""
    unit = "per_video" if new.get("unit") == "video" and new.get("per_video") else "per_second"
    tiers = new.get(unit) or {}
    change = f"{price_text(old)} → {price_text(new)}" if old else price_text(new)
    confirm = f"not written (rerun with {ACCEPT_FLAG} if fal really charges that)"
    if not tiers or min(tiers.values()) < MIN_PRICE_USD:
        return (f"the refreshed price of {endpoint_id} is zero ({change}): every estimate would be $0 and any "
                f"day_budget_usd would let the whole day through; {confirm}")
    if not old:
        return None
    before, after = video_prices(profile, old), video_prices(profile, new)
    drops = [(after[k] / before[k], k) for k in before if k in after and before[k] > 0]
    if drops and min(drops)[0] < 1 - MAX_DROP:
        _, video = min(drops)
        return (f"the refreshed price of {endpoint_id} drops by more than half ({change}; a {video} video: "
                f"{usd(before[video])} → {usd(after[video])}); {confirm}")
    return None
