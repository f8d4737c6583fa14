"""Image inputs for the endpoint: https URLs pass through; data URIs are checked; local files, `memory://` and
the object stores of the allowlist (`sora_pipeline.fal.image_sources`) are read and sent as a base64 data URI, after
checking their size and that they really decode as an image. Nothing else is opened."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass

import fsspec
from PIL import Image

from sora_pipeline.fal.image_sources import LOCAL_SCHEMES, refusal, scheme_of

DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp"}


class ImageInputError(ValueError):
    """The image cannot be used as the first frame (missing, too large, not an image)."""


@dataclass(frozen=True)
class ImageInput:
    """What is sent as `image_url`, plus the content hash used in request keys (never the data itself)."""

    url: str = ""
    sha256: str = ""
    mime: str | None = None
    size: int | None = None
    width: int | None = None
    height: int | None = None

    def __repr__(self) -> str:  # a data URI can be megabytes long
        shown = self.url if not self.url.startswith("data:") else f"data:{self.mime};base64,…"
        return f"ImageInput(url={shown!r}, sha256={self.sha256[:12]}…, size={self.size})"


def inspect_image(data: bytes, *, source: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> tuple[str, int, int]:
    """(mime, width, height) of image bytes, or ImageInputError naming the source."""
    if len(data) > max_bytes:
        raise ImageInputError(f"{source}: image is {len(data):,} bytes, over the {max_bytes:,}-byte cap")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
            fmt, (w, h) = img.format, img.size
    except Exception as exc:  # UnidentifiedImageError, OSError, DecompressionBombError, ...
        raise ImageInputError(f"{source}: does not decode as an image ({type(exc).__name__})") from None
    mime = _MIME.get(fmt or "")
    if mime is None:
        raise ImageInputError(f"{source}: image format {fmt!r} is not supported (use PNG, JPEG, WEBP, GIF)")
    return mime, w, h


def decode_data_uri(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    if not header.startswith("data:image/") or not header.endswith(";base64") or not payload:
        raise ImageInputError("data URI must look like data:image/<type>;base64,<data>")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError("data URI is not valid base64") from None


def load_image_input(ref: str, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                     storage_options: dict | None = None) -> ImageInput:
    """Turn a catalog image reference into what the endpoint accepts, or raise ImageInputError (only that: a
    bad image fails its item, never the day).

    Sources are the allowlist of `sora_pipeline.fal.image_sources` (also applied by the catalog's row rules; this is
    the second line of defence): https URLs, `data:image/...;base64,` URIs, local files, `memory://`, and
    s3/gs/az URIs when their fsspec driver is installed. Anything else (`http://`, `ftp://`, `webhdfs://`,
    `github://`, chained or wrapper URLs, a store without its driver) is refused before anything is opened.

    https URLs are passed through to fal (which fetches them) and are **keyed by their URL only**: `sha256` is
    SHA-256 of `b"url:" + ref`, not of the image. The same URL therefore maps to the same request key, and a
    later run reuses the video made from it even if the image behind the URL was replaced. To generate again,
    change the URL (e.g. add a version query string, `?v=2`) or run the day with the `regenerate` option of the
    `generations` asset config (docs/image-sources.md). Every other source is read here, checked (size cap,
    decodes as an image) and keyed by its bytes."""
    try:
        return _load(ref, max_bytes=max_bytes, storage_options=storage_options)
    except ImageInputError:
        raise
    except Exception as exc:  # a driver's ImportError, a filesystem's own error type, ...: this item only
        raise ImageInputError(f"{_label(ref)}: cannot read image ({type(exc).__name__})") from None


def _label(ref: str) -> str:
    return ref if len(ref) <= 200 else ref[:199] + "…"


def _load(ref: str, *, max_bytes: int, storage_options: dict | None) -> ImageInput:
    scheme = scheme_of(ref)
    if scheme == "https":
        return ImageInput(url=ref, sha256=hashlib.sha256(b"url:" + ref.encode()).hexdigest())
    if scheme is None and ref[:5].lower() == "data:":
        data = decode_data_uri(ref)
        mime, w, h = inspect_image(data, source="data URI", max_bytes=max_bytes)
        return ImageInput(url=ref, sha256=hashlib.sha256(data).hexdigest(), mime=mime, size=len(data),
                          width=w, height=h)
    if "::" in ref:
        raise ImageInputError(f"{_label(ref)}: chained fsspec URLs are not an allowed image source")
    if scheme is not None:
        why = refusal(scheme)
        if why:  # refused before anything is opened: no import, no connection
            raise ImageInputError(why)
    try:
        if scheme is None or scheme in LOCAL_SCHEMES:  # a local file: never through another filesystem
            path = ref.split("://", 1)[1] if scheme else ref
            with open(path, "rb") as fh:
                data = fh.read(max_bytes + 1)
        else:
            with fsspec.open(ref, "rb", **(storage_options or {})) as fh:
                data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise ImageInputError(f"{_label(ref)}: image file not found") from None
    except (OSError, ImportError, ValueError) as exc:
        raise ImageInputError(f"{_label(ref)}: cannot read image ({type(exc).__name__})") from None
    mime, w, h = inspect_image(data, source=_label(ref), max_bytes=max_bytes)
    encoded = base64.b64encode(data).decode("ascii")
    return ImageInput(url=f"data:{mime};base64,{encoded}", sha256=hashlib.sha256(data).hexdigest(), mime=mime,
                      size=len(data), width=w, height=h)
