"""The code location: `defs` wires assets, checks, resources, the schedule and the sensor.

Settings come from the environment (docs/reference.md lists them); secrets are passed as `EnvVar`s so only their names
are stored in Dagster's config."""

from __future__ import annotations

import dagster as dg

from sora_pipeline.defs.assets.analytics import generation_daily_stats, generation_summary
from sora_pipeline.defs.assets.catalog import catalog_slice, catalog_source
from sora_pipeline.defs.assets.generations import generations
from sora_pipeline.defs.assets.metadata import video_metadata
from sora_pipeline.defs.automation import catalog_change_sensor, daily_generation_job, daily_generation_schedule
from sora_pipeline.defs.checks import ALL_CHECKS
from sora_pipeline.redact import install_log_redaction
from sora_pipeline.defs.resources import FalVideoResource
from sora_pipeline.defs.settings import PipelineSettings
from sora_pipeline.defs.warehouse_resource import WarehouseResource


def build_resources(settings: PipelineSettings | None = None) -> dict:
    settings = settings or PipelineSettings.from_env()
    return {
        "fal": FalVideoResource(
            endpoint_id=settings.endpoint_id, queue_url=settings.queue_url,
            fal_key=dg.EnvVar("FAL_KEY") if settings.has_fal_key else None,
            openai_api_key=dg.EnvVar("SORA_OPENAI_API_KEY") if settings.has_openai_key else None,
            max_concurrency=settings.max_concurrency, account_concurrency=settings.fal_concurrency,
            inflight_cap=settings.inflight_cap, poll_interval=settings.poll_interval,
            webhook_url=settings.webhook_url),
        "warehouse": WarehouseResource(catalog_uri=settings.catalog_uri, warehouse_uri=settings.warehouse_uri,
                                       ledger_url=settings.ledger_url, image_roots=list(settings.image_roots)),
    }


install_log_redaction()  # FAL_KEY / SORA_OPENAI_API_KEY never reach a log record, the event log or compute logs

DAILY_ASSETS = [catalog_slice, generations, video_metadata, generation_daily_stats]  # one run per day
ASSETS = [catalog_source, *DAILY_ASSETS, generation_summary]

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[daily_generation_job],
    schedules=[daily_generation_schedule],
    sensors=[catalog_change_sensor],
    resources=build_resources(),
)
