"""fal's per-endpoint OpenAPI document and pricing answer ↔ the `input`, `output` and `pricing` sections of a profile.

Pure functions, no network. `profile_sections_from_openapi(doc, id)` reads the queue document fal serves at
`https://fal.ai/api/openapi/queue/openapi.json?endpoint_id=<id>` (POST `/<id>` takes `#/components/schemas/…Input`,
GET `/<id>/requests/{request_id}` answers `…Output`): `$ref`s resolved, `allOf` merged, `anyOf`/`oneOf` with
`null` flattened (a nullable input is an optional one), every size and depth capped; a hostile document gets an
`OpenAPIError`, never a crash, and nothing in it is executed or fetched. `pricing_from_price` turns one entry of
`GET https://api.fal.ai/v1/models/pricing` into the `pricing` section. `openapi_document` and `price_answer` are
the inverses (the simulator serves them, so a refresh against it round-trips)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 16  # $ref hops plus allOf/anyOf nesting, per schema
MAX_NODES = 20_000  # schema objects visited per document
MAX_PROPERTIES = 300
MAX_ENUM = 500
MAX_TEXT = 2000  # a description is cut here
MAX_DEFAULT_JSON = 2000
TYPES = ("string", "integer", "number", "boolean", "array", "object")
FIELD_KEYS = ("type", "enum", "default", "minimum", "maximum", "minLength", "maxLength", "description", "items")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
SECOND_UNITS = {"second", "seconds", "sec", "s", "video_second", "video_seconds", "video second", "video seconds",
                "per second", "generated second", "output second"}
VIDEO_UNITS = {"video", "videos", "per video", "clip", "clips"}


class OpenAPIError(ValueError):
    """The document (or pricing answer) is not what fal serves; the message says where."""


class _Unresolvable(OpenAPIError):
    """A `$ref` to nothing (fal's own documents have a few inside array items: those items stay untyped)."""


class _Walk:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc, self.nodes = doc, 0

    def pointer(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#/") or len(ref) > 300:
            raise OpenAPIError(f"unsupported $ref {_short(ref)} (only local '#/…' references are read)")
        node: Any = self.doc
        parts = ref[2:].split("/")
        if len(parts) > 10:
            raise OpenAPIError(f"$ref {_short(ref)} is too long")
        for part in parts:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise _Unresolvable(f"unresolvable $ref {_short(ref)}")
        return node

    def flat(self, node: Any, where: str, depth: int = 0) -> dict[str, Any]:
        """One schema with its $ref followed and allOf/anyOf/oneOf merged into it (siblings win)."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise OpenAPIError(f"the document has more than {MAX_NODES} schema nodes")
        if depth > MAX_DEPTH:
            raise OpenAPIError(f"{where}: schema nesting deeper than {MAX_DEPTH} levels (a $ref cycle?)")
        if not isinstance(node, dict):
            return {}
        out = {k: v for k, v in node.items() if k not in ("$ref", "allOf", "anyOf", "oneOf")}
        if "$ref" in node:
            for key, value in self.flat(self.pointer(node["$ref"]), where, depth + 1).items():
                out.setdefault(key, value)
        for sub in _list(node.get("allOf"), where):
            for key, value in self.flat(sub, where, depth + 1).items():
                out.setdefault(key, value)
        variants = [self.flat(s, where, depth + 1) for s in (*_list(node.get("anyOf"), where),
                                                             *_list(node.get("oneOf"), where))]
        real = [v for v in variants if v.get("type") != "null" and v.get("enum") != [None]]
        if len(real) == 1:
            for key, value in real[0].items():
                out.setdefault(key, value)
        elif real:
            types = {_type(v.get("type")) for v in real}
            if len(types) == 1 and "type" not in out:
                out["type"] = types.pop()
            if all(isinstance(v.get("enum"), list) for v in real) and "enum" not in out:
                out["enum"] = _unique(e for v in real for e in v["enum"])
            for v in real:
                for key in ("description", "default", "minimum", "maximum", "minLength", "maxLength"):
                    if key in v:
                        out.setdefault(key, v[key])
        return out

    def field(self, node: Any, where: str, depth: int = 0) -> dict[str, Any]:
        """One input property in the profile's reduced form (keys in FIELD_KEYS order)."""
        schema = self.flat(node, where, depth)
        out: dict[str, Any] = {}
        kind = _type(schema.get("type"))
        if kind in TYPES:
            out["type"] = kind
        enum = schema.get("enum")
        if enum is None and "const" in schema:
            enum = [schema["const"]]
        if enum is not None:
            if not isinstance(enum, list) or len(enum) > MAX_ENUM:
                raise OpenAPIError(f"{where}: enum is not a list of at most {MAX_ENUM} values")
            for value in enum:
                if not _scalar(value):
                    raise OpenAPIError(f"{where}: enum value {_short(value)} is not a short scalar")
            out["enum"] = list(enum)
        if "default" in schema and schema["default"] is not None and _small_json(schema["default"]):
            out["default"] = schema["default"]
        for key in ("minimum", "maximum"):
            value = schema.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[key] = value
        for key in ("minLength", "maxLength"):
            value = schema.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10**9:
                out[key] = value
        text = schema.get("description")
        if isinstance(text, str) and text.strip():
            text = " ".join(text.split())
            out["description"] = text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"
        if kind == "array" and isinstance(schema.get("items"), dict):
            try:
                out["items"] = self.field(schema["items"], where + ".items", depth + 1)
            except _Unresolvable:
                out["items"] = {}
        return out


def profile_sections_from_openapi(doc: Any, endpoint_id: str) -> dict[str, Any]:
    """{"input": {required, properties}, "output": {video_field, id_field, required, properties}} of the
    endpoint's queue OpenAPI document. Raises `OpenAPIError` (one line) when the document is not of that shape."""
    if not isinstance(doc, dict):
        raise OpenAPIError("the OpenAPI document is not a JSON object")
    walk = _Walk(doc)
    paths = doc.get("paths")
    if not isinstance(paths, dict):
        raise OpenAPIError("the OpenAPI document has no paths")
    root = "/" + endpoint_id.strip("/")
    body = _get(paths, root, "post", "requestBody", "content", "application/json", "schema")
    if body is None:
        raise OpenAPIError(f"the OpenAPI document has no POST {root} with a JSON request body "
                           f"(is it the document of {endpoint_id}?)")
    result = _get(paths, root + "/requests/{request_id}", "get", "responses", "200", "content",
                  "application/json", "schema")
    if result is None:
        raise OpenAPIError(f"the OpenAPI document has no GET {root}/requests/{{request_id}} result schema")
    return {"input": _input_section(walk, body), "output": _output_section(walk, result)}


def _input_section(walk: _Walk, node: Any) -> dict[str, Any]:
    schema = walk.flat(node, "input")
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        raise OpenAPIError("the input schema has no properties")
    names = _ordered(props, schema.get("x-fal-order-properties"), "input")
    properties = {name: walk.field(props[name], f"input.{name}") for name in names}
    required = [n for n in _list(schema.get("required"), "input.required") if isinstance(n, str) and n in props]
    return {"required": _unique(required), "properties": properties}


def _output_section(walk: _Walk, node: Any) -> dict[str, Any]:
    schema = walk.flat(node, "output")
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        raise OpenAPIError("the output schema has no properties")
    names = _ordered(props, schema.get("x-fal-order-properties"), "output")
    video = "video" if "video" in names else next((n for n in names if "video" in n.lower() and
                                                   _type(walk.flat(props[n], f"output.{n}").get("type"))
                                                   in ("object", None)), None)
    if video is None:
        raise OpenAPIError(f"the output has no video property (it has: {', '.join(names)})")
    required = [n for n in _list(schema.get("required"), "output.required") if isinstance(n, str) and n in props]
    return {"video_field": video, "id_field": "video_id" if "video_id" in names else None,
            "required": _unique(required), "properties": names}


def _ordered(props: dict[str, Any], order: Any, where: str) -> list[str]:
    if len(props) > MAX_PROPERTIES:
        raise OpenAPIError(f"{where}: more than {MAX_PROPERTIES} properties")
    for name in props:
        if not isinstance(name, str) or not _NAME.match(name):
            raise OpenAPIError(f"{where}: property name {_short(name)} is not a plain identifier")
    first = [n for n in order if isinstance(n, str) and n in props] if isinstance(order, list) else []
    return _unique([*first, *props])


# ---- the inverse: a profile's sections as fal's document (the simulator serves it) -----------------------------

def schema_name(endpoint_id: str) -> str:
    """fal's component prefix: `fal-ai/sora-2/image-to-video/pro` → `Sora2ImageToVideoPro`."""
    parts = endpoint_id.strip("/").split("/")
    parts = parts[1:] if parts[0] == "fal-ai" and len(parts) > 1 else parts
    return "".join(w[:1].upper() + w[1:] for p in parts for w in re.split(r"[^A-Za-z0-9]+", p) if w)


def openapi_document(profile: dict[str, Any], queue_url: str = "https://queue.fal.run") -> dict[str, Any]:
    """The queue OpenAPI document of a profile, in fal's shape (optional inputs without a default are written as
    `anyOf [X, null]`, the video output as `allOf [$ref VideoFile]`), so that `profile_sections_from_openapi`
    gives the profile's `input` and `output` back."""
    endpoint_id, name = profile["endpoint_id"], schema_name(profile["endpoint_id"])
    inp, out = profile["input"], profile["output"]
    required = list(inp.get("required", []))

    def prop(pname: str, spec: dict[str, Any], top: bool = True) -> dict[str, Any]:
        body = {k: v for k, v in spec.items() if k in FIELD_KEYS and k != "items"}
        if "items" in spec:
            body["items"] = prop(pname, spec["items"], top=False)
        if top and pname not in required and "default" not in body and "type" in body:
            variant = {k: v for k, v in body.items() if k != "description"}
            body = {"anyOf": [variant, {"type": "null"}],
                    **({"description": spec["description"]} if "description" in spec else {})}
        return {"title": pname.replace("_", " ").title(), **body} if top else body

    outputs: dict[str, Any] = {}
    for pname in out.get("properties", []):
        title = pname.replace("_", " ").title()
        if pname == out.get("id_field"):
            outputs[pname] = {"title": title, "type": "string"}
        else:
            ref = "VideoFile" if pname == out.get("video_field") else "File"
            outputs[pname] = {"title": title, "allOf": [{"$ref": f"#/components/schemas/{ref}"}]}
    root = "/" + endpoint_id
    json_of = lambda ref: {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}  # noqa: E731
    request_id = [{"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.0.4",
        "info": {"title": f"Queue OpenAPI for {endpoint_id}", "version": "1.0.0",
                 "description": f"The OpenAPI schema for the {endpoint_id} queue.",
                 "x-fal-metadata": {"endpointId": endpoint_id, "category": "image-to-video",
                                    "playgroundUrl": f"https://fal.ai/models/{endpoint_id}",
                                    "documentationUrl": f"https://fal.ai/models/{endpoint_id}/api"}},
        "components": {
            "securitySchemes": {"apiKeyAuth": {"type": "apiKey", "in": "header", "name": "Authorization",
                                               "description": "Fal Key"}},
            "schemas": {
                "QueueStatus": {"type": "object", "required": ["status", "request_id"], "properties": {
                    "status": {"type": "string", "enum": ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]},
                    "request_id": {"type": "string"}, "response_url": {"type": "string"},
                    "status_url": {"type": "string"}, "cancel_url": {"type": "string"},
                    "queue_position": {"type": "integer"}}},
                f"{name}Input": {"title": f"{name}Input", "type": "object",
                                 "x-fal-order-properties": list(inp["properties"]),
                                 "properties": {k: prop(k, v) for k, v in inp["properties"].items()},
                                 "required": required},
                f"{name}Output": {"title": f"{name}Output", "type": "object",
                                  "x-fal-order-properties": list(outputs), "properties": outputs,
                                  "required": list(out.get("required", []))},
                **{ref: {"title": ref, "type": "object", "required": ["url"], "properties": {
                    "url": {"type": "string"}, "content_type": {"type": "string"}, "file_name": {"type": "string"},
                    "file_size": {"type": "integer"}}} for ref in ("File", "VideoFile")},
            }},
        "paths": {
            f"{root}/requests/{{request_id}}/status": {"get": {"parameters": request_id, "responses": {"200": {
                "description": "The request status.", "content": json_of("QueueStatus")}}}},
            f"{root}/requests/{{request_id}}/cancel": {"put": {"parameters": request_id, "responses": {"200": {
                "description": "The request was cancelled."}}}},
            root: {"post": {"requestBody": {"required": True, "content": json_of(f"{name}Input")},
                            "responses": {"200": {"description": "The request status.",
                                                  "content": json_of("QueueStatus")}}}},
            f"{root}/requests/{{request_id}}": {"get": {"parameters": request_id, "responses": {"200": {
                "description": "Result of the request.", "content": json_of(f"{name}Output")}}}},
        },
        "servers": [{"url": queue_url}],
        "security": [{"apiKeyAuth": []}],
    }


# ---- pricing ---------------------------------------------------------------------------------------------------

def price_entry(answer: Any, endpoint_id: str) -> dict[str, Any]:
    """The validated entry of `endpoint_id` in a `GET /v1/models/pricing` answer:
    {"prices": [{"endpoint_id", "unit_price", "unit", "currency"}], "next_cursor", "has_more"}."""
    prices = answer.get("prices") if isinstance(answer, dict) else None
    if not isinstance(prices, list):
        raise OpenAPIError("the pricing answer has no 'prices' list")
    entry = next((p for p in prices[:100] if isinstance(p, dict) and p.get("endpoint_id") == endpoint_id), None)
    if entry is None:
        raise OpenAPIError(f"the pricing answer has no price for {endpoint_id}")
    price, unit, currency = entry.get("unit_price"), entry.get("unit"), entry.get("currency", "USD")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) \
            or not 0 <= price < 10_000:
        raise OpenAPIError(f"the unit price {_short(price)} is not a plausible amount")
    if not isinstance(unit, str) or not 0 < len(unit) <= 40:
        raise OpenAPIError(f"the price unit {_short(unit)} is not a short text")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        raise OpenAPIError(f"the currency {_short(currency)} is not a 3-letter code")
    return {"unit_price": float(price), "unit": unit, "currency": currency}


def pricing_from_price(entry: dict[str, Any], previous: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """(the new `pricing` section, a note for the sources). fal's API gives one unit price: it replaces a profile's
    single tier; of several tiers it is taken as the lowest (the others are kept, and the note says so). A unit
    other than per second or per video gives None (keep the old pricing)."""
    unit = " ".join(entry["unit"].lower().replace("-", " ").split())
    kind = "second" if unit in SECOND_UNITS else "video" if unit in VIDEO_UNITS else None
    amount = f"${entry['unit_price']:g} per {entry['unit']} ({entry['currency']})"
    if unit in ("token", "tokens") and (previous or {}).get("unit") == "token":  # Seedance: kept per 1,000 tokens
        new = dict(previous or {})
        new.update({"per_1k_tokens": round(entry["unit_price"] * 1000, 9), "currency": entry["currency"]})
        return new, f"fal's pricing API: {amount}"
    if kind is None:
        return None, f"fal's pricing API says {amount}: not per second or per video, so the pricing was kept"
    key = "per_second" if kind == "second" else "per_video"
    new = dict(previous or {})
    tiers = dict(new.get(key) or {}) if new.get("unit", "second") == kind else {}
    note = f"fal's pricing API: {amount}"
    if previous and previous.get("unit", "second") != kind:
        note += f"; the unit changed from {previous.get('unit', 'second')} to {kind}"
        new.pop("per_video" if kind == "second" else "per_second", None)  # the old unit's prices no longer apply
    if not tiers:
        tiers = {"*": entry["unit_price"]}
    else:
        low = min(tiers.values())
        lowest = [t for t, v in tiers.items() if v == low]
        if len(lowest) < len(tiers):
            note += (f"; one price for all tiers: taken as the lowest ({', '.join(lowest)}), "
                     f"{', '.join(t for t in tiers if t not in lowest)} kept: check them on the model page")
        tiers = {t: (entry["unit_price"] if t in lowest else v) for t, v in tiers.items()}
    new.update({"unit": kind, key: tiers, "currency": entry["currency"]})
    if previous is None:
        new = {"unit": kind, key: tiers, "auto_tier": None, "currency": entry["currency"]}
    return new, note


def price_answer(endpoint_id: str, pricing: dict[str, Any]) -> dict[str, Any]:
    """A profile's price as one entry of fal's pricing answer (the lowest tier, as fal quotes its base price)."""
    kind = pricing.get("unit", "second")
    if kind == "token" and pricing.get("per_1k_tokens") is not None:  # fal's unit name for tokens: unconfirmed
        return {"endpoint_id": endpoint_id, "unit_price": pricing["per_1k_tokens"] / 1000, "unit": "tokens",
                "currency": pricing.get("currency", "USD")}
    tiers = pricing.get("per_second" if kind == "second" else "per_video") or {"*": 0.0}
    return {"endpoint_id": endpoint_id, "unit_price": min(tiers.values()), "unit": kind,
            "currency": pricing.get("currency", "USD")}


# ---- small helpers -----------------------------------------------------------------------------------------------

def _get(node: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ENUM:
        raise OpenAPIError(f"{where}: expected a list of at most {MAX_ENUM} items")
    return value


def _type(value: Any) -> str | None:
    if isinstance(value, list):  # OpenAPI 3.1: ["string", "null"]
        real = [v for v in value if v != "null"]
        value = real[0] if len(real) == 1 else None
    return value if isinstance(value, str) and value in TYPES else None


def _unique(values: Any) -> list[Any]:
    seen: list[Any] = []
    for value in values:
        if not any(type(value) is type(s) and value == s for s in seen):
            seen.append(value)
    return seen


def _scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= 200
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (bool, int))


def _small_json(value: Any) -> bool:
    try:
        return len(json.dumps(value, allow_nan=False)) <= MAX_DEFAULT_JSON
    except (TypeError, ValueError, RecursionError):
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"
