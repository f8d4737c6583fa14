"""Image inputs for the endpoint: https URLs pass through; data URIs are checked; anything else is read through
fsspec and sent as a base64 data URI, after checking its size and that it really decodes as an image."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass

import fsspec
from PIL import Image, UnidentifiedImageError

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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
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
    """Turn a catalog image reference into what the endpoint accepts.

    https URLs are passed through and keyed by their URL (fetching them would leave loopback in tests; fal
    fetches them itself). Everything else is read and checked here."""
    if ref.startswith("https://"):
        return ImageInput(url=ref, sha256=hashlib.sha256(b"url:" + ref.encode()).hexdigest())
    if ref.startswith("data:"):
        data = decode_data_uri(ref)
        mime, w, h = inspect_image(data, source="data URI", max_bytes=max_bytes)
        return ImageInput(url=ref, sha256=hashlib.sha256(data).hexdigest(), mime=mime, size=len(data),
                          width=w, height=h)
    if ref.startswith("http://"):
        raise ImageInputError(f"{ref}: plain http:// image URLs are not accepted; use https://")
    try:
        with fsspec.open(ref, "rb", **(storage_options or {})) as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise ImageInputError(f"{ref}: image file not found") from None
    except OSError as exc:
        raise ImageInputError(f"{ref}: cannot read image ({type(exc).__name__})") from None
    mime, w, h = inspect_image(data, source=ref, max_bytes=max_bytes)
    encoded = base64.b64encode(data).decode("ascii")
    return ImageInput(url=f"data:{mime};base64,{encoded}", sha256=hashlib.sha256(data).hexdigest(), mime=mime,
                      size=len(data), width=w, height=h)
