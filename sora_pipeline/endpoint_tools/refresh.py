"""Refresh endpoint profiles from fal. `refresh`: one profile, from its queue OpenAPI document (no auth) and its
price (`FAL_KEY`, sent only to the configured API origin). `refresh_all`: every shipped profile (and those of
`--profiles-dir`) in one pass over fal's platform API: the model registry with the OpenAPI documents
(`GET /v1/models?endpoint_id=…&expand=openapi-3.0`, no key) and, with FAL_KEY, the pricing API
(`GET /v1/models/pricing?endpoint_id=…`); an endpoint the registry no longer lists is reported and left as it is,
and the exit code is the worst of the endpoints'. Downloads follow fal's rules (`fetch.py`: capped, no redirect,
https or loopback); everything printed or written passes through the redactor. Each profile's diff is printed and
the file written unless `dry_run` (`profile_edit.apply_refresh`); a zero price or a drop over half is refused
unless `accept_price_drop`. `python -m sora_pipeline.endpoint_tools refresh …` is the command line."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import httpx

from sora_pipeline.endpoint_tools.errors import (EXIT_DOCUMENT, EXIT_FETCH, EXIT_OK, EXIT_USAGE, Redacted,
                                                 RefreshError)
from sora_pipeline.endpoint_tools.fetch import (API_BASE, OPENAPI_BASE, checked_base, checked_endpoint_id,
                                                fetch_document, fetch_price, platform)
from sora_pipeline.endpoint_tools.profile_edit import apply_refresh
from sora_pipeline.endpoints.openapi import (OpenAPIError, price_entry, pricing_from_price,
                                             profile_sections_from_openapi)
from sora_pipeline.endpoints.registry import PROFILES_DIR, file_name, read_profiles
from sora_pipeline.fal.platform import PlatformError
from sora_pipeline.redact import redact, register_secret


def refresh(endpoint_id: str, *, openapi_base: str = OPENAPI_BASE, api_base: str = API_BASE,
            profiles_dir: str | Path | None = None, dry_run: bool = False,
            mapping: dict[str, str | None] | None = None, fal_key: str | None = None, price: bool = True,
            timeout: float = 30.0, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
            today: str | None = None, accept_price_drop: bool = False) -> int:
    """Refresh (or create) one profile; prints the diff to `out`; returns the exit code (raises `RefreshError`)."""
    register_secret(fal_key)
    out, err = Redacted(out), Redacted(err)  # type: ignore[assignment]
    endpoint_id = checked_endpoint_id(endpoint_id)
    doc_base = checked_base(openapi_base, "--openapi-url", carries="the OpenAPI document")
    api = checked_base(api_base, "--api-url", carries="FAL_KEY")
    doc_url = f"{doc_base}/api/openapi/queue/openapi.json?endpoint_id={endpoint_id}"
    price_url = f"{api}/v1/models/pricing?endpoint_id={endpoint_id}"
    target_dir = Path(profiles_dir or PROFILES_DIR)
    path = target_dir / file_name(endpoint_id)
    source = path if path.is_file() else PROFILES_DIR / file_name(endpoint_id)
    try:
        old = json.loads(source.read_text(encoding="utf-8")) if source.is_file() else None
    except (OSError, ValueError) as exc:
        raise RefreshError(f"{source}: not a readable JSON profile ({str(exc)[:100]})", EXIT_USAGE) from None
    today = today or _dt.date.today().isoformat()

    with httpx.Client(follow_redirects=False, trust_env=False, timeout=timeout) as client:
        doc = fetch_document(client, doc_url, "OpenAPI document")  # never with the key
    try:
        sections = profile_sections_from_openapi(doc, endpoint_id)
    except OpenAPIError as exc:
        raise RefreshError(f"OpenAPI document of {endpoint_id}: {exc}", EXIT_DOCUMENT) from None
    pricing, price_note = None, None
    if not price:
        pass
    elif not fal_key:
        print("note: FAL_KEY is not set: the price was not refreshed", file=err)
    else:
        with platform(api, fal_key, timeout) as client:  # the key goes to the configured API origin, nowhere else
            answer = fetch_price(client, endpoint_id)
        try:
            pricing, price_note = pricing_from_price(price_entry(answer, endpoint_id), (old or {}).get("pricing"))
        except OpenAPIError as exc:
            raise RefreshError(f"price of {endpoint_id}: {exc}", EXIT_DOCUMENT) from None
        price_note = redact(price_note)  # the unit is the server's text: it goes into sources and stderr
        if pricing is None:
            print(f"note: {price_note}", file=err)

    return apply_refresh(endpoint_id, sections, pricing, price_note, (doc_url, price_url), old=old, source=source,
                         path=path, mapping=mapping, today=today, dry_run=dry_run,
                         accept_price_drop=accept_price_drop, out=out, err=err)


def refresh_all(*, api_base: str = API_BASE, profiles_dir: str | Path | None = None, dry_run: bool = False,
                fal_key: str | None = None, price: bool = True, timeout: float = 30.0,
                out: TextIO = sys.stdout, err: TextIO = sys.stderr, today: str | None = None,
                accept_price_drop: bool = False) -> int:
    """Refresh every known profile from fal's registry and pricing API; returns the worst exit code."""
    register_secret(fal_key)
    out, err = Redacted(out), Redacted(err)  # type: ignore[assignment]
    api = checked_base(api_base, "--api-url", carries="FAL_KEY")
    target_dir = Path(profiles_dir or PROFILES_DIR)
    known = read_profiles(PROFILES_DIR) | (read_profiles(target_dir) if target_dir.is_dir() else {})
    ids = sorted(known)
    today = today or _dt.date.today().isoformat()
    key = fal_key if price else None
    try:
        with platform(api, key, timeout) as client:
            models = {m["endpoint_id"]: m for m in client.models(ids, expand_openapi=True) if m.get("endpoint_id")}
            prices = {p["endpoint_id"]: p for p in client.pricing(ids)} if key else {}
    except (PlatformError, ValueError) as exc:
        raise RefreshError(f"fal's platform API at {api}/v1 could not be asked: {redact(str(exc))[:200]}",
                           EXIT_FETCH) from None
    if price and not fal_key:
        print("note: FAL_KEY is not set: prices were not refreshed", file=err)
    worst = EXIT_OK
    for endpoint_id in ids:
        try:
            code = _one(endpoint_id, known[endpoint_id], models.get(endpoint_id), prices.get(endpoint_id),
                        api=api, target_dir=target_dir, today=today, dry_run=dry_run,
                        accept_price_drop=accept_price_drop, out=out, err=err)
        except RefreshError as exc:
            print(f"error: {endpoint_id}: {exc}", file=err)
            code = exc.code
        worst = max(worst, code)
    return worst


def _one(endpoint_id: str, old: dict[str, Any], model: dict[str, Any] | None, price: dict[str, Any] | None, *,
         api: str, target_dir: Path, today: str, dry_run: bool, accept_price_drop: bool, out: TextIO,
         err: TextIO) -> int:
    doc_url = f"{api}/v1/models?endpoint_id={endpoint_id}&expand=openapi-3.0"
    price_url = f"{api}/v1/models/pricing?endpoint_id={endpoint_id}"
    if model is None:
        print(f"{endpoint_id}: not listed by fal's model registry ({doc_url}): retired? profile kept as it is",
              file=out)
        return EXIT_FETCH
    status = ((model.get("metadata") or {}).get("status") or "active")
    if status == "deprecated":
        print(f"warning: {endpoint_id} is deprecated at fal", file=err)
    doc = model.get("openapi")
    if not isinstance(doc, dict) or "error" in doc:
        raise RefreshError(f"the registry gave no OpenAPI document ({str((doc or {}).get('error'))[:100]})",
                           EXIT_DOCUMENT)
    try:
        sections = profile_sections_from_openapi(doc, endpoint_id)
    except OpenAPIError as exc:
        raise RefreshError(f"OpenAPI document: {exc}", EXIT_DOCUMENT) from None
    pricing, note = None, None
    if price is not None:
        try:
            pricing, note = pricing_from_price(price_entry({"prices": [price]}, endpoint_id), old.get("pricing"))
        except OpenAPIError as exc:
            raise RefreshError(f"price: {exc}", EXIT_DOCUMENT) from None
        note = redact(note)
        if pricing is None:
            print(f"note: {endpoint_id}: {note}", file=err)
    path = target_dir / file_name(endpoint_id)
    source = path if path.is_file() else PROFILES_DIR / file_name(endpoint_id)
    if not source.is_file():
        raise RefreshError(f"{source}: no profile file", EXIT_USAGE)
    return apply_refresh(endpoint_id, sections, pricing, note, (doc_url, price_url), old=old, source=source,
                         path=path, mapping=None, today=today, dry_run=dry_run,
                         accept_price_drop=accept_price_drop, out=out, err=err)
