"""Daily statistics of a day's generations, computed from that day's tables (no Dagster import)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date

import numpy as np
import pyarrow as pa

from sora_pipeline.schemas import Column, TableDef

DAILY_STATS = TableDef("generation_daily_stats", "One row per day summarizing the pipeline's work", (
    Column("day", pa.date32(), "the day partition"),
    Column("planned", pa.int64(), "valid catalog items of the day"),
    Column("submitted", pa.int64(), "items submitted to fal by the latest run"),
    Column("reused", pa.int64(), "items whose stored result was reused (no new charge)"),
    Column("resumed", pa.int64(), "items whose in-flight request was resumed"),
    Column("completed", pa.int64(), "items with a video"),
    Column("failed", pa.int64(), "items that failed"),
    Column("unknown", pa.int64(), "items whose submit had no answer (a person decides)"),
    Column("skipped", pa.int64(), "items skipped (budget, claimed elsewhere)"),
    Column("pending", pa.int64(), "items still running at fal when the run ended"),
    Column("rejected", pa.int64(), "catalog rows rejected by validation"),
    Column("failed_by_type", pa.string(), "JSON {error_type: count}"),
    Column("rejected_by_field", pa.string(), "JSON {field: count}"),
    Column("success_rate", pa.float64(), "completed / planned"),
    Column("latency_p50_s", pa.float64(), "submit → completion, median seconds"),
    Column("latency_p95_s", pa.float64(), "submit → completion, 95th percentile seconds"),
    Column("latency_max_s", pa.float64(), "submit → completion, max seconds"),
    Column("queue_p50_s", pa.float64(), "submit → first seen IN_PROGRESS, median seconds"),
    Column("run_p50_s", pa.float64(), "first seen IN_PROGRESS → completion, median seconds"),
    Column("seconds_generated", pa.float64(), "seconds of video generated"),
    Column("estimated_cost_usd", pa.float64(), "estimated cost of the items submitted"),
    Column("actual_cost_usd", pa.float64(), "cost from generated seconds"),
    Column("resolution_mix", pa.string(), "JSON {resolution: count} of completed videos"),
    Column("aspect_ratio_mix", pa.string(), "JSON {aspect_ratio: count}"),
    Column("duration_mix", pa.string(), "JSON {requested_duration: count}"),
    Column("fps_mix", pa.string(), "JSON {fps: count}"),
    Column("mean_file_size", pa.float64(), "bytes"),
    Column("max_file_size", pa.int64(), "bytes"),
    Column("metadata_from_api", pa.int64(), "videos whose media values came only from the API"),
    Column("metadata_from_probe", pa.int64(), "videos whose media values came only from the probe"),
    Column("metadata_from_both", pa.int64(), "videos with values from both (api+probe)"),
))


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _mix(values) -> str:
    return json.dumps(dict(sorted(Counter(str(v) for v in values).items())))


def daily_stats_row(day: date, generations: list[dict], videos: list[dict], rejected: list[dict]) -> dict:
    status = Counter(g["status"] for g in generations)
    decision = Counter(g["decision"] for g in generations)
    done = [g for g in generations if g["status"] == "completed"]
    latency = [(g["completed_at"] - g["submitted_at"]).total_seconds() for g in done
               if g.get("completed_at") and g.get("submitted_at")]
    queue = [(g["started_at"] - g["submitted_at"]).total_seconds() for g in done
             if g.get("started_at") and g.get("submitted_at")]
    run = [(g["completed_at"] - g["started_at"]).total_seconds() for g in done
           if g.get("started_at") and g.get("completed_at")]
    sizes = [v["file_size"] for v in videos if v.get("file_size") is not None]
    sources = Counter(v["metadata_source"] for v in videos)
    planned = len(generations)
    return {
        "day": day, "planned": planned, "submitted": decision["submitted"], "reused": decision["reused"],
        "resumed": decision["resumed"], "completed": status["completed"], "failed": status["failed"],
        "unknown": status["unknown"], "skipped": status["skipped"], "pending": status["pending"],
        "rejected": len(rejected),
        "failed_by_type": json.dumps(dict(Counter(g["error_type"] for g in generations
                                                  if g["status"] != "completed"))),
        "rejected_by_field": json.dumps(dict(Counter(r["field"] for r in rejected))),
        "success_rate": round(status["completed"] / planned, 4) if planned else None,
        "latency_p50_s": _pct(latency, 50), "latency_p95_s": _pct(latency, 95),
        "latency_max_s": round(max(latency), 3) if latency else None,
        "queue_p50_s": _pct(queue, 50), "run_p50_s": _pct(run, 50),
        "seconds_generated": round(sum(v["duration"] or 0 for v in videos), 3),
        "estimated_cost_usd": round(sum(g["estimated_cost"] or 0 for g in generations
                                        if g["decision"] == "submitted"), 4),
        "actual_cost_usd": round(sum(g["actual_cost"] or 0 for g in done), 4),
        "resolution_mix": _mix(v["resolution"] for v in videos),
        "aspect_ratio_mix": _mix(v["aspect_ratio"] for v in videos),
        "duration_mix": _mix(v["requested_duration"] for v in videos),
        "fps_mix": _mix(v["fps"] for v in videos),
        "mean_file_size": round(sum(sizes) / len(sizes), 1) if sizes else None,
        "max_file_size": max(sizes) if sizes else None,
        "metadata_from_api": sources["api"], "metadata_from_probe": sources["probe"],
        "metadata_from_both": sources["api+probe"],
    }
