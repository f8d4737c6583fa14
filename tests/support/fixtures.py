"""Fixtures shared by the tests, the benchmarks and scripts/ui_check.py (one place, so all build the same things the
same way):
small real catalogs and images, resources pointed at a simulator, and one day's materialization."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from sora_pipeline.defs.code_location import CHECKS, DAILY_ASSETS
from sora_pipeline.defs.database_resource import LedgerDatabaseResource
from sora_pipeline.defs.platform_resource import FalPlatformResource
from sora_pipeline.defs.resources import FalVideoResource
from sora_pipeline.defs.warehouse_resource import WarehouseResource

DAY = "2026-11-20"
#: a landscape and a portrait image (`<root>/images/<name>.png`)
IMAGES = {"land": ((320, 180), (20, 120, 220)), "port": ((180, 320), (220, 120, 20))}
CATALOG_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("prompt", pa.string()), ("image_uri", pa.string()), ("scheduled_date", pa.date32()),
    ("resolution", pa.string()), ("aspect_ratio", pa.string()), ("duration", pa.int64())])
#: what one day's run materializes: the daily assets and the asset checks
DAILY_SELECTION = [*DAILY_ASSETS, *CHECKS]


def write_images(fs_root: str, names: tuple[str, ...] = tuple(IMAGES)) -> None:
    """PNGs under `<fs_root>/images/` (any fsspec URI); existing files are kept."""
    fs, root = fsspec.core.url_to_fs(fs_root)
    fs.makedirs(f"{root}/images", exist_ok=True)
    for name in names:
        path = f"{root}/images/{name}.png"
        if not fs.exists(path):
            size, color = IMAGES[name]
            with fs.open(path, "wb") as fh:
                Image.new("RGB", size, color).save(fh, format="PNG")


def catalog_rows(day: str = DAY, n: int = 4, prefix: str = "it", **overrides: Any) -> list[dict]:
    """`n` rows cycling through resolutions, aspect ratios, durations and both images."""
    combos = [("720p", "16:9", 4, "land"), ("auto", None, 4, "port"), (None, "9:16", 8, "land"),
              ("1080p", "16:9", 4, "land")]
    rows = []
    for i in range(n):
        res, asp, dur, img = combos[i % len(combos)]
        rows.append({"item_id": f"{prefix}{i}", "prompt": f"prompt {prefix}{i} {day}",
                     "image_uri": f"../images/{img}.png", "scheduled_date": dt.date.fromisoformat(day),
                     "resolution": res, "aspect_ratio": asp, "duration": dur, **overrides})
    return rows


def uniform_rows(day: str, n: int, prefix: str = "it", resolution: str = "720p", aspect_ratio: str = "16:9",
                 duration: int = 4) -> list[dict]:
    """`n` rows with the same image and parameters (the simulator then encodes one clip for all of them)."""
    d = dt.date.fromisoformat(day)
    return [{"item_id": f"{prefix}{day}-{i:05d}", "prompt": f"benchmark clip {i} of {day}: a calm lake at dawn",
             "image_uri": "../images/land.png", "scheduled_date": d, "resolution": resolution,
             "aspect_ratio": aspect_ratio, "duration": duration} for i in range(n)]


def write_catalog(catalog_uri: str, rows: list[dict], name: str = "part-0.parquet") -> None:
    fs, root = fsspec.core.url_to_fs(catalog_uri)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/{name}", "wb") as fh:
        pq.write_table(pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA), fh)


def make_project(root: Path, rows: list[dict] | None = None) -> dict[str, str]:
    """Catalog under <root>/data/catalog with images in <root>/data/images; warehouse and SQLite ledger in root.
    The keys are `WarehouseResource` fields, and `ledger_url` (SORA_LEDGER_URL: the database resource's `url`)."""
    data = root / "data"
    write_images(str(data))
    write_catalog(str(data / "catalog"), rows if rows is not None else catalog_rows())
    return {"catalog_uri": str(data / "catalog"), "warehouse_uri": str(root / "warehouse"),
            "ledger_url": f"sqlite:///{root / 'ledger.sqlite'}"}


def warehouse_resource(project: dict) -> WarehouseResource:
    """`project`'s warehouse, holding its write leases in `project`'s database (`ledger_url`)."""
    fields = {k: v for k, v in project.items() if k != "ledger_url"}
    return WarehouseResource(**fields, database=LedgerDatabaseResource(url=project["ledger_url"]))


def resources(sim_url: str, project: dict, **fal_overrides: Any) -> dict:
    """The code location's resources, pointed at a simulator (quick polls; override anything)."""
    platform = {k: fal_overrides.pop(k) for k in ("platform_url", "admin_key") if k in fal_overrides}
    fal = dict(queue_url=sim_url, poll_interval=0.05, max_concurrency=8, retry_total_timeout=30.0) | fal_overrides
    warehouse = warehouse_resource(project)
    return {"fal": FalVideoResource(**fal), "warehouse": warehouse, "database": warehouse.database,
            "fal_platform": FalPlatformResource(api_url=platform.get("platform_url", f"{sim_url}/v1"),
                                                admin_key=platform.get("admin_key"))}


def materialize_day(res: dict, day: str = DAY, run_config: dict | None = None, instance=None, **kw: Any):
    """`dagster.materialize` of one day's assets and checks (the `generations` step's config as `run_config`)."""
    config = {"ops": {"generations": {"config": run_config}}} if run_config else None
    return dg.materialize(DAILY_SELECTION, partition_key=day, resources=res, run_config=config, instance=instance,
                          **kw)
