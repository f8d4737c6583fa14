"""The image each item sends: small images as data URIs (as always), large ones as a fal storage URL.

`load_image` (planning) reads and checks every image as `fal.inputs.load_image_input` does — the same allowlist,
the same request key (SHA-256 of the bytes) whether the image is uploaded or not — with the cap raised to
`SORA_MAX_UPLOAD_BYTES`; an image above `SORA_UPLOAD_THRESHOLD_BYTES` becomes a `LargeImage` whose URL is filled
in only when its item is about to be submitted (`ImageUploads.prepare`): dry runs and reused videos upload
nothing. The upload happens once per content hash and storage origin: the ledger remembers the file URL until
near the end of its lifetime (`UploadCache.cached_upload`), and concurrent items of one image in this process
share one upload. A failed upload fails its item only (`StorageUploadError`); nothing was claimed or sent for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sora_pipeline.fal.client import shared_ssl_context
from sora_pipeline.fal.inputs import ImageInput, ImageInputError, decode_data_uri, load_image_input
from sora_pipeline.fal.limits import describe_bytes
from sora_pipeline.fal.storage_uploads import StorageSettings, StorageUploader, StorageUploadError
from sora_pipeline.generation.config import GenerationConfig
from sora_pipeline.generation.records import Planned
from sora_pipeline.coordination import UploadCache

log = logging.getLogger("sora_pipeline.generation")
UPLOADS_AT_ONCE = 2  # uploads of one run in flight at most (each holds its image in memory)
_EXT = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif", "image/bmp": ".bmp"}
# uploads in flight in this process, per (content hash, storage origin): later callers wait for the first one
_inflight: dict[tuple[str, str], concurrent.futures.Future] = {}
_inflight_lock = threading.Lock()


@dataclass(frozen=True)
class LargeImage(ImageInput):
    """An image above the upload threshold: read, checked and keyed by its bytes at planning like any other, but
    sent as a fal storage URL; `url` stays empty until `ImageUploads.prepare` gives it one. Its bytes are not
    kept: the upload reads `source` again and checks they still hash to `sha256`."""

    source: str = field(default="", compare=False)
    storage_options: dict | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return f"LargeImage(sha256={self.sha256[:12]}…, size={self.size}, mime={self.mime!r})"

    def uploaded(self, url: str) -> ImageInput:
        """The same image, sent as `url` (same hash: the request key does not change)."""
        return ImageInput(url=url, sha256=self.sha256, mime=self.mime, size=self.size, width=self.width,
                          height=self.height)


def load_image(ref: str, *, storage_options: dict | None = None,
               settings: StorageSettings = StorageSettings()) -> ImageInput:
    """What planning keeps for `ref`: an `ImageInput` (https URL, or a data URI up to the threshold) or a
    `LargeImage` (above it, up to the upload cap). Raises `ImageInputError` like `load_image_input`."""
    image = load_image_input(ref, max_bytes=settings.max_upload_bytes, storage_options=storage_options)
    if image.size is None or image.size <= settings.threshold_bytes:
        return image
    return LargeImage(sha256=image.sha256, mime=image.mime, size=image.size, width=image.width,
                      height=image.height, source=ref, storage_options=storage_options)


class ImageUploads:
    """One run's uploads: `prepare(planned, client)` gives a `LargeImage` its fal storage URL (from the ledger, or
    uploaded now) and leaves every other image as it is. `db` runs a blocking ledger call off the event loop."""

    def __init__(self, cache: UploadCache, db: Callable[..., Awaitable[Any]], config: GenerationConfig,
                 settings: StorageSettings | None = None) -> None:
        self.settings = settings or config.caps.uploads  # the settings' SORA_UPLOAD_* / SORA_FAL_STORAGE_URL
        self.origin = self.settings.origin_for(backend=config.backend, queue_base_url=config.queue_base_url)
        self._cache, self._db = cache, db
        self._slots = asyncio.Semaphore(UPLOADS_AT_ONCE)
        self.uploaded = 0  # uploads this run made

    async def prepare(self, p: Planned, client: Any) -> Planned:
        image, end = p.image, p.end_image
        if isinstance(image, LargeImage):
            p = replace(p, image=image.uploaded(await self.url_for(image, key=_key_of(client))))
        if isinstance(end, LargeImage):  # the end frame is uploaded like the first one
            p = replace(p, end_image=end.uploaded(await self.url_for(end, key=_key_of(client))))
        return p

    async def url_for(self, image: LargeImage, *, key: str | None) -> str:
        """The image's storage URL: remembered in the ledger, else uploaded (once in this process)."""
        cached = await self._db(self._cache.cached_upload, image.sha256, self.origin)
        if cached:
            return cached
        slot = (image.sha256, self.origin)
        with _inflight_lock:
            pending = _inflight.get(slot)
            if pending is None:
                pending = _inflight[slot] = concurrent.futures.Future()
                pending.set_running_or_notify_cancel()  # a waiter that gives up cannot cancel it for the others
                leader = True
            else:
                leader = False
        if not leader:
            return await asyncio.wrap_future(pending)
        try:
            # another upload of this image may have finished between the first look and now
            url = await self._db(self._cache.cached_upload, image.sha256, self.origin) or \
                await self._upload(image, key)
            pending.set_result(url)
            return url
        except BaseException as exc:
            pending.set_exception(exc if isinstance(exc, Exception) else StorageUploadError(
                "the upload of this image was interrupted", retryable=True))
            raise
        finally:
            with _inflight_lock:
                _inflight.pop(slot, None)

    async def _upload(self, image: LargeImage, key: str | None) -> str:
        size = describe_bytes(image.size or 0)
        async with self._slots:
            try:
                data = await asyncio.to_thread(_read_again, image, self.settings.max_upload_bytes)
                uploader = StorageUploader(storage_url=self.origin, key=key, lifetime_s=self.settings.lifetime_s,
                                           max_upload_bytes=self.settings.max_upload_bytes,
                                           verify=shared_ssl_context())
                done = await uploader.upload(data, image.mime or "application/octet-stream", _file_name(image))
            except StorageUploadError as exc:
                threshold = describe_bytes(self.settings.threshold_bytes)
                raise StorageUploadError(f"the image ({size}, above the {threshold} data-URI threshold) could not "
                                         f"be uploaded to fal storage: {exc}", retryable=exc.retryable) from None
            del data
        await self._db(self._cache.remember_upload, image.sha256, self.origin, file_url=done.file_url,
                       size=done.size, content_type=done.content_type, uploaded_at=done.uploaded_at,
                       expires_at=done.expires_at)
        self.uploaded += 1
        log.info("uploaded image %s… (%s) to fal storage at %s; valid until %s", image.sha256[:12], size,
                 self.origin, done.expires_at.isoformat(timespec="seconds"))
        return done.file_url


def _read_again(image: LargeImage, max_bytes: int) -> bytes:
    """The image's bytes, read again from its source; they must still be the ones its request key was made of."""
    try:
        fresh = load_image_input(image.source, max_bytes=max_bytes, storage_options=image.storage_options)
        data = decode_data_uri(fresh.url)
    except ImageInputError as exc:
        raise StorageUploadError(f"reading it again failed: {exc}", retryable=True) from None
    if fresh.sha256 != image.sha256:
        raise StorageUploadError("it changed since the day was planned (its bytes no longer match the request "
                                 "key); run the day again", retryable=True)
    return data


def _file_name(image: LargeImage) -> str:
    """The name fal's storage is told: the content hash, never the local path."""
    return f"{image.sha256[:32]}{_EXT.get(image.mime or '', '')}"


def _key_of(client: Any) -> str | None:
    """The fal key the queue client sends (the same account owns the uploads)."""
    scheme, _, key = client.protocol.headers().get("Authorization", "").partition(" ")
    return key.strip() or None
