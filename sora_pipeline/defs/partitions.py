"""The daily partitions every table is split by (UTC days, keys YYYY-MM-DD, start from SORA_PARTITIONS_START)."""

from __future__ import annotations

import dagster as dg

from sora_pipeline.defs.settings import PipelineSettings

daily_partitions = dg.DailyPartitionsDefinition(start_date=PipelineSettings.from_env().partitions_start,
                                                timezone="UTC", end_offset=1)
