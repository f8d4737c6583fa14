"""Fetch finished videos: only from https:// or from the queue's own host (the simulator / a test server),
streamed to a local temp file while hashing, then moved into the archive through fsspec.

Bounded: a video may be at most `max_bytes` long (env `SORA_MAX_VIDEO_BYTES`, default 2 GiB): a larger
Content-Length is refused before reading, and the bytes are counted while streaming (`DownloadTooLarge`; the
partial temp file is deleted). Before writing, the temp directory must have at least max(Content-Length,
`min_free_bytes`) free (default 256 MiB; `InsufficientDiskSpace`). Redirects are never followed: a 3xx answer is
refused (`DownloadRefused`)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import fsspec
import httpx

from sora_pipeline.fal.limits import (ACCEPT_ENCODING, DEFAULT_MAX_VIDEO_BYTES, MAX_VIDEO_BYTES_ENV, BoundedDecoder,
                                      UnreadableEncoding, araw_chunks, byte_cap, describe_bytes)
from sora_pipeline.fal.urls import origin_url

DEFAULT_MIN_FREE_BYTES = 256 << 20  # free space the temp directory must keep (at least) to start a download


def _file_mode() -> int:
    """What an ordinary new file gets here (0666 less the umask), like the Parquet tables beside the videos."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()  # read once, at import (changing the umask is process-wide)


class DownloadRefused(ValueError):
    """The video URL is not one we are allowed to fetch (or it answered a redirect, never followed)."""


class DownloadError(RuntimeError):
    """A video download stopped before it went wrong (the partial file is deleted)."""


class DownloadTooLarge(DownloadError):
    """The video is longer than `max_bytes` (SORA_MAX_VIDEO_BYTES)."""


class InsufficientDiskSpace(DownloadError):
    """The temp directory has less free space than the download needs."""


def max_video_bytes(value: int | None = None) -> int:
    """The video cap: `value` if given (the setting SORA_MAX_VIDEO_BYTES, passed down), else 2 GiB."""
    return byte_cap(value, MAX_VIDEO_BYTES_ENV, DEFAULT_MAX_VIDEO_BYTES)


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
                         max_bytes: int | None = None,
                         min_free_bytes: int = DEFAULT_MIN_FREE_BYTES) -> DownloadedFile:
    """Stream `url` to a temp file, hashing as it goes; never holds the whole video in memory.

    `max_bytes`: the longest video accepted (None: 2 GiB; the pipeline passes SORA_MAX_VIDEO_BYTES). `min_free_bytes`:
    the free space the temp directory must have (or the Content-Length, if larger) before anything is written."""
    check_video_url(url, queue_base_url)
    cap = max_video_bytes(max_bytes)
    digest, size = hashlib.sha256(), 0
    fd, path = tempfile.mkstemp(suffix=".mp4", dir=tmp_dir)
    os.chmod(path, FILE_MODE)  # mkstemp's 0600 would follow the file into the archive
    try:
        with os.fdopen(fd, "wb") as out:
            async with http.stream("GET", url, follow_redirects=False,
                                   headers={"Accept-Encoding": ACCEPT_ENCODING}) as response:
                _check_answer(response, url, cap, os.path.dirname(path), min_free_bytes)
                content_type = response.headers.get("content-type")
                decoder = _decoder(response, url)
                async for raw in araw_chunks(response):  # as read (≤ 64 KiB), decoded boundedly
                    for chunk in decoder.pieces(raw):
                        size += len(chunk)
                        if size > cap:
                            raise DownloadTooLarge(_too_large(url, cap))
                        out.write(chunk)
                        digest.update(chunk)
    except BaseException:
        os.unlink(path)
        raise
    return DownloadedFile(path=path, sha256=digest.hexdigest(), size=size, content_type=content_type)


def _decoder(response: httpx.Response, url: str) -> BoundedDecoder:
    try:
        return BoundedDecoder(response)
    except UnreadableEncoding as exc:
        raise DownloadRefused(f"the video at {_shown(url)}: {exc}") from None


def _shown(url: str) -> str:
    where = origin_url(url)
    return f"{where}/…" if where else "the video URL"


def _too_large(url: str, cap: int, declared: int | None = None) -> str:
    how = f"declares Content-Length {declared}, over" if declared is not None else "is larger than"
    return (f"the video at {_shown(url)} {how} the {describe_bytes(cap)} cap on videos (max_bytes / "
            f"{MAX_VIDEO_BYTES_ENV}); the download was stopped and its partial file deleted")


def _check_answer(response: httpx.Response, url: str, cap: int, tmp_dir: str, min_free_bytes: int) -> None:
    """Before a byte is written: no redirect, a success, a Content-Length within the cap, enough free disk."""
    if 300 <= response.status_code < 400:
        target = origin_url(response.headers.get("location", ""))
        where = f" to {target}" if target else ""
        raise DownloadRefused(f"the video at {_shown(url)} answered HTTP {response.status_code} (a redirect"
                              f"{where}); redirects are never followed")
    response.raise_for_status()
    try:
        declared = int(response.headers.get("content-length", ""))
    except ValueError:
        declared = None
    if declared is not None and declared > cap:
        raise DownloadTooLarge(_too_large(url, cap, declared))
    need = max(declared or 0, min_free_bytes)
    free = shutil.disk_usage(tmp_dir).free
    if free < need:
        raise InsufficientDiskSpace(f"only {describe_bytes(free)} free in {tmp_dir}; downloading the video at "
                                    f"{_shown(url)} needs at least {describe_bytes(need)} (its Content-Length or "
                                    f"the {describe_bytes(min_free_bytes)} margin, whichever is larger)")


def archive_file(local_path: str, target_uri: str, storage_options: dict | None = None) -> str:
    """Move a finished local file to `target_uri` (any fsspec URI) so that the target is never half-written:
    a rename on the same local disk, else an upload to a hidden name next to the target and a move."""
    from sora_pipeline.warehouse.tables import is_local_fs  # here: importing this module stays light (settings)

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
                      before_probe: Callable[[], Awaitable[None]] | None = None, max_bytes: int | None = None,
                      min_free_bytes: int = DEFAULT_MIN_FREE_BYTES) -> dict[str, Any]:
    """Download → probe (PyAV, headers only) → archive to `<archive_stem>-<sha256[:12]>.mp4` (if given).

    `max_bytes` / `min_free_bytes` as for `download_video`. Returns the artifacts recorded in the ledger:
    archive_uri, sha256, file_size, content_type, probe."""
    tmp_dir = None
    if archive_stem and "://" not in archive_stem:  # same disk as the archive: the final move is a rename
        tmp_dir = os.path.join(os.path.dirname(archive_stem), ".incoming")
        os.makedirs(tmp_dir, exist_ok=True)
    file = await download_video(http, url, queue_base_url=queue_base_url, tmp_dir=tmp_dir, max_bytes=max_bytes,
                                min_free_bytes=min_free_bytes)
    try:
        if before_probe is not None:
            await before_probe()
        target = f"{archive_stem}-{file.sha256[:12]}.mp4" if archive_stem else None

        def probe_and_archive() -> tuple[Any, str | None]:  # one trip to a worker thread for both
            from sora_pipeline.media.probe import probe_video  # PyAV, loaded by the first download

            probe = probe_video(file.path)
            return probe, archive_file(file.path, target, storage_options) if target else None

        probe, archive_uri = await asyncio.to_thread(probe_and_archive)
    finally:
        if os.path.exists(file.path):
            os.unlink(file.path)
    return {"archive_uri": archive_uri, "sha256": file.sha256, "file_size": file.size,
            "content_type": file.content_type, "probe": asdict(probe)}
