"""Helpers for pipeline tests (beside the shared fixtures of `tests.support.fixtures`): a pipeline process's
environment, the summary rollup, and readers of a run's events."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg



__all__ = ["check_results", "materialize_summary", "materializations", "subprocess_env"]


REPO = Path(__file__).resolve().parents[1]


def subprocess_env(project: dict, sim, **extra: str) -> dict:
    """The environment of a pipeline process (`tests/run_day.py`, a CLI) for `project` against simulator `sim`:
    the test's own SORA_/FAL_ variables dropped, the project's set, quick polls."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SORA_", "FAL_"))}
    env.update(SORA_CATALOG_URI=project["catalog_uri"], SORA_WAREHOUSE_URI=project["warehouse_uri"],
               SORA_LEDGER_URL=project["ledger_url"], SORA_FAL_QUEUE_URL=sim.base_url, SORA_POLL_INTERVAL="0.05",
               PYTHONPATH=str(REPO), **extra)
    return env


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
