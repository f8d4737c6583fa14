"""Where fal lives and which request ids are acceptable: the parts of a URL that decide where the key goes
(`origin`, `origin_url`), the configured queue base URL (`check_base_url`), a service's base URL that a key may be
sent to (`check_service_url`: https, or plain http on loopback), endpoint ids (`check_endpoint_id`, the one rule;
`split_endpoint`) and request ids (`valid_request_id`: never a path). No I/O."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import httpx

from sora_pipeline.wire import is_loopback

MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,%d}" % MAX_REQUEST_ID_LENGTH)
MAX_ENDPOINT_ID_LENGTH = 200
_ENDPOINT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)+")


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


def origin_url(url: str) -> str | None:
    """`scheme://host[:port]` of an http(s) URL (the port only when it is not the scheme's default); None if it is
    not one."""
    where = origin(url)
    if where is None:
        return None
    scheme, host, port = where
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port == (443 if scheme == "https" else 80) else f":{port}")


def check_endpoint_id(endpoint_id: str) -> str:
    """A fal endpoint id without surrounding blanks and slashes: `owner/alias[/path]`, each part letters, digits,
    `.`, `_`, `-` (not starting with a punctuation mark: never `..`), at most 200 characters in all (it goes into
    URL paths and query strings as it is). ValueError in one line otherwise."""
    cleaned = endpoint_id.strip().strip("/") if isinstance(endpoint_id, str) else ""
    if len(cleaned) > MAX_ENDPOINT_ID_LENGTH or not _ENDPOINT_ID.fullmatch(cleaned):
        raise ValueError(f"endpoint id {str(endpoint_id)[:80]!r} must look like 'owner/alias[/path]' "
                         "(like fal-ai/sora-2/image-to-video)")
    return cleaned


def split_endpoint(endpoint_id: str) -> tuple[str, str, str]:
    """`fal-ai/sora-2/image-to-video/pro` → ("fal-ai", "sora-2", "image-to-video/pro") (`check_endpoint_id`)."""
    parts = check_endpoint_id(endpoint_id).split("/")
    return parts[0], parts[1], "/".join(parts[2:])


def check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"queue base URL {base_url!r} is not an http(s) URL; set SORA_FAL_QUEUE_URL "
                         "(e.g. https://queue.fal.run)")
    return base_url.rstrip("/")


def check_service_url(base_url: str, *, what: str, example: str, fix: str, with_key: bool = True,
                      carries: str = "the key") -> httpx.URL:
    """A service's base URL (fal's platform API, its OpenAPI documents): a plain http(s) URL (no credentials, query
    or fragment) and, when a key (or anything else that must not travel in clear: `carries`) goes with it, https
    or a loopback host. ValueError in one line otherwise, naming `what` and ending in `fix` (e.g. "set
    SORA_FAL_API_URL")."""
    shown = f"{what} {str(base_url)[:80]!r}"
    try:
        url = httpx.URL(base_url)
    except Exception:
        raise ValueError(f"{shown} is not a URL; {fix}") from None
    if url.scheme not in ("http", "https") or not url.host or url.userinfo or url.query or url.fragment:
        raise ValueError(f"{shown} must be a plain http(s) URL like {example}; {fix}")
    if with_key and url.scheme != "https" and not is_loopback(url.host):
        raise ValueError(f"{shown} is plain http on a non-loopback host: {carries} would travel in clear, nothing was "
                         f"sent; use https ({fix})")
    return url
