"""`fal_billing`: what fal billed for each of the day's requests, beside what the pipeline estimated.

With an admin key, fal's billing events for the day's window (all pages; `sora_pipeline.billing.reconcile`); without
one, the billable units fal reported on each result × the unit price. Billing data can lag: the daily schedule
re-materializes the two previous days. The check `fal_billing_matches_estimate` names requests that cost far more
than estimated and spend the ledger never submitted."""


from datetime import UTC, datetime

import dagster as dg

from sora_pipeline.billing.reconcile import KnownRequest, billing_window, findings, reconcile
from sora_pipeline.defs.assets.lineage import arrow_rows, spec_metadata, table_metadata
from sora_pipeline.defs.database_resource import LedgerDatabaseResource
from sora_pipeline.defs.partitions import daily_partitions
from sora_pipeline.defs.platform_resource import FalPlatformResource
from sora_pipeline.defs.warehouse_resource import WarehouseResource
from sora_pipeline.warehouse.schemas import FAL_BILLING

GROUP = "generation"
WARN_DIFFERENCE = 0.05  # a day billed more than 5 % away from its estimate: a warning
OUTLIER_FACTOR = 3.0  # one request billed more than 3× its estimate: a failure


def known_requests(attempts: list[dict]) -> list[KnownRequest]:
    """The ledger's submitted attempts (`Ledger.submitted_attempts`) as reconciliation input."""
    out = []
    for a in attempts:
        artifacts = a.get("artifacts_json") or {}
        out.append(KnownRequest(
            request_id=a["request_id"], item_id=a["item_id"], endpoint_id=a["endpoint_id"], backend=a["backend"],
            estimated_cost=a["estimated_cost"], submitted_at=a["submitted_at"], completed_at=a["completed_at"],
            billed_units=artifacts.get("billed_units"), unit_price=artifacts.get("unit_price_usd")))
    return out


@dg.asset(
    key="fal_billing", group_name=GROUP, code_version="1", deps=["generations"], kinds={"parquet", "fal"},
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.multi_run(1),
    metadata=spec_metadata(FAL_BILLING),
    description="One row per request of the day that the ledger submitted or fal billed: estimated cost, billed "
                "units and cost, and where the billed figure came from (`billing_events` with FAL_ADMIN_KEY, else "
                "`billable_units` from the result; null until fal reports it). Requests fal billed that the "
                "ledger never submitted are listed with `known_to_ledger = false`.",
)
def fal_billing(context: dg.AssetExecutionContext, warehouse: WarehouseResource, database: LedgerDatabaseResource,
                fal_platform: FalPlatformResource) -> dg.MaterializeResult:
    day, now = context.partition_key, datetime.now(UTC)
    ledger = database.ledger()
    known = known_requests(ledger.submitted_attempts(day))
    events, source_note = None, "no FAL_ADMIN_KEY: billed cost from the results' billable units × unit price"
    if fal_platform.admin_key:
        from sora_pipeline.fal.platform import PlatformError

        start, end = billing_window(known, day, now)
        endpoints = sorted({k.endpoint_id for k in known})
        try:
            with fal_platform.client(admin=True) as client:
                events = list(client.billing_events(start=start, end=end, endpoint_ids=endpoints or None))
            source_note = (f"billing events {start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M} UTC: {len(events)} "
                           f"record(s) in {sum(client.calls.values())} call(s)")
        except PlatformError as exc:  # the table still says what is known; the next run asks again
            source_note = f"billing events unavailable ({exc}); billed cost from billable units where reported"
            context.log.warning(f"{day}: {source_note}")
    day_ids = {k.request_id for k in known}
    others = [str(e["request_id"]) for e in events or () if e.get("request_id") and e["request_id"] not in day_ids]
    ledger_knows = day_ids | ledger.known_request_ids(others)  # ids of other days' requests are known too
    rows = reconcile(known, events, day=day, ledger_knows=ledger_knows, now=now)
    uri = warehouse.write(FAL_BILLING, day, rows)
    found = findings([r for r in rows if r["backend"] in ("fal", None)])
    simulated = findings([r for r in rows if r["backend"] == "simulator"])
    context.log.info(f"{day}: {len(rows)} request(s); {source_note}")
    return dg.MaterializeResult(metadata=table_metadata(FAL_BILLING, uri, len(rows), extra={
        "source": source_note,
        "requests": dg.MetadataValue.int(len(known)),
        "estimated_cost_usd": dg.MetadataValue.float(float(round(sum(k.estimated_cost or 0 for k in known), 4))),
        "billed_cost_usd": dg.MetadataValue.float(float(found.billed)),  # fal's figures only
        "billed_units": dg.MetadataValue.float(float(sum(r["billed_units"] or 0 for r in rows
                                                         if r["backend"] in ("fal", None)))),
        "unbilled_requests": dg.MetadataValue.int(found.pending),
        "simulator_billed_usd": dg.MetadataValue.float(float(simulated.billed)),
        "unknown_to_ledger": dg.MetadataValue.int(len(found.unknown)),
    }))


@dg.asset_check(asset="fal_billing", partitions_def=daily_partitions, blocking=False,
                description="fal's bill against the estimate: WARN when the day's billed total is more than 5 % away "
                            "from its estimate; ERROR when one request is billed more than 3× its estimate or fal "
                            "billed a request the ledger never submitted. The metadata names the requests.")
def fal_billing_matches_estimate(context: dg.AssetCheckExecutionContext,
                                 warehouse: WarehouseResource) -> dg.AssetCheckResult:
    rows = arrow_rows(warehouse.read("fal_billing", context.partition_key))
    return money_check(rows)


def money_check(rows: list[dict]) -> dg.AssetCheckResult:
    """The verdict on one day's `fal_billing` rows (simulator rows are judged the same way, never mixed with fal's)."""
    by_backend = {b: [r for r in rows if (r["backend"] or "fal") == b] for b in ("fal", "simulator")}
    problems, warnings, metadata = [], [], {}
    for backend, part in by_backend.items():
        if not part:
            continue
        f = findings(part, outlier_factor=OUTLIER_FACTOR)
        metadata[f"{backend}_billed_usd"] = dg.MetadataValue.float(f.billed)
        metadata[f"{backend}_estimated_usd"] = dg.MetadataValue.float(f.estimated)
        metadata[f"{backend}_unbilled_requests"] = dg.MetadataValue.int(f.pending)
        for rid in f.outliers:
            row = next(r for r in part if r["request_id"] == rid)
            problems.append(f"{backend}: request {rid} (item {row['item_id']}) billed "
                            f"${row['billed_cost_usd']:,.2f}, more than {OUTLIER_FACTOR:g}× its estimate "
                            f"${row['estimated_cost_usd']:,.2f}")
        for rid in f.unknown:
            row = next(r for r in part if r["request_id"] == rid)
            problems.append(f"{backend}: fal billed request {rid} ({row['endpoint_id']}, "
                            f"${row['billed_cost_usd'] or 0:,.2f}) that the ledger never submitted")
        if f.difference is not None and abs(f.difference) > WARN_DIFFERENCE:
            warnings.append(f"{backend}: billed ${f.billed:,.2f} is {f.difference:+.1%} away from the estimate "
                            f"${f.estimated:,.2f} of the same requests")
    lines = problems + warnings
    metadata["findings"] = dg.MetadataValue.md("\n".join(f"- {line}" for line in lines[:50]) or "none")
    if problems:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
                                   description=problems[0])
    if warnings:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=metadata,
                                   description=warnings[0])
    return dg.AssetCheckResult(passed=True, metadata=metadata)
