"""`video_metadata`: one row per generated video of the day, media values reconciled between API and probe."""


import json

import dagster as dg

from sora_pipeline.defs.assets.lineage import arrow_rows, spec_metadata, table_metadata
from sora_pipeline.defs.assets.upstream import read_upstream
from sora_pipeline.defs.partitions import daily_partitions
from sora_pipeline.media.reconcile import reconcile
from sora_pipeline.warehouse.schemas import VIDEO_METADATA
from sora_pipeline.defs.warehouse_resource import WarehouseResource

GROUP = "generation"


def video_metadata_rows(generation_rows: list[dict], log=None) -> list[dict]:
    """Contract rows for the completed items of a `generations` day."""
    rows = []
    for g in generation_rows:
        if g["status"] != "completed":
            continue
        api = json.loads(g["api_json"]) if g.get("api_json") else {}
        probe = json.loads(g["probe_json"]) if g.get("probe_json") else {}
        rec = reconcile(api, probe)
        for message in rec.disagreements:
            if log:
                log.warning(f"{g['item_id']}: metadata disagreement, using the file's value: {message}")
        v = rec.values
        rows.append({
            "item_id": g["item_id"], "request_id": g["request_id"], "video_id": g["video_id"],
            "video_url": g["video_url"], "content_type": g["content_type"] or "video/mp4",
            "file_size": g["file_size"] if g["file_size"] is not None else api.get("file_size"),
            "width": v["width"], "height": v["height"], "fps": v["fps"], "num_frames": v["num_frames"],
            "duration": v["duration"], "metadata_source": rec.source,
            "resolution": g["resolution"], "aspect_ratio": g["aspect_ratio"],
            "requested_duration": g["requested_duration"], "submitted_at": g["submitted_at"],
            "completed_at": g["completed_at"], "endpoint_id": g["endpoint_id"], "backend": g["backend"],
            "archive_uri": g["archive_uri"], "sha256": g["sha256"],
            "has_audio": probe.get("has_audio") if probe else None,
        })
    return sorted(rows, key=lambda r: r["item_id"])


@dg.asset(
    # the catalog step's two outputs are selected together (`+video_metadata` takes the whole step)
    key="video_metadata", group_name=GROUP, code_version="1", deps=["generations", "catalog_items", "rejected_items"],
    kinds={"parquet"},
    partitions_def=daily_partitions, backfill_policy=dg.BackfillPolicy.multi_run(1),
    metadata=spec_metadata(VIDEO_METADATA),
    description="One row per successfully generated video of the day (columns: docs/reference.md): ids, URL, size, "
                "width/height/fps/num_frames/duration reconciled between the API's answer and a PyAV probe of "
                "the file (`metadata_source`), what was asked, timestamps, backend.",
)
def video_metadata(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    day = context.partition_key
    rows = video_metadata_rows(arrow_rows(read_upstream(warehouse, "generations", day)), context.log)
    uri = warehouse.write(VIDEO_METADATA, day, rows)
    sources = {s: sum(r["metadata_source"] == s for r in rows) for s in ("api", "probe", "api+probe")}
    preview = "\n".join(f"| {r['item_id']} | {r['width']}×{r['height']} | {r['fps']:g} | {r['num_frames']} | "
                        f"{r['duration']:.2f} | {r['metadata_source']} |" for r in rows[:20])
    return dg.MaterializeResult(metadata=table_metadata(VIDEO_METADATA, uri, len(rows), extra={
        "metadata_sources": sources,
        "preview": dg.MetadataValue.md("| item | size | fps | frames | seconds | source |\n|---|---|---|---|---|---|\n"
                                       + preview) if rows else dg.MetadataValue.md("no videos"),
    }))
