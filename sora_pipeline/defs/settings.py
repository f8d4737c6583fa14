"""Pipeline settings read from the environment (docs/reference.md lists them), validated once, with errors that say
what to set. This module is the pipeline's one reader of the environment: `load_settings()` reads it once per
process (the code location, the daily partitions and the demo share that one object) and the values go down as
resource fields and arguments. Secrets are not read here: the Dagster layer passes them as `EnvVar`s so only
names are stored."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field
from sqlalchemy.engine import make_url

from sora_pipeline.generation.costs import PRICE_TABLE_ENV, PriceTable, PriceTableError
from sora_pipeline.endpoints import BadProfile, UnknownEndpoint, get_profile
from sora_pipeline.coordination import url_problem
from sora_pipeline.endpoints import DEFAULT_ENDPOINT_ID
from sora_pipeline.fal.caps import TransferCaps
from sora_pipeline.fal.limits import (
    DEFAULT_MAX_JSON_BYTES,
    DEFAULT_MAX_STREAM_EVENT_BYTES,
    DEFAULT_MAX_VIDEO_BYTES,
    MAX_JSON_BYTES_ENV,
    MAX_STREAM_EVENT_BYTES_ENV,
    MAX_VIDEO_BYTES_ENV,
    parse_byte_cap,
)
from sora_pipeline.fal.platform import DEFAULT_API_URL, PlatformError, check_api_url
from sora_pipeline.fal.storage_uploads import DEFAULT_LIFETIME_S, DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_THRESHOLD_BYTES, \
    StorageSettings
from sora_pipeline.fal.urls import split_endpoint

DEFAULT_POLL_INTERVAL = 1.0  # seconds; backs off for long generations, never below this


class ConfigError(ValueError):
    """A setting is wrong; the message names the variable and what to set it to."""


@dataclass(frozen=True)
class PipelineSettings:
    catalog_uri: str = "data/catalog"
    warehouse_uri: str = "data/warehouse"
    ledger_url: str | None = None
    endpoint_id: str = DEFAULT_ENDPOINT_ID
    queue_url: str | None = None
    has_fal_key: bool = False
    has_openai_key: bool = False
    max_concurrency: int = 8  # one run's cap (the account's in-flight cap bounds every run together)
    fal_concurrency: int | None = None  # the account's C (None: 8, and the cap is at least SORA_MAX_CONCURRENCY)
    inflight_cap: int | None = None  # None: 2 × C
    poll_interval: float = DEFAULT_POLL_INTERVAL
    image_roots: tuple[str, ...] = field(default_factory=tuple)
    partitions_start: str = "2026-01-01"  # the first daily partition (`defs.partitions`)
    webhook_url: str | None = None
    platform_url: str = DEFAULT_API_URL  # fal's platform API (registry, prices, billing, history)
    has_admin_key: bool = False  # FAL_ADMIN_KEY: billing events (a secret: only its presence is kept here)
    price_table: str | None = None  # SORA_PRICE_TABLE: JSON prices overriding the default endpoint's (checked)
    caps: TransferCaps = field(default_factory=TransferCaps)  # byte caps and fal storage uploads
    failpoint: str | None = None  # SORA_FAILPOINT: a crash point armed for tests (`generation.failpoints`)
    plain_logs: bool = False  # NO_COLOR set: Dagster's command-line logs without colour codes
    dagster_home: str | None = None  # DAGSTER_HOME (the demo keeps its runs there when set)

    @property
    def backend(self) -> str:
        return "fal" if self.has_fal_key and not self.uses_embedded_simulator else "simulator"

    @property
    def uses_embedded_simulator(self) -> bool:
        return not self.has_fal_key and not self.queue_url

    def check_catalog(self) -> None:
        """A local catalog path must exist (checked when the code location loads, before anything runs); remote
        URIs are checked by the first read. Raises ConfigError naming SORA_CATALOG_URI."""
        problem = local_path_problem(self.catalog_uri)
        if problem:
            raise ConfigError(f"SORA_CATALOG_URI={self.catalog_uri!r}: {problem}; set SORA_CATALOG_URI to the "
                              "catalog's Parquet file or folder (the sample catalog is data/catalog in the repo)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PipelineSettings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value and value.strip() else None

        queue_url = get("SORA_FAL_QUEUE_URL")
        if queue_url is not None:
            parts = urlsplit(queue_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"SORA_FAL_QUEUE_URL={queue_url!r} is not an http(s) URL; set it to "
                                  "https://queue.fal.run for fal, or unset it to use the embedded simulator")
        has_key = get("FAL_KEY") is not None
        if has_key and queue_url is None:
            queue_url = "https://queue.fal.run"
        endpoint_id = get("SORA_ENDPOINT_ID") or DEFAULT_ENDPOINT_ID
        try:
            split_endpoint(endpoint_id)
        except ValueError:
            raise ConfigError(f"SORA_ENDPOINT_ID={endpoint_id!r} must look like owner/alias/path, "
                              f"e.g. {DEFAULT_ENDPOINT_ID}") from None
        try:
            profile = get_profile(endpoint_id, env=dict(env) if env is not None else None)
        except (UnknownEndpoint, BadProfile) as exc:
            raise ConfigError(f"SORA_ENDPOINT_ID: {exc}") from None
        price_table = get(PRICE_TABLE_ENV)
        try:
            PriceTable.with_override(price_table, profile)
        except PriceTableError as exc:
            raise ConfigError(f"{exc}; unset it to use {endpoint_id}'s prices") from None
        start = _partitions_start(get("SORA_PARTITIONS_START"))
        webhook_url = get("SORA_WEBHOOK_URL")
        if webhook_url is not None and urlsplit(webhook_url).scheme not in ("http", "https"):
            raise ConfigError(f"SORA_WEBHOOK_URL={webhook_url!r} must be the http(s) URL fal can reach the "
                              "webhook receiver at, or unset (poll fal)")
        try:
            caps = TransferCaps(
                max_json_bytes=parse_byte_cap(get(MAX_JSON_BYTES_ENV), MAX_JSON_BYTES_ENV, DEFAULT_MAX_JSON_BYTES),
                max_stream_event_bytes=parse_byte_cap(get(MAX_STREAM_EVENT_BYTES_ENV), MAX_STREAM_EVENT_BYTES_ENV,
                                                      DEFAULT_MAX_STREAM_EVENT_BYTES),
                max_video_bytes=parse_byte_cap(get(MAX_VIDEO_BYTES_ENV), MAX_VIDEO_BYTES_ENV,
                                               DEFAULT_MAX_VIDEO_BYTES),
                uploads=StorageSettings.from_env(env))  # fal storage uploads of large images (fal/storage_uploads.py)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        ledger_url = get("SORA_LEDGER_URL")
        if ledger_url is not None:
            check_ledger_url(ledger_url)
        has_admin_key = get("FAL_ADMIN_KEY") is not None
        platform_url = get("SORA_FAL_API_URL") or DEFAULT_API_URL
        try:  # the key goes to it only over https or to loopback
            platform_url = check_api_url(platform_url, with_key=has_key or has_admin_key)
        except PlatformError as exc:
            raise ConfigError(str(exc)) from None
        roots = tuple(r.strip() for r in (get("SORA_IMAGE_ROOTS") or "").split(",") if r.strip())
        return cls(
            catalog_uri=get("SORA_CATALOG_URI") or "data/catalog",
            warehouse_uri=get("SORA_WAREHOUSE_URI") or "data/warehouse",
            ledger_url=ledger_url,
            endpoint_id=endpoint_id,
            queue_url=queue_url,
            has_fal_key=has_key,
            has_openai_key=get("SORA_OPENAI_API_KEY") is not None,
            max_concurrency=_number(get, "SORA_MAX_CONCURRENCY", int, 8, minimum=1),
            fal_concurrency=_number(get, "SORA_FAL_CONCURRENCY", int, None, minimum=1),
            inflight_cap=_number(get, "SORA_FAL_INFLIGHT_CAP", int, None, minimum=1),
            poll_interval=_number(get, "SORA_POLL_INTERVAL", float, DEFAULT_POLL_INTERVAL, minimum=0.01),
            image_roots=roots,
            price_table=price_table,
            partitions_start=start,
            webhook_url=webhook_url,
            platform_url=platform_url,
            has_admin_key=has_admin_key,
            caps=caps,
            failpoint=get("SORA_FAILPOINT"),
            plain_logs=bool(env.get("NO_COLOR")),
            dagster_home=env.get("DAGSTER_HOME") or None,
        )


@functools.cache
def load_settings() -> PipelineSettings:
    """This process's settings: the environment, read and checked once (a `ConfigError` is raised again on the
    next call, nothing is kept). The code location, the daily partitions and the demo share it."""
    return PipelineSettings.from_env()


class TransferCapsConfig(dg.Config):
    """`TransferCaps` as a resource's config (`FalVideoResource.caps`): shown with the run's resources."""

    max_json_bytes: int = Field(default=DEFAULT_MAX_JSON_BYTES, ge=1, description="SORA_MAX_JSON_BYTES")
    max_stream_event_bytes: int = Field(default=DEFAULT_MAX_STREAM_EVENT_BYTES, ge=1,
                                        description="SORA_MAX_STREAM_EVENT_BYTES")
    max_video_bytes: int = Field(default=DEFAULT_MAX_VIDEO_BYTES, ge=1, description="SORA_MAX_VIDEO_BYTES")
    upload_threshold_bytes: int = Field(default=DEFAULT_THRESHOLD_BYTES, ge=1,
                                        description="SORA_UPLOAD_THRESHOLD_BYTES")
    max_upload_bytes: int = Field(default=DEFAULT_MAX_UPLOAD_BYTES, ge=1, description="SORA_MAX_UPLOAD_BYTES")
    upload_lifetime_s: int = Field(default=DEFAULT_LIFETIME_S, ge=1, description="SORA_UPLOAD_LIFETIME_S")
    storage_url: str | None = Field(default=None, description="SORA_FAL_STORAGE_URL")

    @classmethod
    def of(cls, caps: TransferCaps) -> TransferCapsConfig:
        u = caps.uploads
        return cls(max_json_bytes=caps.max_json_bytes, max_stream_event_bytes=caps.max_stream_event_bytes,
                   max_video_bytes=caps.max_video_bytes, upload_threshold_bytes=u.threshold_bytes,
                   max_upload_bytes=u.max_upload_bytes, upload_lifetime_s=u.lifetime_s, storage_url=u.storage_url)

    def caps(self) -> TransferCaps:
        return TransferCaps(self.max_json_bytes, self.max_stream_event_bytes, self.max_video_bytes,
                            StorageSettings(self.upload_threshold_bytes, self.max_upload_bytes,
                                            self.upload_lifetime_s, self.storage_url))


def shown_url(url: str) -> str:
    """A database URL with its password hidden (or a placeholder when it does not parse)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: show nothing of it (it may hold a password)
        return "<not a URL>"


def check_ledger_url(url: str) -> None:
    """SORA_LEDGER_URL must name a ledger this installation can open (ConfigError, one line, password hidden)."""
    problem = url_problem(url)
    if problem:
        raise ConfigError(f"SORA_LEDGER_URL={shown_url(url)}: {problem}; or unset SORA_LEDGER_URL to keep the "
                          "ledger in a SQLite file under the warehouse")


DEFAULT_PARTITIONS_START = "2026-01-01"


def _partitions_start(value: str | None) -> str:
    """`SORA_PARTITIONS_START` (YYYY-MM-DD), checked; the first daily partition."""
    start = value or DEFAULT_PARTITIONS_START
    try:
        date.fromisoformat(start)
    except ValueError:
        raise ConfigError(f"SORA_PARTITIONS_START={start!r} must be a date like 2026-01-01") from None
    return start


def local_path_problem(uri: str) -> str | None:
    """Why a local path (plain, or `file://`) cannot be a catalog, or None (also for any other scheme)."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        path = parts.path
    elif parts.scheme and len(parts.scheme) > 1:  # s3://, gs://, memory://, …: the first read tells
        return None
    else:  # a plain path (a one-letter "scheme" is a Windows drive)
        path = uri
    if not os.path.exists(path):
        where = "" if os.path.isabs(path) else f" (relative to the working directory {os.getcwd()})"
        return f"no such file or folder{where}"
    return None


def _number(get, name: str, kind: type, default, *, minimum):
    raw = get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a{'n integer' if kind is int else ' number'}; "
                          f"set it to a value ≥ {minimum} (default {default})") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be ≥ {minimum} (default {default})")
    return value
