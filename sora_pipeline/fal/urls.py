"""Where fal's queue lives and which request ids are acceptable: the parts of a URL that decide where the key
goes (`origin`), the configured queue base URL (`check_base_url`), endpoint ids (`split_endpoint`) and request ids
(`valid_request_id`: never a path). No I/O."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,%d}" % MAX_REQUEST_ID_LENGTH)


def valid_request_id(value: Any) -> bool:
    """fal request ids are UUIDs; accept 1-128 of [A-Za-z0-9_.:-], never a path ('/', '..') or only dots."""
    return (isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None and ".." not in value
            and value.strip(".") != "")


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, default ports filled in; None if it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except (ValueError, TypeError, AttributeError):
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def split_endpoint(endpoint_id: str) -> tuple[str, str, str]:
    """`fal-ai/sora-2/image-to-video/pro` → ("fal-ai", "sora-2", "image-to-video/pro")."""
    parts = endpoint_id.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"endpoint id {endpoint_id!r} must look like 'owner/alias[/path]'")
    return parts[0], parts[1], "/".join(parts[2:])


def check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"queue base URL {base_url!r} is not an http(s) URL; set SORA_FAL_QUEUE_URL "
                         "(e.g. https://queue.fal.run)")
    return base_url.rstrip("/")
