"""Price table, cost estimates and a thread-safe budget guard for paid generations (fal bills per second, per
second with audio on, per video or per token, by the endpoint). Every figure here is an estimate from the profile's prices; what fal charged comes from
fal (`billable units` on the result, billing events: `sora_pipeline.billing`)."""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Mapping
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PRICE_TABLE_ENV = "SORA_PRICE_TABLE"
_TIER_RE = re.compile(r"^(\d+)p$|^(\d)k$")  # "720p", "1080p", "4k" (2160 lines)
ANY_TIER = "*"  # the price of an endpoint whose price does not depend on the resolution
_EPS = 1e-9


class PriceTableError(ValueError):
    """`SORA_PRICE_TABLE` (or a table given in code) is malformed."""


class PriceTable(BaseModel):
    """USD per generated second by resolution; `auto` costs `auto` if set, else the most expensive tier."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_second: dict[str, float] = Field(default_factory=lambda: {"720p": 0.30, "1080p": 0.50})
    auto: float | None = None
    currency: str = "USD"
    #: a price per clip by its duration in seconds ("5", "10", or "*": any), for endpoints billed per video;
    #: when it names a duration it wins over `per_second` for that duration
    per_video: dict[str, float] = Field(default_factory=dict)
    #: per-second prices when the endpoint's audio switch is on (by tier, like `per_second`); empty: audio is free
    per_second_audio: dict[str, float] = Field(default_factory=dict)
    #: whether audio is on when a request does not say (the switch's default at fal); None: no audio switch
    audio_default: bool | None = None
    #: USD per 1,000 tokens, tokens = height × width × seconds × `token_fps` / 1024 (Seedance); None: not per token
    per_1k_tokens: float | None = None
    token_fps: float = 24.0
    #: output height by resolution value (per-token estimates before the video exists)
    heights: dict[str, int] = Field(default_factory=dict)
    #: the tier `auto` costs (its name, for the audio prices)
    auto_tier: str | None = None
    #: the endpoint's audio switch (an input name; a request's `params` may set it)
    audio_input: str | None = None

    @field_validator("per_second", "per_second_audio")
    @classmethod
    def _check_tiers(cls, value: dict[str, float], info: Any) -> dict[str, float]:
        if not value and info.field_name == "per_second":
            raise ValueError("per_second needs at least one resolution")
        for name, price in value.items():
            if not _TIER_RE.match(name) and name != ANY_TIER:
                raise ValueError(f"resolution {name!r} must look like '720p' (or '*' for any)")
            if not math.isfinite(price) or price < 0:
                raise ValueError(f"price of {name} must be a finite number >= 0")
        return value

    @field_validator("auto")
    @classmethod
    def _check_auto(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ValueError("auto price must be a finite number >= 0")
        return value

    @classmethod
    def from_profile(cls, profile: Any) -> PriceTable:
        """The endpoint profile's price per generated second (`sora_pipeline.endpoints`)."""
        per_second = {str(k).lower(): float(v) for k, v in profile.pricing.per_second.items()}
        per_video = {str(k): float(v) for k, v in profile.pricing.per_video.items()}
        pricing = profile.pricing
        tier = (pricing.auto_tier or "").lower()
        if not per_second:  # billed per video only: price seconds at the dearest clip's rate (estimates use per_video)
            per_second = {ANY_TIER: 0.0}
        audio = {str(k).lower(): float(v) for k, v in pricing.per_second_audio.items()}
        switch = pricing.audio_input
        audio_default = None if switch is None else bool(profile.input.properties[switch].default)
        heights = {str(k).lower(): int(v) for k, v in profile.video.heights.items()}
        return cls(per_second=per_second, auto=per_second.get(tier), currency=pricing.currency,
                   per_video=per_video if pricing.unit != "token" else {}, per_second_audio=audio,
                   audio_default=audio_default, heights=heights,
                   per_1k_tokens=pricing.per_1k_tokens if pricing.unit == "token" else None,
                   token_fps=pricing.token_fps, auto_tier=tier or None, audio_input=switch)

    def audio_of(self, params: Mapping[str, Any] | None) -> bool | None:
        """Whether a request with these extra inputs makes sound (None: the endpoint has no audio switch)."""
        if self.audio_input is None:
            return None
        value = (params or {}).get(self.audio_input)
        return self.audio_default if value is None else bool(value)

    def video_price(self, seconds: float | None) -> float | None:
        """The price of one clip of `seconds` when the endpoint bills per video (None: it bills per second)."""
        if not self.per_video:
            return None
        if seconds is not None and float(seconds).is_integer() and str(int(seconds)) in self.per_video:
            return self.per_video[str(int(seconds))]
        return self.per_video.get(ANY_TIER, max(self.per_video.values()))

    @classmethod
    def with_override(cls, raw: str | None, profile: Any = None) -> PriceTable:
        """The endpoint's prices (its profile's; Sora 2 Pro's without one) overridden by `raw`, the value of
        `SORA_PRICE_TABLE` (read by the settings): a JSON object of per-second prices, e.g.
        `{"720p": 0.3, "1080p": 0.5, "auto": 0.5}`, or a full `{"per_second": {...}, "auto": ..., "currency": ...}`."""
        base = cls.from_profile(profile) if profile is not None else cls()
        if raw is None or not raw.strip():
            return base
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PriceTableError(f"{PRICE_TABLE_ENV} is not valid JSON ({exc.msg} at char {exc.pos})") from None
        if not isinstance(data, dict):
            raise PriceTableError(f'{PRICE_TABLE_ENV} must be a JSON object like {{"720p": 0.3, "1080p": 0.5}}')
        if "per_second" not in data:
            data = dict(data)
            fields = {k: data.pop(k) for k in ("auto", "currency") if k in data}
            data = {"per_second": data, **fields}
        if not isinstance(data.get("per_second"), dict):
            raise PriceTableError(f"{PRICE_TABLE_ENV}: per_second must be a JSON object")
        for name, price in data["per_second"].items():
            if not _TIER_RE.match(str(name)) and name != ANY_TIER:
                raise PriceTableError(f"{PRICE_TABLE_ENV}: resolution {name!r} must look like '720p' (or '*')")
            if isinstance(price, bool) or not isinstance(price, (int, float)):
                raise PriceTableError(f"{PRICE_TABLE_ENV}: price of {name!r} must be a number")
        data["per_second"] = base.per_second | data["per_second"]
        if "auto" not in data and base.auto is not None:
            data["auto"] = base.auto
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            msgs = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'table'}: {e['msg']}"
                for e in exc.errors(include_input=False, include_url=False)
            )
            raise PriceTableError(f"{PRICE_TABLE_ENV} is invalid: {msgs}") from None

    def _tiers(self) -> list[tuple[int, str]]:
        return sorted((_lines(k), k) for k in self.per_second if _TIER_RE.match(k))

    def _table(self, audio: bool | None) -> dict[str, float]:
        """The per-second prices that apply: with audio on (the request's, else the default), the audio prices."""
        on = self.audio_default if audio is None else audio
        return self.per_second_audio if (on and self.per_second_audio) else self.per_second

    def rate(self, resolution: str | Enum | None, audio: bool | None = None) -> float:
        """Price per second for a requested resolution ("720p", "1080p", "auto", or None for an endpoint
        without a resolution input), with audio on or off (None: the endpoint's default)."""
        table = self._table(audio)
        if table is not self.per_second:
            return PriceTable.model_construct(per_second=table, auto=table.get(self._auto_tier()),
                                              currency=self.currency).rate(resolution)
        if resolution is None:
            resolution = ANY_TIER if ANY_TIER in self.per_second else "auto"
        name = str(resolution.value if isinstance(resolution, Enum) else resolution).strip().lower()
        if name == "auto":
            return self.auto if self.auto is not None else max(self.per_second.values())
        if name not in self.per_second:
            if ANY_TIER in self.per_second:
                return self.per_second[ANY_TIER]
            raise KeyError(f"no price for resolution {name!r} (known: {', '.join(sorted(self.per_second))})")
        return self.per_second[name]

    def _auto_tier(self) -> str | None:
        return self.auto_tier

    def rate_for_pixels(self, short_side: int, audio: bool | None = None) -> float:
        """Price per second of an output whose shorter side is `short_side` pixels (1080 or more -> 1080p)."""
        table = self._table(audio)
        tiers = sorted((_lines(k), k) for k in table if _TIER_RE.match(k))
        if not tiers:
            return table.get(ANY_TIER, max(table.values()))
        chosen = tiers[0][1]
        for lines, name in tiers:
            if short_side >= lines:
                chosen = name
        return table[chosen]

    def token_cost(self, *, seconds: float, height: int | None = None, width: int | None = None,
                   resolution: str | Enum | None = None, aspect_ratio: str | None = None) -> float:
        """USD of a clip priced per token: height × width × seconds × token_fps / 1024 tokens at `per_1k_tokens`.
        Without a probed size the height comes from the resolution and the width from the aspect ratio (16:9 when
        unknown or `auto`)."""
        if height and width:
            pixels = float(height) * float(width)
        else:
            name = str(resolution.value if isinstance(resolution, Enum) else resolution or "auto").lower()
            short = self.heights.get(name) or (_lines(name) if _TIER_RE.match(name) else None) \
                or max(self.heights.values(), default=720)
            pixels = float(short) * float(short) * _long_over_short(aspect_ratio)
        tokens = pixels * float(seconds) * self.token_fps / 1024.0
        return tokens * float(self.per_1k_tokens or 0.0) / 1000.0


def _lines(tier: str) -> int:
    m = _TIER_RE.match(tier)
    if m is None:
        raise ValueError(f"not a resolution tier: {tier!r}")
    return int(m.group(1)) if m.group(1) else {4: 2160, 8: 4320}.get(int(m.group(2)), int(m.group(2)) * 540)


def _long_over_short(aspect_ratio: str | None) -> float:
    """The long side over the short one of an aspect ratio like "9:16" (16:9 when unknown or `auto`)."""
    try:
        a, b = (float(x) for x in str(aspect_ratio).split(":"))
        return max(a, b) / min(a, b) if a > 0 and b > 0 else 16 / 9
    except ValueError:
        return 16 / 9


def estimate_cost(prices: PriceTable, *, resolution: str | Enum | None, duration_s: float | None,
                  byo_openai_key: bool, audio: bool | None = None, aspect_ratio: str | None = None) -> float:
    """Expected charge of one generation; 0 when the user's own OpenAI key is used (fal does not bill). `audio`:
    the request's audio switch (None: the endpoint's default); `aspect_ratio` sizes a per-token estimate."""
    duration_s = 0.0 if duration_s is None else duration_s
    if duration_s < 0:
        raise ValueError("duration_s must be >= 0")
    if byo_openai_key:
        return 0.0
    if prices.per_1k_tokens is not None:
        return round(prices.token_cost(seconds=duration_s, resolution=resolution, aspect_ratio=aspect_ratio), 6)
    per_clip = prices.video_price(duration_s)
    if per_clip is not None:
        return round(per_clip, 6)
    return round(prices.rate(resolution, audio) * float(duration_s), 6)


def unit_price(prices: PriceTable, *, seconds: float | None, byo_openai_key: bool, height: int | None = None,
               width: int | None = None, resolution: str | Enum | None = None,
               audio: bool | None = None) -> float | None:
    """The profile's price of one of fal's billable units for this output: the clip's price when the endpoint
    bills per video, one token's when per token, else the price of one second at the output's tier (see
    `priced_cost`); 0 with a BYO key."""
    if byo_openai_key:
        return 0.0
    if prices.per_1k_tokens is not None:
        return prices.per_1k_tokens / 1000.0
    per_clip = prices.video_price(round(float(seconds)) if seconds is not None else None)
    if per_clip is not None:
        return per_clip
    sides = [s for s in (height, width) if s]
    if sides:
        return prices.rate_for_pixels(min(sides), audio)
    return prices.rate(resolution if resolution is not None else "auto", audio)


def priced_cost(
    prices: PriceTable, *, seconds_generated: float | None, byo_openai_key: bool, height: int | None = None,
    width: int | None = None, resolution: str | Enum | None = None, audio: bool | None = None,
) -> float | None:
    """Estimated charge of a finished generation at the profile's prices, by the probed output size when known
    (an estimate: fal's charge is what its billing reports).

    The tier comes from the shorter side of the frame (so a 720x1280 portrait clip is 720p): `min(width, height)`
    when both are given, else `height`; without a size, the requested `resolution` ("auto" = the auto price).
    Returns None when the generated seconds are unknown (and it is not a BYO-key request).
    """
    if byo_openai_key:
        return 0.0
    if seconds_generated is None:
        return None
    if prices.per_1k_tokens is not None:
        return round(prices.token_cost(seconds=seconds_generated, height=height, width=width,
                                       resolution=resolution), 6)
    per_clip = prices.video_price(round(float(seconds_generated)))
    if per_clip is not None:
        return round(per_clip, 6)
    sides = [s for s in (height, width) if s]
    if sides:
        rate = prices.rate_for_pixels(min(sides), audio)
    elif resolution is not None:
        rate = prices.rate(resolution, audio)
    else:
        rate = prices.rate("auto", audio)
    return round(rate * float(seconds_generated), 6)


class BudgetGuard:
    """Thread-safe reservations against a per-run and a per-day cap (None = no cap). Zero-cost work always fits."""

    def __init__(self, per_run_cap: float | None, per_day_cap: float | None, already_spent_today: float = 0.0) -> None:
        for name, cap in (("per_run_cap", per_run_cap), ("per_day_cap", per_day_cap)):
            if cap is not None and (not math.isfinite(cap) or cap < 0):
                raise ValueError(f"{name} must be a finite number >= 0 or None")
        self.per_run_cap = per_run_cap
        self.per_day_cap = per_day_cap
        self.already_spent_today = float(already_spent_today)
        self._reserved = 0.0
        self._lock = threading.Lock()

    @property
    def reserved(self) -> float:
        with self._lock:
            return self._reserved

    def _remaining_locked(self) -> float:
        left = math.inf
        if self.per_run_cap is not None:
            left = min(left, self.per_run_cap - self._reserved)
        if self.per_day_cap is not None:
            left = min(left, self.per_day_cap - self.already_spent_today - self._reserved)
        return max(left, 0.0)

    def remaining(self) -> float:
        """Money still reservable under both caps (`math.inf` when uncapped)."""
        with self._lock:
            return self._remaining_locked()

    def try_reserve(self, amount: float) -> bool:
        """Reserve `amount` if no cap would be exceeded; returns whether it was reserved."""
        if not math.isfinite(amount) or amount < 0:
            raise ValueError("amount must be a finite number >= 0")
        with self._lock:
            if amount > 0 and amount > self._remaining_locked() + _EPS:
                return False
            self._reserved += amount
            return True

    def release(self, amount: float) -> None:
        """Give back a reservation whose submit was refused before reaching fal (so it was never billed)."""
        if not math.isfinite(amount) or amount < 0:
            raise ValueError("amount must be a finite number >= 0")
        with self._lock:
            self._reserved = max(0.0, self._reserved - amount)

    def __repr__(self) -> str:
        return (f"BudgetGuard(per_run_cap={self.per_run_cap}, per_day_cap={self.per_day_cap}, "
                f"already_spent_today={self.already_spent_today}, reserved={self.reserved})")


def describe(prices: PriceTable) -> dict[str, Any]:
    """The table as plain data (for run metadata)."""
    out = {"currency": prices.currency, "per_second": dict(prices.per_second), "auto": prices.rate("auto")}
    if prices.per_second_audio:
        out["per_second_audio"] = dict(prices.per_second_audio)
    if prices.per_1k_tokens is not None:
        out["per_1k_tokens"] = prices.per_1k_tokens
    return out
