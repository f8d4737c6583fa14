"""The day's slice of the catalog: valid rows (`catalog_items`) and rows that break a rule (`rejected_items`)."""


import json
from datetime import date

import dagster as dg
import pyarrow as pa

from sora_pipeline.defs.assets.lineage import selected_results, spec_metadata, table_metadata
from sora_pipeline.catalog import CatalogError, read_catalog_day
from sora_pipeline.catalog.rejections import RejectionSummary, rejection_summary
from sora_pipeline.defs.partitions import daily_partitions, partition_problem
from sora_pipeline.warehouse.schemas import CATALOG_ITEMS, REJECTED_ITEMS
from sora_pipeline.defs.resources import FalVideoResource
from sora_pipeline.defs.warehouse_resource import WarehouseResource

GROUP = "catalog"

catalog_source = dg.AssetSpec(
    "catalog", group_name=GROUP, kinds={"parquet"},
    description="The Parquet catalog of source images and prompts at SORA_CATALOG_URI (maintained outside this "
                "pipeline): one row per wanted video, with its scheduled_date.")


@dg.multi_asset(
    specs=[
        dg.AssetSpec("catalog_items", group_name=GROUP, deps=[catalog_source], code_version="1", metadata=spec_metadata(CATALOG_ITEMS, upstream="catalog"),
                     description="Valid catalog rows scheduled for the day (scheduled_date filter pushed down "
                                 "into the Parquet scan), normalized (nulls → defaults, paths resolved).",
                     kinds={"parquet"}),
        dg.AssetSpec("rejected_items", group_name=GROUP, deps=[catalog_source], code_version="1", metadata=spec_metadata(REJECTED_ITEMS, upstream="catalog"),
                     description="Catalog rows of the day that break a contract rule, each with a one-line "
                                 "reason naming the row and the field. They never stop the day.",
                     kinds={"parquet"}),
    ],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    # one step writes both tables: a selection with either gets both, so a run that selects `rejected_items`
    # and `generations` never starts generations beside a catalog_items that is not written yet
    can_subset=False,
)
def catalog_slice(context: dg.AssetExecutionContext, warehouse: WarehouseResource, fal: FalVideoResource):
    day = context.partition_key
    problem = partition_problem(day)  # (Dagster refuses such a day before a run; a run from elsewhere may not)
    if problem:
        raise dg.Failure(description=problem, allow_retries=False)
    try:
        sl = read_catalog_day(warehouse.catalog_uri, date.fromisoformat(day), image_roots=warehouse.image_roots,
                              storage_options=warehouse.storage_options or None, endpoints=fal.endpoints())
    except CatalogError as exc:  # the whole catalog is unusable (not a row): one line saying what to set
        raise dg.Failure(description=catalog_problem(exc), allow_retries=False) from None
    valid = [{
        "item_id": i.item_id, "prompt": i.prompt, "image_uri": i.image_uri,
        "image_ref": i.image_ref,
        "resolution": i.resolution, "aspect_ratio": i.aspect_ratio, "duration": i.duration,
        "scheduled_date": i.scheduled_date,
        "params": json.dumps(i.params, sort_keys=True) if i.params else None,
        "end_image_uri": i.end_image_uri, "end_image_ref": i.end_image_ref, "endpoint_id": i.endpoint_id or fal.endpoint_id}
        for i in sl.valid]
    summary = rejection_summary(sl.rejected)
    context.log.info(f"catalog {warehouse.catalog_uri} for {day}: {sl.rows_scanned} rows scanned, "
                     f"{len(valid)} valid, {len(sl.rejected)} rejected")
    if sl.rejected:  # one event, however many rows: the table holds them all
        context.log.warning("\n".join(summary.lines()))
    valid_uri = warehouse.write(CATALOG_ITEMS, day, valid)
    rejected_uri = warehouse.write(REJECTED_ITEMS, day, sl.rejected.table(REJECTED_ITEMS.arrow_schema))
    counts = {"rows_scanned": sl.rows_scanned, "valid": len(valid), "rejected": len(sl.rejected)}
    del sl, valid
    pa.default_memory_pool().release_unused()  # (the next steps run in this process too)
    yield from selected_results(context, {
        "catalog_items": table_metadata(CATALOG_ITEMS, valid_uri, counts["valid"], upstream="catalog", extra={
            "catalog_uri": warehouse.catalog_uri, "rows_scanned": counts["rows_scanned"]}),
        "rejected_items": table_metadata(REJECTED_ITEMS, rejected_uri, counts["rejected"], upstream="catalog",
                                         extra=rejection_metadata(summary)),
    })


def rejection_metadata(summary: RejectionSummary) -> dict:
    """Bounded metadata of a day's rejections: counts by field and by reason, the first reasons."""
    return {
        "rejected_by_field": dg.MetadataValue.json(summary.by_field),
        "rejected_by_reason": dg.MetadataValue.md(
            "\n".join([f"- {n:,} × {why}" for why, n in summary.by_reason]
                      + ([f"- {summary.other:,} × other reasons"] if summary.other else [])) or "none"),
        "reasons": dg.MetadataValue.md("\n".join([f"- {r}" for r in summary.sample] + (
            [f"- … and {summary.total - len(summary.sample):,} more (rejected_items has every row)"]
            if summary.total > len(summary.sample) else [])) or "none"),
    }


def catalog_problem(exc: Exception) -> str:
    """A catalog that cannot be read, in one line that names SORA_CATALOG_URI."""
    text, cause = str(exc), exc.__cause__
    if cause is not None and str(cause) and text.endswith(f": {cause}"):  # pyarrow's words: only its last clause
        detail = " ".join(str(cause).split()).rsplit("': ", 1)[-1]
        text = f"{text[:-len(str(cause)) - 2]} ({detail[:160]})"
    text = " ".join(text.split())
    return (f"{text}; set SORA_CATALOG_URI to a Parquet file or folder with the catalog columns (item_id, prompt, "
            "image_uri, scheduled_date; the sample is data/catalog)")
