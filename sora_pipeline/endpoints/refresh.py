"""Refresh one endpoint profile from fal: its queue OpenAPI document (no auth) and its price (`FAL_KEY`, sent only
to the configured API origin, over https unless that origin is loopback). Every answer is capped (4 MiB), no
redirect is followed, everything printed or written passes through the redactor. The profile keeps its
catalog_mapping, video and sources (plus a dated entry for what changed); the unified diff is printed, and the file
written unless `dry_run`. A zero price or a drop over half is refused unless `accept_price_drop` (`price_check.py`).
`python -m sora_pipeline.endpoints refresh …` (see `__main__.py` and docs/endpoints.md) is the command line."""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import re
import sys
import time
from difflib import unified_diff
from pathlib import Path
from typing import Any, TextIO

import httpx

from sora_pipeline.endpoints.price_check import price_refusal, price_text
from sora_pipeline.endpoints.profile import CONCEPTS
from sora_pipeline.endpoints.registry import PROFILES_DIR, file_name
from sora_pipeline.endpoints.openapi import (OpenAPIError, price_entry, pricing_from_price,
                                             profile_sections_from_openapi)
from sora_pipeline.redact import contains_secret, redact, register_secret

OPENAPI_BASE = "https://fal.ai"
API_BASE = "https://api.fal.ai"
MAX_BYTES = 4 * 1024 * 1024
MAX_SECONDS = 60.0  # per download, however slowly the bytes come
EXIT_OK, EXIT_FETCH, EXIT_USAGE, EXIT_DOCUMENT, EXIT_PROFILE, EXIT_PRICE = 0, 1, 2, 3, 4, 5
_TOP_ORDER = ("endpoint_id", "title", "sources", "input", "secret_inputs", "catalog_mapping", "output", "pricing",
              "video")


class RefreshError(Exception):
    """One line for a person, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_FETCH) -> None:
        super().__init__(redact(message))
        self.code = code


class Redacted:
    """A text stream that passes every write through the redactor (what refresh prints came from servers)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(redact(text))

    def flush(self) -> None:
        self.stream.flush()


# ---- profile files -------------------------------------------------------------------------------------------

def check_endpoint_id(endpoint_id: str) -> str:
    endpoint_id = endpoint_id.strip().strip("/")
    if len(endpoint_id) > 200 or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)+",
                                                   endpoint_id):
        raise RefreshError(f"{endpoint_id[:80]!r} is not a fal endpoint id (like fal-ai/sora-2/image-to-video)",
                           EXIT_USAGE)
    return endpoint_id


def read_profiles(folder: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Every `*.json` profile of a folder (the shipped ones by default) by endpoint id, as plain dicts."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(folder or PROFILES_DIR).glob("*.json")):
        if path.stat().st_size <= MAX_BYTES:
            profile = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(profile, dict) and isinstance(profile.get("endpoint_id"), str):
                found[profile["endpoint_id"]] = profile
    return found


def dump_profile(profile: dict[str, Any]) -> str:
    """A profile as the files are written: one line per source, input property and section key."""
    def one(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = ["{"]
    keys = [k for k in _TOP_ORDER if k in profile] + [k for k in profile if k not in _TOP_ORDER]
    for i, key in enumerate(keys):
        value, comma = profile[key], "," if i < len(keys) - 1 else ""
        if key == "sources" and isinstance(value, list) and value:
            lines += ['  "sources": ['] + [f"    {one(s)}{',' if j < len(value) - 1 else ''}"
                                             for j, s in enumerate(value)] + [f"  ]{comma}"]
        elif key == "input" and isinstance(value, dict) and isinstance(value.get("properties"), dict):
            props = value["properties"]
            lines += ['  "input": {', f'    "required": {one(value.get("required", []))},', '    "properties": {']
            lines += [f"      {one(n)}: {one(p)}{',' if j < len(props) - 1 else ''}" for j, (n, p) in
                      enumerate(props.items())]
            lines += ["    }", f"  }}{comma}"]
        elif isinstance(value, dict) and value:
            lines += [f"  {one(key)}: {{"] + [f"    {one(k)}: {one(v)}{',' if j < len(value) - 1 else ''}"
                                              for j, (k, v) in enumerate(value.items())] + [f"  }}{comma}"]
        else:
            lines.append(f"  {one(key)}: {one(value)}{comma}")
    return "\n".join(lines + ["}"]) + "\n"


def profile_problems(profile: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(problems that keep the profile from loading, warnings) of a profile dict."""
    problems, warnings = [], []
    props = profile.get("input", {}).get("properties", {})
    mapping = profile.get("catalog_mapping", {})
    for concept in ("prompt", "image"):
        if not mapping.get(concept):
            problems.append(f"catalog_mapping.{concept} is required")
    for concept, name in mapping.items():
        if concept not in CONCEPTS:
            problems.append(f"catalog_mapping: unknown concept {concept!r} (known: {', '.join(CONCEPTS)})")
        elif name is not None and name not in props:
            problems.append(f"catalog_mapping.{concept} names {name!r}, which is not an input of the endpoint")
    for name, spec in props.items():
        if isinstance(spec.get("enum"), list) and "default" in spec and spec["default"] not in spec["enum"]:
            problems.append(f"input {name}: default {spec['default']!r} is not in its enum")
    pricing = profile.get("pricing") or {}
    if not pricing.get("per_second") and not pricing.get("per_video") and pricing.get("per_1k_tokens") is None:
        problems.append("pricing needs per_second, per_video or per_1k_tokens")
    res = props.get(mapping.get("resolution") or "", {}).get("enum")
    tiers = set(pricing.get("per_second") or {})
    if res and tiers and "*" not in tiers:
        missing = [r for r in res if r != "auto" and r not in tiers]
        if missing:
            warnings.append(f"pricing.per_second has no tier for resolution {', '.join(map(str, missing))}")
        if "auto" in res and pricing.get("auto_tier") not in tiers:
            warnings.append("the resolution enum has 'auto' but pricing.auto_tier names no tier")
        if extra := sorted(tiers - {str(r) for r in res}):
            warnings.append(f"pricing.per_second has tiers the endpoint does not offer: {', '.join(extra)}")
    return problems, warnings


# ---- downloads -----------------------------------------------------------------------------------------------

def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base(base: str, what: str) -> httpx.URL:
    """A base URL that may be called: https, or http on loopback; no credentials, query or fragment in it."""
    try:
        url = httpx.URL(base)
    except Exception:
        raise RefreshError(f"{what} {base[:80]!r} is not a URL", EXIT_USAGE) from None
    if url.scheme not in ("http", "https") or not url.host or url.userinfo or url.query or url.fragment:
        raise RefreshError(f"{what} {base[:80]!r} must be a plain http(s) origin, like https://api.fal.ai",
                           EXIT_USAGE)
    if url.scheme != "https" and not _loopback(url.host):
        raise RefreshError(f"{what} {base[:80]!r} is not https (plain http only on loopback); nothing was sent",
                           EXIT_USAGE)
    return url


def _origin(url: httpx.URL | str) -> str:
    url = httpx.URL(str(url))
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"


def fetch_json(client: httpx.Client, url: str, what: str, headers: dict[str, str] | None = None,
               max_bytes: int = MAX_BYTES) -> Any:
    """GET a JSON answer: at most `max_bytes`, no redirect, a clear one-line `RefreshError` otherwise."""
    started, body = time.monotonic(), bytearray()
    try:
        with client.stream("GET", url, headers={"Accept": "application/json", "Accept-Encoding": "identity",
                                                **(headers or {})}) as resp:
            code = resp.status_code
            if 300 <= code < 400:
                try:
                    where = _origin(httpx.URL(url).join(resp.headers["location"]))
                except Exception:  # no Location, or not a URL
                    where = "nowhere usable"
                raise RefreshError(f"{what}: {_origin(url)} answered HTTP {code}, a redirect to {where}; "
                                   f"redirects are not followed")
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise RefreshError(f"{what}: the answer declares {int(declared):,} bytes, over the "
                                   f"{max_bytes:,}-byte cap")
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise RefreshError(f"{what}: the answer is over the {max_bytes:,}-byte cap; stopped reading")
                if time.monotonic() - started > MAX_SECONDS:
                    raise RefreshError(f"{what}: the answer took over {MAX_SECONDS:.0f} s; stopped reading")
    except httpx.HTTPError as exc:
        raise RefreshError(f"{what}: could not get {_origin(url)} ({type(exc).__name__}: {exc})") from None
    text = bytes(body).decode("utf-8", "replace")
    if code == 404:
        raise RefreshError(f"{what}: {_origin(url)} answered HTTP 404 (unknown endpoint?): {_snippet(text)}")
    if code >= 400:
        raise RefreshError(f"{what}: {_origin(url)} answered HTTP {code}: {_snippet(text)}")

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        raise RefreshError(f"{what}: the answer is not JSON ({str(exc)[:80]})", EXIT_DOCUMENT) from None


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return (text[:200] + "…" if len(text) > 200 else text) or "(empty answer)"


# ---- merging -------------------------------------------------------------------------------------------------

def parse_mapping(values: list[str] | None) -> dict[str, str | None]:
    """`["image=start_image_url,resolution=none", "duration=duration"]` → {concept: field or None}."""
    mapping: dict[str, str | None] = {}
    for item in ",".join(values or []).split(","):
        if not item.strip():
            continue
        concept, sep, field = item.partition("=")
        concept, field = concept.strip(), field.strip()
        if not sep or concept not in CONCEPTS:
            raise RefreshError(f"--mapping {item.strip()!r}: expected concept=field with a concept of "
                               f"{', '.join(CONCEPTS)}", EXIT_USAGE)
        mapping[concept] = None if field.lower() in ("", "none", "null", "-") else field
    return mapping


def guess_mapping(input_section: dict[str, Any]) -> dict[str, str | None]:
    props = input_section.get("properties", {})

    def first(*names: str) -> str | None:
        return next((n for n in names if n in props), None)

    return {"prompt": first("prompt"), "image": first("image_url", "start_image_url", "first_frame_url",
                                                      "first_frame_image_url", "input_image_url"),
            "end_image": first("end_image_url", "last_frame_url", "tail_image_url"),
            "resolution": first("resolution"), "aspect_ratio": first("aspect_ratio"), "duration": first("duration"),
            "openai_api_key": None}


def _changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    notes = []
    o, n = old.get("input", {}).get("properties", {}), new["input"]["properties"]
    if added := [k for k in n if k not in o]:
        notes.append("new inputs " + ", ".join(added))
    if gone := [k for k in o if k not in n]:
        notes.append("inputs gone " + ", ".join(gone))
    for name in (k for k in n if k in o and n[k] != o[k]):
        keys = [k for k in ("type", "enum", "default", "minimum", "maximum", "minLength", "maxLength")
                if n[name].get(k) != o[name].get(k)]
        notes.append(f"{name}: " + ("; ".join(f"{k} {o[name].get(k)!r} → {n[name].get(k)!r}" for k in keys)
                                    if keys else "description"))
    if old.get("input", {}).get("required") != new["input"]["required"]:
        notes.append(f"required {old.get('input', {}).get('required')} → {new['input']['required']}")
    if old.get("output") != new["output"]:
        notes.append(f"output properties {old.get('output', {}).get('properties')} → {new['output']['properties']}")
    text = "; ".join(notes) or "reformatted"
    return text if len(text) <= 600 else text[:599] + "…"


def _with_source(sources: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in sources if s.get("what") != entry["what"]] + [entry]


def merge(old: dict[str, Any] | None, endpoint_id: str, sections: dict[str, Any], pricing: dict[str, Any] | None,
          price_note: str | None, urls: tuple[str, str], today: str,
          mapping: dict[str, str | None] | None = None) -> dict[str, Any]:
    """The refreshed profile: new input/output (and pricing when given), everything else kept."""
    new = dict(old or {"endpoint_id": endpoint_id, "title": endpoint_id, "sources": []})
    new["input"], new["output"] = sections["input"], dict(sections["output"])
    if old:
        for key in ("video_field", "id_field"):  # a hand-set field wins while the endpoint still returns it
            if old.get("output", {}).get(key) in new["output"]["properties"]:
                new["output"][key] = old["output"][key]
    props = new["input"]["properties"]
    if old is None:
        new["secret_inputs"] = [n for n in props if "api_key" in n.lower() or n.lower() == "key"]
        new["catalog_mapping"] = {**guess_mapping(new["input"]), **(mapping or {})}
    else:
        new["secret_inputs"] = [n for n in old.get("secret_inputs", []) if n in props]
        new["catalog_mapping"] = {**old.get("catalog_mapping", {}), **(mapping or {})}
    sources = list(new.get("sources", []))
    if old is None or (old.get("input"), old.get("output")) != (new["input"], new["output"]):
        sources = _with_source(sources, {"what": "input and output schema (refresh)", "url": urls[0],
                                         "retrieved": today,
                                         "note": _changes(old, new) if old else "first version of this profile"})
    if pricing is not None and (old is None or pricing != old.get("pricing")):
        new["pricing"] = pricing
        sources = _with_source(sources, {"what": "price (refresh)", "url": urls[1], "retrieved": today,
                                         "note": price_note})
    new["sources"] = sources
    if old is None:
        res = props.get(new["catalog_mapping"].get("resolution") or "", {}).get("enum") or []
        heights = {str(r): int(str(r)[:-1]) for r in res if str(r)[:-1].isdigit() and str(r)[-1] in "pP"}
        new["video"] = {"auto_resolution": max(heights, key=heights.get) if "auto" in res and heights else None,
                        "auto_aspect_ratio": "16:9", "heights": heights or {"*": 720}, "fps": 24, "latency_s": 120}
        new["sources"].append({"what": "video (guessed by refresh)", "url": urls[0], "retrieved": today,
                               "note": "heights, fps and latency are guesses: check them against a real video"})
    return {k: new[k] for k in [*_TOP_ORDER, *new] if k in new}


# ---- the command ---------------------------------------------------------------------------------------------

def refresh(endpoint_id: str, *, openapi_base: str = OPENAPI_BASE, api_base: str = API_BASE,
            profiles_dir: str | Path | None = None, dry_run: bool = False,
            mapping: dict[str, str | None] | None = None, fal_key: str | None = None, price: bool = True,
            timeout: float = 30.0, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
            today: str | None = None, accept_price_drop: bool = False) -> int:
    """Refresh (or create) one profile; prints the diff to `out`; returns the exit code (raises `RefreshError`)."""
    register_secret(fal_key)
    out, err = Redacted(out), Redacted(err)  # type: ignore[assignment]
    endpoint_id = check_endpoint_id(endpoint_id)
    doc_base, api = check_base(openapi_base, "--openapi-url"), check_base(api_base, "--api-url")
    doc_url = f"{str(doc_base).rstrip('/')}/api/openapi/queue/openapi.json?endpoint_id={endpoint_id}"
    price_url = f"{str(api).rstrip('/')}/v1/models/pricing?endpoint_id={endpoint_id}"
    target_dir = Path(profiles_dir or PROFILES_DIR)
    path = target_dir / file_name(endpoint_id)
    source = path if path.is_file() else PROFILES_DIR / file_name(endpoint_id)
    try:
        old = json.loads(source.read_text(encoding="utf-8")) if source.is_file() else None
    except (OSError, ValueError) as exc:
        raise RefreshError(f"{source}: not a readable JSON profile ({str(exc)[:100]})", EXIT_USAGE) from None
    today = today or _dt.date.today().isoformat()

    with httpx.Client(follow_redirects=False, trust_env=False, timeout=timeout) as client:
        doc = fetch_json(client, doc_url, "OpenAPI document")  # never with the key
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
            if _origin(price_url) != _origin(api):  # the key goes to the configured API origin, nowhere else
                raise RefreshError("the pricing URL left the configured API origin; nothing was sent", EXIT_USAGE)
            answer = fetch_json(client, price_url, "price", headers={"Authorization": f"Key {fal_key}"})
            try:
                pricing, price_note = pricing_from_price(price_entry(answer, endpoint_id),
                                                         (old or {}).get("pricing"))
            except OpenAPIError as exc:
                raise RefreshError(f"price of {endpoint_id}: {exc}", EXIT_DOCUMENT) from None
            price_note = redact(price_note)  # the unit is the server's text: it goes into sources and stderr
            if pricing is None:
                print(f"note: {price_note}", file=err)

    return apply_refresh(endpoint_id, sections, pricing, price_note, (doc_url, price_url), old=old, source=source,
                         path=path, mapping=mapping, today=today, dry_run=dry_run,
                         accept_price_drop=accept_price_drop, out=out, err=err)


def apply_refresh(endpoint_id: str, sections: dict[str, Any], pricing: dict[str, Any] | None,
                  price_note: str | None, urls: tuple[str, str], *, old: dict[str, Any] | None, source: Path,
                  path: Path, mapping: dict[str, str | None] | None, today: str, dry_run: bool,
                  accept_price_drop: bool, out: TextIO, err: TextIO) -> int:
    """Merge what fal answered into the profile, print the diff, check it, and write it unless `dry_run`."""
    target_dir = path.parent
    if old is None and not mapping:
        guess = guess_mapping(sections["input"])
        props = sections["input"]["properties"]
        print(f"{endpoint_id} has no profile yet. Its inputs:", file=out)
        for name, spec in props.items():
            extra = f" one of {spec['enum']}" if "enum" in spec else ""
            print(f"  {name}: {spec.get('type', 'any')}{extra}"
                  f"{' (required)' if name in sections['input']['required'] else ''}", file=out)
        hint = ",".join(f"{c}={guess.get(c) or 'none'}" for c in CONCEPTS)
        raise RefreshError(f"a new profile needs the catalog mapping: rerun with --mapping {hint} (checked "
                           f"against the inputs above), then fill in its video section", EXIT_PROFILE)
    if old is None and pricing is None:
        raise RefreshError("a new profile needs a price: set FAL_KEY so that fal's pricing API can be asked",
                           EXIT_PROFILE)
    new = merge(old, endpoint_id, sections, pricing, price_note, urls, today, mapping)
    if new == old:
        print(f"{endpoint_id}: up to date ({source})", file=out)
        return EXIT_OK
    new_text = dump_profile(new)
    if contains_secret(new_text):
        raise RefreshError("the refreshed profile would contain a secret (an echoed key?); not written",
                           EXIT_DOCUMENT)
    # the diff compares the profiles as this command writes them (a hand-formatted file's layout is not shown)
    diff = "".join(unified_diff(dump_profile(old).splitlines(keepends=True) if old else [],
                                new_text.splitlines(keepends=True),
                                fromfile=str(source) if old else "/dev/null", tofile=str(path)))
    old_pricing = (old or {}).get("pricing")
    if pricing is not None and new.get("pricing") != old_pricing:
        print(f"price: {price_text(old_pricing)} → {price_text(new['pricing'])}" if old_pricing else
              f"price: {price_text(new['pricing'])}", file=out)
    out.write(diff)
    problems, warnings = profile_problems(new)
    for warning in warnings:
        print(f"warning: {warning}", file=err)
    if problems:
        raise RefreshError(f"the refreshed profile of {endpoint_id} would not load: {'; '.join(problems)} "
                           f"(fix with --mapping concept=field|none); not written", EXIT_PROFILE)
    if pricing is not None and new.get("pricing") != old_pricing and not accept_price_drop:
        if why := price_refusal(endpoint_id, new, old_pricing, new["pricing"]):
            raise RefreshError(why, EXIT_PRICE)
    if dry_run:
        print(f"dry run: {path} not written", file=out)
        return EXIT_OK
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new_text, encoding="utf-8")
    tmp.replace(path)
    print(f"wrote {path}", file=out)
    return EXIT_OK
