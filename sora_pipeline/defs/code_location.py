"""The code location: `defs` wires assets, checks, resources, the schedule and the sensor.

Settings come from the environment, read once (`settings.load_settings`; docs/reference.md lists them), and go
down as resource fields; secrets are passed as `EnvVar`s so only their names are stored in Dagster's config."""

from __future__ import annotations

import re
import sys
import warnings

import dagster as dg

# Before the assets are imported (their decorators warn at import time): the Beta/Preview features this project
# chooses on purpose (`backfill_policy`, `partitions_def` on checks, …) would print ~25 lines in every process that
# loads the code location — each run worker and each step. Every such process imports this module first.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from sora_pipeline.coordination import default_ledger_file  # noqa: E402
from sora_pipeline.defs.settings import ConfigError, PipelineSettings, TransferCapsConfig, load_settings  # noqa: E402
from sora_pipeline.generation.failpoints import arm  # noqa: E402

_PARTITION_KEY = re.compile(r"partition key `([^`]*)`")


def one_line_error(exc: BaseException | None) -> str | None:
    """The one line to show for a configuration mistake the user can fix (a bad setting, a day outside the
    partitions), or None for anything else. Looks through the exception's causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConfigError):
            return str(exc)
        if isinstance(exc, dg.DagsterInvalidSubsetError) and "does not support subsetting" in str(exc):
            return ("catalog_items and rejected_items are written by one step: select both, e.g. "
                    "--select '+video_metadata' or '*generation_daily_stats'")
        if isinstance(exc, (dg.DagsterInvalidSubsetError, dg.DagsterUnknownPartitionError)):
            match = _PARTITION_KEY.search(str(exc))
            if match:
                from sora_pipeline.defs.partitions import partition_problem

                return partition_problem(match.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


def _install_cli_error_hook() -> None:
    """In a command-line process (`dagster asset materialize`, `dg launch`, `python -m sora_pipeline.demo`), a
    configuration mistake that reaches the top ends the program with `error: <one line>` instead of a traceback
    through click and importlib. Only replaces Python's default hook; anything else prints as before."""
    if sys.excepthook is not sys.__excepthook__:
        return

    def hook(exc_type, exc, tb):
        line = one_line_error(exc)
        if line is None:
            return sys.__excepthook__(exc_type, exc, tb)
        print(f"error: {line}", file=sys.stderr, flush=True)

    sys.excepthook = hook


def _plain_logs_into_pipes(no_color: bool) -> None:
    """Dagster's command-line processes (`dg check defs`, `dagster definitions validate`) log through coloredlogs
    whether or not anyone is looking: into a pipe or a file (or with NO_COLOR set: `no_color`) the same lines go
    without ANSI colour codes."""
    import logging

    if sys.stderr.isatty() and not no_color:
        return
    for handler in logging.getLogger("dagster").handlers:
        formatter = handler.formatter
        if formatter is not None and type(formatter).__module__.startswith("coloredlogs"):
            handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s",
                                                   "%Y-%m-%d %H:%M:%S %z"))  # Dagster's own, uncoloured


def _load_settings() -> tuple[PipelineSettings | None, ConfigError | None]:
    try:
        settings = load_settings()
        settings.check_catalog()
        return settings, None
    except ConfigError as exc:
        return None, exc


_install_cli_error_hook()
SETTINGS, _error = _load_settings()
_plain_logs_into_pipes(SETTINGS.plain_logs if SETTINGS is not None else False)  # also for the error below
if _error is not None:  # the code location does not load (a traceback of two frames: this one and the entry point)
    raise _error.with_traceback(None) from None  # a setting is wrong: the message names it and what to set
arm(SETTINGS.failpoint)  # crash tests: SORA_FAILPOINT, in every process that loads the code location

from sora_pipeline.defs.assets.analytics import generation_daily_stats, generation_summary  # noqa: E402
from sora_pipeline.defs.assets.billing import fal_billing, fal_billing_matches_estimate  # noqa: E402
from sora_pipeline.defs.assets.catalog import catalog_slice, catalog_source  # noqa: E402
from sora_pipeline.defs.assets.generations import generations  # noqa: E402
from sora_pipeline.defs.assets.metadata import video_metadata  # noqa: E402
from sora_pipeline.defs.automation import (  # noqa: E402
    billing_job, billing_schedule, catalog_change_sensor, daily_generation_job, daily_generation_schedule,
    summary_job)
from sora_pipeline.defs.checks import ALL_CHECKS  # noqa: E402
from sora_pipeline.redact import install_log_redaction  # noqa: E402
from sora_pipeline.defs.platform_resource import FalPlatformResource  # noqa: E402
from sora_pipeline.defs.resources import FalVideoResource  # noqa: E402
from sora_pipeline.defs.database_resource import LedgerDatabaseResource  # noqa: E402
from sora_pipeline.defs.warehouse_resource import WarehouseResource  # noqa: E402


def build_resources(settings: PipelineSettings | None = None, **fal_overrides) -> dict:
    """The code location's resources from `settings` (this process's, `SETTINGS`, when None); `fal_overrides` are
    more `FalVideoResource` fields (the demo sets the embedded simulator's latency). One `database` instance is
    the `database` resource and the warehouse's; its default file follows the warehouse (`default_ledger_file`)."""
    settings = settings or SETTINGS
    database = LedgerDatabaseResource(
        url=settings.ledger_url, dagster_home=settings.dagster_home,
        default_file=str(default_ledger_file(settings.warehouse_uri, settings.dagster_home)))
    return {
        "fal": FalVideoResource(
            endpoint_id=settings.endpoint_id, queue_url=settings.queue_url,
            fal_key=dg.EnvVar("FAL_KEY") if settings.has_fal_key else None,
            openai_api_key=dg.EnvVar("SORA_OPENAI_API_KEY") if settings.has_openai_key else None,
            max_concurrency=settings.max_concurrency, account_concurrency=settings.fal_concurrency,
            inflight_cap=settings.inflight_cap, poll_interval=settings.poll_interval,
            webhook_url=settings.webhook_url, caps=TransferCapsConfig.of(settings.caps),
            price_table=settings.price_table, **fal_overrides),
        "warehouse": WarehouseResource(catalog_uri=settings.catalog_uri, warehouse_uri=settings.warehouse_uri,
                                       image_roots=list(settings.image_roots), database=database),
        "database": database,
        "fal_platform": FalPlatformResource(
            api_url=settings.platform_url, key=dg.EnvVar("FAL_KEY") if settings.has_fal_key else None,
            admin_key=dg.EnvVar("FAL_ADMIN_KEY") if settings.has_admin_key else None,
            max_json_bytes=settings.caps.max_json_bytes),
    }


install_log_redaction()  # FAL_KEY / SORA_OPENAI_API_KEY never reach a log record, the event log or compute logs

DAILY_ASSETS = [catalog_slice, generations, fal_billing, video_metadata, generation_daily_stats]  # one run per day
CHECKS = [*ALL_CHECKS, fal_billing_matches_estimate]
ASSETS = [catalog_source, *DAILY_ASSETS, generation_summary]

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=[daily_generation_job, summary_job, billing_job],
    schedules=[daily_generation_schedule, billing_schedule],
    sensors=[catalog_change_sensor],
    resources=build_resources(),
)
