"""`make demo`: materialize every day of the catalog (on the embedded simulator unless FAL_KEY is set) and
print a short table of `video_metadata` and where the files are."""

from __future__ import annotations

import logging
import os
import sys
import time

import dagster as dg

from sora_pipeline.catalog import catalog_fingerprints
from sora_pipeline.definitions import ASSETS, build_resources
from sora_pipeline.checks import ALL_CHECKS
from sora_pipeline.settings import PipelineSettings
from sora_pipeline.tables import read_table


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    settings = PipelineSettings.from_env()
    days = sorted(catalog_fingerprints(settings.catalog_uri))
    print(f"sora_pipeline demo — backend: {settings.backend}; catalog {settings.catalog_uri}: "
          f"{len(days)} day(s) {', '.join(days)}")
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    resources = build_resources(settings)
    selection = [a for a in ASSETS if not isinstance(a, dg.AssetSpec)]
    for day in days:
        started = time.monotonic()
        result = dg.materialize(selection, partition_key=day, resources=resources, instance=instance,
                                asset_checks=ALL_CHECKS, raise_on_error=False)
        checks = [e.event_specific_data for e in result.all_events
                  if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        failed_checks = [c.check_name for c in checks if not c.passed]
        print(f"  {day}: {'ok' if result.success else 'FAILED'} in {time.monotonic() - started:.1f}s; "
              f"checks {len(checks) - len(failed_checks)}/{len(checks)} passed"
              + (f" (failed: {', '.join(failed_checks)})" if failed_checks else ""))
        if not result.success:
            return 1
    table = read_table(settings.warehouse_uri, "video_metadata")
    print_summary(table.to_pylist() if table is not None else [], settings)
    return 0


def print_summary(rows: list[dict], settings: PipelineSettings) -> None:
    header = ("date", "item_id", "size", "fps", "frames", "sec", "source", "bytes")
    lines = [(str(r.get("date")), r["item_id"], f"{r['width']}x{r['height']}", f"{r['fps']:g}",
              str(r["num_frames"]), f"{r['duration']:.2f}", r["metadata_source"], f"{r['file_size']:,}")
             for r in sorted(rows, key=lambda r: (str(r.get("date")), r["item_id"]))]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print()
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    for line in lines:
        print(fmt.format(*line))
    base = settings.warehouse_uri.rstrip("/")
    print(f"\n{len(rows)} videos. Tables: {base}/<table>/date=YYYY-MM-DD/*.parquet "
          f"(video_metadata, generations, failed_generations, rejected_items, generation_daily_stats); "
          f"videos: {base}/videos/; ledger: SORA_LEDGER_URL or {base}/_ledger/ledger.sqlite")


if __name__ == "__main__":
    sys.exit(main())
