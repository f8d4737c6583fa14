"""What `refresh` asks fal, through fal's own rules (`fal.urls`, `fal.limits`, `fal.platform`): the base URLs it
may call (`checked_base`: https, or plain http on loopback; no credentials, query or fragment), an endpoint's
queue OpenAPI document (`fetch_document`: no key, no redirect followed, at most `MAX_BYTES` within
`MAX_SECONDS`, strict JSON) and its price (`fetch_price`: `PlatformClient`, the key sent only to the configured
API origin). Every failure is a one-line `RefreshError` with its exit code."""

from __future__ import annotations

from typing import Any

import httpx

from sora_pipeline.endpoint_tools.errors import EXIT_DOCUMENT, EXIT_FETCH, EXIT_USAGE, RefreshError
from sora_pipeline.fal.limits import AnswerRefused, read_capped
from sora_pipeline.fal.platform import PlatformAnswerError, PlatformClient, PlatformError
from sora_pipeline.fal.urls import check_endpoint_id, check_service_url, origin_url

OPENAPI_BASE = "https://fal.ai"
API_BASE = "https://api.fal.ai"
MAX_BYTES = 4 * 1024 * 1024
MAX_SECONDS = 60.0  # per download, however slowly the bytes come


def checked_endpoint_id(endpoint_id: str) -> str:
    """The endpoint id as fal's rule has it (`fal.urls.check_endpoint_id`); a usage error otherwise."""
    try:
        return check_endpoint_id(endpoint_id)
    except ValueError as exc:
        raise RefreshError(str(exc), EXIT_USAGE) from None


def checked_base(base: str, what: str, *, carries: str) -> str:
    """A base URL that may be called (`fal.urls.check_service_url`), without a trailing slash; a usage error
    naming the option `what` otherwise (`carries`: what would travel in clear over plain http)."""
    example = API_BASE if what == "--api-url" else OPENAPI_BASE
    try:
        url = check_service_url(base, what=what, example=example, carries=carries,
                                fix="a URL that is not https must name a loopback host")
    except ValueError as exc:
        raise RefreshError(str(exc), EXIT_USAGE) from None
    return str(url).rstrip("/")


def platform(api: str, key: str | None, timeout: float) -> PlatformClient:
    """fal's platform API at `api` (checked) + `/v1`, answers capped at `MAX_BYTES`."""
    return PlatformClient(f"{api}/v1", key, timeout=timeout, max_json_bytes=MAX_BYTES)


def platform_failure(what: str, exc: PlatformError) -> RefreshError:
    """A platform API failure as refresh reports it: a malformed answer is a bad document (3), the rest a failed
    download (1)."""
    return RefreshError(f"{what}: {exc}", EXIT_DOCUMENT if isinstance(exc, PlatformAnswerError) else EXIT_FETCH)


def fetch_price(client: PlatformClient, endpoint_id: str) -> dict[str, Any]:
    """fal's pricing answer for one endpoint, `{"prices": […]}` (what `openapi.price_entry` reads)."""
    try:
        return {"prices": client.pricing([endpoint_id])}
    except PlatformError as exc:
        raise platform_failure("price", exc) from None


def fetch_document(client: httpx.Client, url: str, what: str) -> Any:
    """GET a JSON document (never with the key): `fal.limits.read_capped` with `MAX_BYTES` and `MAX_SECONDS`, no
    redirect followed, strict JSON; a one-line `RefreshError` otherwise."""
    where = origin_url(url) or "an unusable URL"
    try:
        answer = read_capped(client, "GET", url, max_bytes=MAX_BYTES, max_seconds=MAX_SECONDS,
                             headers={"Accept": "application/json", "Accept-Encoding": "identity"})
    except AnswerRefused as exc:
        if exc.seconds is not None:
            raise RefreshError(f"{what}: the answer took over {exc.seconds:.0f} s; stopped reading") from None
        if exc.declared is not None:
            raise RefreshError(f"{what}: the answer declares {exc.declared:,} bytes, over the {exc.cap:,}-byte "
                               "cap") from None
        raise RefreshError(f"{what}: the answer is over the {exc.cap:,}-byte cap; stopped reading") from None
    except httpx.HTTPError as exc:
        raise RefreshError(f"{what}: could not get {where} ({type(exc).__name__}: {exc})") from None
    code = answer.status_code
    if 300 <= code < 400:
        try:
            to = origin_url(str(httpx.URL(url).join(answer.headers["location"])))
        except Exception:  # no Location, or not a URL
            to = None
        raise RefreshError(f"{what}: {where} answered HTTP {code}, a redirect to {to or 'nowhere usable'}; "
                           "redirects are not followed")
    if code == 404:
        raise RefreshError(f"{what}: {where} answered HTTP 404 (unknown endpoint?): {_snippet(answer.text)}")
    if code >= 400:
        raise RefreshError(f"{what}: {where} answered HTTP {code}: {_snippet(answer.text)}")
    try:
        return answer.json()
    except ValueError as exc:
        raise RefreshError(f"{what}: the answer is not JSON ({str(exc)[:80]})", EXIT_DOCUMENT) from None


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return (text[:200] + "…" if len(text) > 200 else text) or "(empty answer)"
