"""A finished request's video: downloaded (capped, hashed), probed with PyAV, archived — and priced by what the
probe says the output is (the unit price of fal's billable units)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from sora_pipeline.fal.client import shared_ssl_context
from sora_pipeline.fal.errors import FalError
from sora_pipeline.fal.pools import pooled_async_client
from sora_pipeline.generation.costs import unit_price
from sora_pipeline.generation.config import GenerationConfig
from sora_pipeline.generation.records import Outcome, Planned
from sora_pipeline.media.download import DownloadError, DownloadRefused, fetch_video
from sora_pipeline.media.probe import MediaProbeError

DOWNLOAD_CONNECTIONS = 100  # httpx's default cap, as small pools (`ShardedTransport`); a semaphore paces downloads


def download_client() -> httpx.AsyncClient:
    """The run's client for video downloads (no key: the videos' hosts are not fal's queue)."""
    return pooled_async_client(max_connections=DOWNLOAD_CONNECTIONS, verify=shared_ssl_context(),
                               timeout=httpx.Timeout(120.0))


async def download_and_probe(http: httpx.AsyncClient, cfg: GenerationConfig, p: Planned, out: Outcome, *,
                             before_probe: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
    """The artifacts of `out`'s video (archive URI, sha256, size, probe, started_at, unit_price_usd), for the
    ledger. A video that cannot be fetched or read is a `FalError` of the item (the result stays in the ledger:
    a re-run downloads it again when that can help)."""
    target = f"{cfg.archive_root.rstrip('/')}/{p.item.item_id}" if cfg.archive_root else None
    try:
        artifacts = await fetch_video(http, out.video_url, queue_base_url=cfg.queue_base_url, archive_stem=target,
                                      storage_options=cfg.storage_options, before_probe=before_probe,
                                      max_bytes=cfg.caps.max_video_bytes)
    except MediaProbeError as exc:
        raise FalError(f"the video of {p.item.item_id} is not a readable MP4: {exc}") from None
    except (DownloadError, DownloadRefused) as exc:
        raise FalError(f"the video of {p.item.item_id} was not downloaded: {exc}",
                       retryable=isinstance(exc, DownloadError)) from None
    artifacts["started_at"] = out.started_at.isoformat() if out.started_at else None
    probe = artifacts.get("probe") or {}
    prices = cfg.prices_of(p.endpoint_id)
    artifacts["unit_price_usd"] = unit_price(
        prices, seconds=probe.get("duration") or out.seconds_generated, byo_openai_key=p.spec.used_openai_key,
        height=probe.get("height"), width=probe.get("width"), resolution=p.item.resolution,
        audio=prices.audio_of(p.item.params))
    return artifacts
