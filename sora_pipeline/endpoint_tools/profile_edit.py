"""A profile as `refresh` edits it (plain dicts, in the files' format): the catalog mapping from `--mapping` or
guessed from the inputs, the merge of what fal answered into the old profile (keeping catalog_mapping, video and
sources, plus a dated entry for what changed), the file layout (`dump_profile`), the checks before writing
(`profile_problems`, `price_check.price_refusal`) and the write itself (`apply_refresh`: diff, checks, file)."""

from __future__ import annotations

import json
from difflib import unified_diff
from pathlib import Path
from typing import Any, TextIO

from sora_pipeline.endpoint_tools.errors import EXIT_DOCUMENT, EXIT_OK, EXIT_PRICE, EXIT_PROFILE, EXIT_USAGE, RefreshError
from sora_pipeline.endpoints.price_check import price_refusal, price_text
from sora_pipeline.endpoints.profile import CONCEPTS
from sora_pipeline.redact import contains_secret

_TOP_ORDER = ("endpoint_id", "title", "sources", "input", "secret_inputs", "catalog_mapping", "output", "pricing",
              "video")


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
