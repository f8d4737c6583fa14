"""Reconciling one day: the ledger's requests (what was submitted and what we estimated) against fal's billing
events (what fal charged). Pure functions over plain data: the Dagster layer fetches, this module decides.

Sources of a request's billed cost, best first: fal's billing event (`cost_total`, after any discount) →
`billing_source = "billing_events"`; the `x-fal-billable-units` header of its result × the unit price in force →
`"billable_units"`; nothing yet (billing data lags) → null, never a guess."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

#: how long after a request ended fal's billing records may still be missing (the window reaches this far)
BILLING_LAG = timedelta(hours=6)
WINDOW_SLACK = timedelta(minutes=10)  # clock skew between us and fal on either side of a request's span
MAX_WINDOW = timedelta(days=90)  # fal's billing-events range limit


@dataclass(frozen=True)
class KnownRequest:
    """One submitted attempt of the day, as the ledger knows it."""

    request_id: str
    item_id: str
    endpoint_id: str
    backend: str
    estimated_cost: float | None
    submitted_at: datetime | None
    completed_at: datetime | None
    billed_units: float | None = None
    unit_price: float | None = None


def day_bounds(day: str) -> tuple[datetime, datetime]:
    start = datetime.combine(date.fromisoformat(day), time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def billing_window(known: Iterable[KnownRequest], day: str, now: datetime) -> tuple[datetime, datetime]:
    """The span to ask fal about: the UTC day itself (spend on the day that the ledger does not know) and every
    submitted request's span, widened by the slack and by the billing lag, never past `now` nor wider than fal's
    limit (the most recent part is kept)."""
    start, end = day_bounds(day)
    for r in known:
        if r.submitted_at is not None:
            start = min(start, r.submitted_at - WINDOW_SLACK)
            end = max(end, (r.completed_at or r.submitted_at) + BILLING_LAG)
    end = min(end, now + WINDOW_SLACK)
    start = max(start, end - MAX_WINDOW)
    return start, end


def event_cost(event: dict[str, Any]) -> float | None:
    """What fal charged for one billing event (USD): `cost_total`, else the subtotal less the discount, else units
    × unit price less the percent discount. None when the event carries none of them."""
    total = _number(event.get("cost_total"))
    if total is not None:
        return total
    nano = _number(event.get("cost_estimate_nano_usd"))
    if nano is not None:
        return nano / 1e9
    subtotal = _number(event.get("cost_subtotal"))
    if subtotal is None:
        units, price = _number(event.get("output_units")), _number(event.get("unit_price"))
        if units is None or price is None:
            return None
        subtotal = units * price
    discount = _number(event.get("cost_discount"))
    if discount is not None:
        return subtotal - discount
    percent = _number(event.get("percent_discount")) or 0.0
    return subtotal * (1 - percent / 100)


def reconcile(known: list[KnownRequest], events: list[dict[str, Any]] | None, *, day: str,
              ledger_knows: set[str], now: datetime) -> list[dict[str, Any]]:
    """One row per known request of the day and one per billing event of the UTC day whose request id the
    ledger does not know at all (`ledger_knows`: ids known on any day; spend from elsewhere on the same key, or a
    submit whose answer was lost). `events` None: billing events were not read (no admin key)."""
    by_id = {str(e.get("request_id")): e for e in events or () if e.get("request_id")}
    rows = []
    for r in known:
        event = by_id.get(r.request_id)
        row = dict(request_id=r.request_id, item_id=r.item_id, endpoint_id=r.endpoint_id, backend=r.backend,
                   estimated_cost_usd=r.estimated_cost, billed_units=r.billed_units, unit_price_usd=r.unit_price,
                   billed_cost_usd=None, billing_source=None, known_to_ledger=True, billed_at=None,
                   percent_discount=None, reconciled_at=now)
        if event is not None:
            units = _number(event.get("output_units"))
            row.update(billed_units=units if units is not None else r.billed_units,
                       unit_price_usd=_number(event.get("unit_price")) or r.unit_price,
                       billed_cost_usd=event_cost(event), billing_source="billing_events",
                       billed_at=_timestamp(event.get("timestamp")),
                       percent_discount=_number(event.get("percent_discount")))
        elif r.billed_units is not None and r.unit_price is not None:
            row.update(billed_cost_usd=round(r.billed_units * r.unit_price, 6), billing_source="billable_units")
        rows.append(row)
    start, end = day_bounds(day)
    for rid, event in by_id.items():
        if rid in ledger_knows:
            continue
        at = _timestamp(event.get("timestamp"))
        if at is None or not start <= at < end:
            continue  # listed on the day it was billed, once
        rows.append(dict(request_id=rid, item_id=None, endpoint_id=event.get("endpoint_id"), backend=None,
                         estimated_cost_usd=None, billed_units=_number(event.get("output_units")),
                         unit_price_usd=_number(event.get("unit_price")), billed_cost_usd=event_cost(event),
                         billing_source="billing_events", known_to_ledger=False, billed_at=at,
                         percent_discount=_number(event.get("percent_discount")), reconciled_at=now))
    return rows


@dataclass(frozen=True)
class MoneyFindings:
    """What the money check says about a day's `fal_billing` rows."""

    estimated: float  # of the requests fal has billed
    billed: float
    pending: int  # requests without a billed cost yet
    outliers: list[str]  # billed more than `outlier_factor` × their estimate
    unknown: list[str]  # billed, but never submitted by the ledger

    @property
    def difference(self) -> float | None:
        """billed ÷ estimated − 1 (None with nothing billed or an estimate of 0)."""
        return None if self.estimated <= 0 else self.billed / self.estimated - 1


def findings(rows: list[dict[str, Any]], *, outlier_factor: float = 3.0) -> MoneyFindings:
    estimated = billed = 0.0
    pending, outliers, unknown = 0, [], []
    for row in rows:
        cost, estimate = row.get("billed_cost_usd"), row.get("estimated_cost_usd")
        if not row.get("known_to_ledger"):
            unknown.append(row["request_id"])
            continue
        if cost is None:
            pending += 1
            continue
        billed += cost
        estimated += estimate or 0.0
        if estimate is not None and cost > outlier_factor * estimate + 1e-9:
            outliers.append(row["request_id"])
    return MoneyFindings(estimated=round(estimated, 6), billed=round(billed, 6), pending=pending,
                         outliers=outliers, unknown=unknown)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)
