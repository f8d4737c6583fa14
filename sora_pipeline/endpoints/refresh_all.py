"""`refresh --all`: every shipped profile (and those of `--profiles-dir`) refreshed from fal's platform API in one
pass, through a platform client (`sora_pipeline.fal.platform.PlatformClient`, given by
`sora_pipeline.fal.refresh_profiles`: this layer does not import `fal`): the model registry with the OpenAPI documents
(`GET /v1/models?endpoint_id=…&expand=openapi-3.0`, no key) and, with FAL_KEY, the pricing API
(`GET /v1/models/pricing?endpoint_id=…`). Each profile's diff is printed as `refresh` prints it (and written unless
`--dry-run`); an endpoint the registry no longer lists is reported and left as it is. The exit code is the worst
of the endpoints'."""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path
from typing import Any, TextIO

from sora_pipeline.endpoints.openapi import OpenAPIError, pricing_from_price, price_entry, profile_sections_from_openapi
from sora_pipeline.endpoints.refresh import (API_BASE, EXIT_DOCUMENT, EXIT_FETCH, EXIT_OK, EXIT_USAGE, PROFILES_DIR,
                                             Redacted, RefreshError, apply_refresh, check_base, file_name,
                                             read_profiles)
from sora_pipeline.redact import redact, register_secret


def refresh_all(*, api_base: str = API_BASE, profiles_dir: str | Path | None = None, dry_run: bool = False,
                fal_key: str | None = None, price: bool = True, timeout: float = 30.0,
                out: TextIO = sys.stdout, err: TextIO = sys.stderr, today: str | None = None,
                accept_price_drop: bool = False, client_factory: Any,
                client_errors: tuple[type[Exception], ...] = ()) -> int:
    """Refresh every known profile from fal's registry and pricing API; returns the worst exit code.
    `client_factory(url, key, timeout=…)` makes the platform client (a context manager with `models(ids,
    expand_openapi=True)` and `pricing(ids)`); `client_errors` are its failures (reported, exit 1)."""
    register_secret(fal_key)
    out, err = Redacted(out), Redacted(err)  # type: ignore[assignment]
    api = str(check_base(api_base, "--api-url")).rstrip("/")
    target_dir = Path(profiles_dir or PROFILES_DIR)
    known = read_profiles(PROFILES_DIR) | (read_profiles(target_dir) if target_dir.is_dir() else {})
    ids = sorted(known)
    today = today or _dt.date.today().isoformat()
    key = fal_key if price else None
    try:
        with client_factory(f"{api}/v1", key, timeout=timeout) as client:
            models = {m["endpoint_id"]: m for m in client.models(ids, expand_openapi=True) if m.get("endpoint_id")}
            prices = {p["endpoint_id"]: p for p in client.pricing(ids)} if key else {}
    except client_errors as exc:
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
