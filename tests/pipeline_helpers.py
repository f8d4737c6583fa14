"""Helpers for pipeline tests: small real catalogs, resources pointed at a test simulator, materializations."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from sora_pipeline.defs.checks import ALL_CHECKS
from sora_pipeline.definitions import DAILY_ASSETS
from sora_pipeline.defs.resources import FalVideoResource
from sora_pipeline.defs.warehouse_resource import WarehouseResource

DAY = "2026-11-20"
SELECTION = DAILY_ASSETS


def write_images(fs_root: str) -> None:
    """A landscape and a portrait PNG under `<fs_root>/images/` (any fsspec URI)."""
    fs, root = fsspec.core.url_to_fs(fs_root)
    fs.makedirs(f"{root}/images", exist_ok=True)
    for name, size, color in (("land.png", (320, 180), (20, 120, 220)), ("port.png", (180, 320), (220, 120, 20))):
        with fs.open(f"{root}/images/{name}", "wb") as fh:
            Image.new("RGB", size, color).save(fh, format="PNG")


def catalog_rows(day: str = DAY, n: int = 4, prefix: str = "it", **overrides) -> list[dict]:
    combos = [("720p", "16:9", 4, "land"), ("auto", None, 4, "port"), (None, "9:16", 8, "land"),
              ("1080p", "16:9", 4, "land")]
    rows = []
    for i in range(n):
        res, asp, dur, img = combos[i % len(combos)]
        rows.append({"item_id": f"{prefix}{i}", "prompt": f"prompt {prefix}{i} {day}",
                     "image_uri": f"../images/{img}.png", "scheduled_date": dt.date.fromisoformat(day),
                     "resolution": res, "aspect_ratio": asp, "duration": dur, **overrides})
    return rows


def write_catalog(catalog_uri: str, rows: list[dict], name: str = "part-0.parquet") -> None:
    fs, root = fsspec.core.url_to_fs(catalog_uri)
    fs.makedirs(root, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("item_id", pa.string()), ("prompt", pa.string()), ("image_uri", pa.string()),
        ("scheduled_date", pa.date32()), ("resolution", pa.string()), ("aspect_ratio", pa.string()),
        ("duration", pa.int64())]))
    with fs.open(f"{root}/{name}", "wb") as fh:
        pq.write_table(table, fh)


def make_project(tmp_path: Path, rows: list[dict] | None = None) -> dict:
    """Catalog under tmp/data/catalog with images in tmp/data/images; warehouse and ledger in tmp."""
    data = tmp_path / "data"
    write_images(str(data))
    write_catalog(str(data / "catalog"), rows if rows is not None else catalog_rows())
    return {"catalog_uri": str(data / "catalog"), "warehouse_uri": str(tmp_path / "warehouse"),
            "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}"}


def resources(sim_url: str, project: dict, **fal_overrides) -> dict:
    fal = dict(queue_url=sim_url, poll_interval=0.05, max_concurrency=8, retry_total_timeout=30.0)
    fal.update(fal_overrides)
    return {"fal": FalVideoResource(**fal), "warehouse": WarehouseResource(**project)}


def materialize_day(res: dict, day: str = DAY, run_config: dict | None = None, instance=None, **kw):
    config = {"ops": {"generations": {"config": run_config}}} if run_config else None
    return dg.materialize(SELECTION + ALL_CHECKS, partition_key=day, resources=res, run_config=config,
                          instance=instance, **kw)


def materialize_summary(res: dict, instance=None):
    """The non-partitioned `generation_summary` rollup over every materialized day."""
    from sora_pipeline.defs.assets.analytics import generation_summary

    return dg.materialize([generation_summary], resources=res, instance=instance)


def materializations(result, key: str) -> list:
    return [e.event_specific_data.materialization for e in result.all_events
            if e.event_type_value == "ASSET_MATERIALIZATION"
            and e.event_specific_data.materialization.asset_key.to_user_string() == key]


def check_results(result) -> dict[str, bool]:
    return {e.event_specific_data.check_name: e.event_specific_data.passed for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"}
