"""Fetch finished videos: only from https:// or from the queue's own host (the simulator / a test server),
streamed to a local temp file while hashing, then moved into the archive through fsspec."""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import fsspec
import httpx

from sora_pipeline.media import probe_video
from sora_pipeline.tables import is_local_fs


class DownloadRefused(ValueError):
    """The video URL is not one we are allowed to fetch."""


@dataclass(frozen=True)
class DownloadedFile:
    path: str  # local temp file (caller removes it or hands it to `archive_file`)
    sha256: str
    size: int
    content_type: str | None


def check_video_url(url: str, queue_base_url: str) -> None:
    """Allow https:// anywhere, and http:// only on the queue base URL's own host and port."""
    parts, base = urlsplit(url), urlsplit(queue_base_url)
    if parts.scheme == "https" and parts.netloc:
        return
    if parts.scheme == "http" and base.scheme == "http" and parts.hostname == base.hostname \
            and (parts.port or 80) == (base.port or 80):
        return
    raise DownloadRefused(f"refusing to download video from {url!r}: only https:// URLs or the queue's own "
                          f"host ({base.scheme}://{base.netloc}) are allowed")


async def download_video(http: httpx.AsyncClient, url: str, *, queue_base_url: str, tmp_dir: str | None = None,
                         chunk_size: int = 1 << 20) -> DownloadedFile:
    """Stream `url` to a temp file, hashing as it goes; never holds the whole video in memory."""
    check_video_url(url, queue_base_url)
    digest, size = hashlib.sha256(), 0
    fd, path = tempfile.mkstemp(suffix=".mp4", dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            async with http.stream("GET", url, follow_redirects=False) as response:
                response.raise_for_status()
                content_type = response.headers.get("content-type")
                async for chunk in response.aiter_bytes(chunk_size):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
    except BaseException:
        os.unlink(path)
        raise
    return DownloadedFile(path=path, sha256=digest.hexdigest(), size=size, content_type=content_type)


def archive_file(local_path: str, target_uri: str, storage_options: dict | None = None) -> str:
    """Move a finished local file to `target_uri` (any fsspec URI) so that the target is never half-written:
    a rename on the same local disk, else an upload to a hidden name next to the target and a move."""
    plain_path = "://" not in target_uri and not storage_options  # no filesystem object needed to rename
    fs, target = (None, target_uri) if plain_path else fsspec.core.url_to_fs(target_uri, **(storage_options or {}))
    if fs is None or is_local_fs(fs):
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        try:
            os.replace(local_path, target)
            return target_uri
        except OSError:  # another device: fall through to copy + rename
            fs = fs or fsspec.filesystem("file")
    parent = posixpath.dirname(target)
    fs.makedirs(parent, exist_ok=True)
    staging = f"{parent}/.{posixpath.basename(target)}.partial"
    fs.put_file(local_path, staging)
    fs.mv(staging, target)
    os.unlink(local_path)
    return target_uri


async def fetch_video(http: httpx.AsyncClient, url: str, *, queue_base_url: str, archive_stem: str | None,
                      storage_options: dict | None = None,
                      before_probe: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
    """Download → probe (PyAV, headers only) → archive to `<archive_stem>-<sha256[:12]>.mp4` (if given).

    Returns the artifacts recorded in the ledger: archive_uri, sha256, file_size, content_type, probe."""
    tmp_dir = None
    if archive_stem and "://" not in archive_stem:  # same disk as the archive: the final move is a rename
        tmp_dir = os.path.join(os.path.dirname(archive_stem), ".incoming")
        os.makedirs(tmp_dir, exist_ok=True)
    file = await download_video(http, url, queue_base_url=queue_base_url, tmp_dir=tmp_dir)
    try:
        if before_probe is not None:
            await before_probe()
        target = f"{archive_stem}-{file.sha256[:12]}.mp4" if archive_stem else None

        def probe_and_archive() -> tuple[Any, str | None]:  # one trip to a worker thread for both
            probe = probe_video(file.path)
            return probe, archive_file(file.path, target, storage_options) if target else None

        probe, archive_uri = await asyncio.to_thread(probe_and_archive)
    finally:
        if os.path.exists(file.path):
            os.unlink(file.path)
    return {"archive_uri": archive_uri, "sha256": file.sha256, "file_size": file.size,
            "content_type": file.content_type, "probe": asdict(probe)}
