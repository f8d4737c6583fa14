"""The contract's rules for one catalog row (docs/reference.md): which values are accepted, how they are normalized
(nulls → defaults, image locations resolved and confined), and the one-line reason a row is rejected with.
`check_rows` applies them to a day's rows: a vectorised pass over the Arrow columns finds the rows that are
plainly valid (the usual https image, exact allowed values), and only the others go through the full rules.
Which resolutions, aspect ratios, durations and `params` a row may ask for is the endpoint's (its profile)."""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
from datetime import date
from typing import Any, Mapping, NamedTuple, Sequence
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc

from sora_pipeline.catalog.columns import CONTRACT_COLUMNS
from sora_pipeline.catalog.masking import ONE_LINE, show_value
from sora_pipeline.catalog.rejections import Rejections
from sora_pipeline.endpoints import EndpointProfile, EndpointSet, get_profile
from sora_pipeline.endpoints.profile import MAX_PARAMS_JSON
from sora_pipeline.fal.image_sources import LOCAL_SCHEMES, refusal, scheme_of


_URI_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.S)
_DATA_RE = re.compile(r"^data:image/[A-Za-z0-9.+\-]+(;[A-Za-z0-9=.\-]+)*;base64,[A-Za-z0-9+/=\s]+$", re.S)


class CatalogItem(NamedTuple):
    """A valid catalog row of one day, normalized (nulls → defaults, image location resolved). An immutable
    record, not a model: `check_rows` has checked every field, and a day can have thousands of rows."""

    item_id: str
    prompt: str
    image_uri: str  # as given in the catalog
    image_ref: str  # https URL, data URI, or absolute fsspec URI/path
    scheduled_date: date
    resolution: str | None = "auto"  # the endpoint's value (None: the endpoint has no such input)
    aspect_ratio: str | None = "auto"
    duration: int | None = 4  # seconds
    row_index: int = 0
    params: Mapping[str, Any] | None = None  # extra endpoint inputs (the `params` column), checked by the profile
    end_image_uri: str | None = None  # the last frame as given (the optional `end_image_uri` column)
    end_image_ref: str | None = None  # resolved like image_ref; only for endpoints with an end-frame input
    endpoint_id: str | None = None  # the row's endpoint when it names one other than the default (else None)


# the usual image reference: https://host/... (anything unusual takes the full path below)
_PLAIN_HTTPS = re.compile(r"https://[A-Za-z0-9.\-]+(?::\d+)?(?:[/?#]|$)", re.I)


class _Rules:
    """One endpoint's accepted catalog values, prepared once per profile."""

    def __init__(self, profile: EndpointProfile) -> None:
        self.profile = profile
        self.endpoint_id = profile.endpoint_id
        self.exact = {c: {None: profile.default(c), **{v: v for v in (profile.allowed(c) or ())}}
                      for c in ("resolution", "aspect_ratio", "duration")}
        self.free = {c for c in self.exact if profile.field_for(c) is not None and profile.allowed(c) is None}
        self._seen: dict[tuple, tuple[Any, str | None]] = {}

    def value(self, concept: str, value: Any) -> tuple[Any, str | None]:
        """The endpoint's value for a catalog cell, or why not (one answer per distinct cell)."""
        try:
            key = (concept, type(value), value)
            return self._seen[key]
        except KeyError:
            if len(self._seen) > 4096:  # (rules live as long as the process: stay small)
                self._seen.clear()
            answer = self._seen[key] = self._value(concept, value)
            return answer
        except TypeError:  # not hashable
            return self._value(concept, value)

    def _value(self, concept: str, value: Any) -> tuple[Any, str | None]:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return self.profile.default(concept), None
        if concept == "duration":
            number: Any = None
            if isinstance(value, int) and not isinstance(value, bool):
                number = value
            elif isinstance(value, float) and value.is_integer():
                number = int(value)
            elif isinstance(value, str) and value.strip().isdigit():
                number = int(value.strip())
            if number is None:
                if self.profile.allowed("duration") is not None:
                    return None, self.profile.refusal("duration", value)
                return None, f"{show_value(value)} is not a whole number of seconds"
            value = number
        elif not isinstance(value, str):
            return None, f"{show_value(value)} is not a string"
        return self.profile.catalog_value(concept, value)

    def params(self, value: Any) -> tuple[dict[str, Any] | None, str | None]:
        if value is None:
            return None, None
        if isinstance(value, str):
            if not value.strip():
                return None, None
            if len(value) > MAX_PARAMS_JSON:
                return None, f"is over {MAX_PARAMS_JSON // 1024} KiB of JSON"
            try:
                value = json.loads(value)
            except ValueError as exc:
                return None, f"is not valid JSON ({type(exc).__name__})"
        params, why = self.profile.validate_params(value)
        return (params or None), why


_RULES: dict[int, _Rules] = {}


def rules_for(profile: EndpointProfile) -> _Rules:
    """The accepted values of `profile`'s endpoint (prepared once per profile)."""
    rules = _RULES.get(id(profile))
    if rules is None or rules.profile is not profile:
        rules = _RULES[id(profile)] = _Rules(profile)
    return rules


class ImageResolver:
    """Applies the contract's image_uri rules for a catalog in `folder` of filesystem `fs`; see
    `read_catalog_day` for how local paths are confined."""

    def __init__(self, fs: Any, folder: str, *, local: bool, is_dir: bool, image_roots: Sequence[str]):
        self.fs, self.folder, self.local = fs, folder, local
        roots = [os.path.realpath(os.path.abspath(os.path.expanduser(_strip_file(r)))) for r in image_roots]
        if local:
            roots.insert(0, os.path.realpath(folder))
            if is_dir:
                roots.insert(1, os.path.realpath(os.path.dirname(folder)))
        self.roots = list(dict.fromkeys(roots))
        self._seen: dict[str, tuple[str | None, str | None]] = {}
        self._real_dirs: dict[str, str] = {}

    def resolve(self, value: Any) -> tuple[str | None, str | None]:
        """(the image's reference, None) or (None, why not); one answer per distinct value and resolver."""
        if not isinstance(value, str):
            return self._resolve(value)
        answer = self._seen.get(value)
        if answer is None:
            if len(self._seen) > 4096:  # (rows share a few images; a day of distinct ones is not kept)
                self._seen.clear()
            answer = self._seen[value] = self._resolve(value)
        return answer

    def _resolve(self, value: Any) -> tuple[str | None, str | None]:
        if value is None:
            return None, "missing"
        if not isinstance(value, str) or not value.strip():
            return None, "must be a non-empty string"
        uri = value.strip()
        if _PLAIN_HTTPS.match(uri):
            return uri, None
        low = uri.lower()
        if low.startswith("https://"):
            return (uri, None) if urlsplit(uri).hostname else (None, f"{show_value(uri)} has no host")
        if low.startswith("http://"):
            return None, f"{show_value(uri)} uses plain http:// (only https:// URLs are allowed)"
        if low.startswith("data:"):
            if _DATA_RE.match(uri):
                return uri, None
            return None, f"{show_value(uri)} is not a data:image/<type>;base64,<data> URI"
        if "::" in uri:
            return None, f"{show_value(uri)} is a chained fsspec URL (not allowed)"
        m = _URI_RE.match(uri)
        if m:
            protocol, rest = m.group(1).lower(), m.group(2)
            if protocol in LOCAL_SCHEMES:
                return self._local(uri, rest, relative_ok=False)
            why = refusal(protocol)  # the allowlist (image_sources), also applied by load_image_input
            return (None, why) if why else (f"{protocol}://{rest}", None)
        if self.local:
            return self._local(uri, uri, relative_ok=True)
        # a path inside a non-local catalog's filesystem (e.g. memory://, s3://): relative to its folder
        path = uri if uri.startswith("/") else posixpath.normpath(posixpath.join(self.folder, uri))
        ref = self.fs.unstrip_protocol(path)
        why = refusal(scheme_of(ref) or "")
        return (None, f"{show_value(uri)} is a path in the catalog's filesystem: {why}") if why else (ref, None)

    def _local(self, uri: str, path: str, *, relative_ok: bool) -> tuple[str | None, str | None]:
        if not os.path.isabs(path):
            if not (relative_ok and self.local):
                return None, f"{show_value(uri)} is a relative file:// URI (give an absolute path)"
            path = os.path.join(self.folder, path)
        real = self._realpath(path)
        if not any(_inside(real, root) for root in self.roots):
            return None, f"{show_value(uri)} resolves outside the catalog folder and SORA_IMAGE_ROOTS"
        if not os.path.isfile(real):
            return None, f"{show_value(uri)} does not exist (resolved to {real})"
        return real, None


    def _realpath(self, path: str) -> str:
        """`os.path.realpath`, with the folders' real paths remembered (rows share folders; one lstat a row)."""
        head, name = os.path.split(path)
        if not head or name in ("", ".", ".."):
            return os.path.realpath(path)
        folder = self._real_dirs.get(head)
        if folder is None:
            folder = self._real_dirs[head] = os.path.realpath(head)
        real = os.path.join(folder, name)
        return os.path.realpath(real) if os.path.islink(real) else real


def _strip_file(path: str) -> str:
    return path[len("file://"):] if path.lower().startswith("file://") else path


def _inside(path: str, root: str) -> bool:
    """`path` is `root` or under it (both real, normalized paths)."""
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


def unusable(value: Any, arrow_type: Any, file: str, expected: str) -> str:
    """The reason for a value a catalog file holds in a type the contract cannot use (files that disagree)."""
    return f"{show_value(value)} is {arrow_type} in catalog file {show_value(file)} (expected {expected})"


# what a catalog reader could not use of a row (its file's type for a column disagrees with the contract):
# row index → field → (the one-line why, the value as the file holds it); the field's value in the table is null
Notes = Mapping[int, Mapping[str, tuple[str, Any]]]


def check_rows(table: pa.Table, day: date, dups: dict[str, int], resolver: ImageResolver,
               notes: Notes | None = None, endpoints: EndpointSet | None = None,
               ) -> tuple[list[CatalogItem], Rejections]:
    """The day's rows (`table`, contract columns) split into valid items and rejected rows, in row order.
    `dups`: item_ids that more than one row of the catalog carries, with their counts. `notes`: values the
    reader could not use (see `Notes`), each the row's problem for that field, in the usual field order.
    `endpoints`: the default endpoint and those a row may name in `endpoint_id`; each row is checked against its
    own endpoint's accepted values (default: Sora 2 Pro alone)."""
    notes = notes or {}
    endpoints = endpoints or EndpointSet.only(get_profile())
    chosen, plain = _rows_endpoints(table, dups, endpoints)
    # the endpoint an item keeps: None for the default (the caller's SORA_ENDPOINT_ID), else the row's own
    default_rules = rules_for(endpoints.default)
    own = [None if r is None or r is default_rules else r.endpoint_id for r in chosen]
    for index in notes:
        plain[index] = False
    valid: list[CatalogItem] = []
    rejected = Rejections(day, table, notes, default_endpoint=endpoints.default_id)
    for start in range(0, table.num_rows, _CHUNK):  # Python values for a chunk of rows at a time
        part = table.slice(start, _CHUNK)
        absent = [None] * part.num_rows
        columns = [part.column(c).to_pylist() if c in part.column_names else absent  # no dict per row
                   for c in CONTRACT_COLUMNS if c != "scheduled_date"]
        rows = zip(plain[start:start + _CHUNK], *columns)
        for index, (ok, item_id, prompt, image_uri, resolution, aspect_ratio, duration, params, end_uri,
                    endpoint_cell) in enumerate(rows, start):
            rules = chosen[index]
            if ok:  # every rule holds, as the vectorised checks showed: only normalize
                exact = rules.exact
                valid.append(CatalogItem(item_id, prompt, image_uri, image_uri.strip(), day,
                                         exact["resolution"][resolution], exact["aspect_ratio"][aspect_ratio],
                                         exact["duration"][duration], index, endpoint_id=own[index]))
                continue
            note = notes.get(index, {})
            problem: tuple[str, str] | None = None
            if "item_id" in note:
                problem = ("item_id", note["item_id"][0])
            elif item_id is None:
                problem = ("item_id", "missing")
            elif not isinstance(item_id, str) or not item_id.strip():
                problem = ("item_id", "must be a non-empty string")
            elif item_id in dups:
                problem = ("item_id", f"{show_value(item_id, opaque=False)} is shared by {dups[item_id]} rows of the "
                                      "catalog (must be unique)")
            if problem is None and "endpoint_id" in note:
                problem = ("endpoint_id", note["endpoint_id"][0])
            if problem is None and rules is None:
                problem = ("endpoint_id", endpoints.pick(endpoint_cell)[1])
            if problem is None and "prompt" in note:
                problem = ("prompt", note["prompt"][0])
            if problem is None and (not isinstance(prompt, str) or not prompt.strip()):
                problem = ("prompt", "missing" if prompt is None else "empty after stripping whitespace")
            if problem is None and rules is not None and (why := rules.profile.text_problem("prompt", prompt)):
                problem = ("prompt", why)  # over the endpoint's cap (its profile)
            image_ref, why = (None, None)
            if problem is None and "image_uri" in note:
                problem = ("image_uri", note["image_uri"][0])
            if problem is None:
                image_ref, why = resolver.resolve(image_uri)
                if why:
                    problem = ("image_uri", why)
            if problem is not None and rules is None:  # no endpoint: its values cannot be checked
                rejected.add(index, problem[0], _why(*problem), endpoints.given(endpoint_cell))
                continue
            values: dict[str, Any] = {}
            for field, cell in (("resolution", resolution), ("aspect_ratio", aspect_ratio), ("duration", duration),
                                ("params", params)):
                values[field], why = rules.params(cell) if field == "params" else rules.value(field, cell)
                if problem is None and field in note:
                    problem = (field, note[field][0])
                if problem is None and why:
                    problem = (field, why)
            end_ref = None
            if problem is None and "end_image_uri" in note:
                problem = ("end_image_uri", note["end_image_uri"][0])
            if problem is None and end_uri is not None:
                end_ref, why = _end_frame(rules.profile, resolver, end_uri)
                if why:
                    problem = ("end_image_uri", why)
            if problem is None:
                valid.append(CatalogItem(item_id, prompt, image_uri, image_ref, day, values["resolution"],
                                         values["aspect_ratio"], values["duration"], index, values["params"],
                                         end_uri if end_ref else None, end_ref, own[index]))
                continue
            field, why = problem
            rejected.add(index, field, _why(field, why), rules.endpoint_id)
    return valid, rejected


def _end_frame(profile: EndpointProfile, resolver: ImageResolver, uri: Any) -> tuple[str | None, str | None]:
    """(the resolved end frame, or why not): the image rules of `image_uri`, on an endpoint that takes one."""
    if not isinstance(uri, str):
        return None, "must be a string"
    if not uri.strip():
        return None, None  # empty: no end frame
    if profile.field_for("end_image") is None:
        return None, f"{profile.endpoint_id} takes no end frame (leave end_image_uri empty)"
    return resolver.resolve(uri)


def _rows_endpoints(table: pa.Table, dups: dict[str, int], endpoints: EndpointSet,
                    ) -> tuple[list[_Rules | None], list[bool]]:
    """Per row: the rules of its endpoint (None: the row names no endpoint of the set) and whether it is plainly
    valid for them (`_plainly_valid`, one vectorised pass per endpoint the day uses)."""
    if "endpoint_id" not in table.column_names:
        rules = rules_for(endpoints.default)
        return [rules] * table.num_rows, _plainly_valid(table, dups, rules)
    cells = table.column("endpoint_id").to_pylist()
    picked = {cell: endpoints.pick(cell)[0] for cell in set(c if isinstance(c, (str, type(None))) else repr(c)
                                                            for c in cells)}
    chosen: list[_Rules | None] = []
    for cell in cells:
        profile = picked.get(cell) if isinstance(cell, (str, type(None))) else None
        chosen.append(rules_for(profile) if profile is not None else None)
    plain = [False] * table.num_rows
    for rules in {id(r): r for r in chosen if r is not None}.values():
        ok = _plainly_valid(table, dups, rules)
        for index, row_rules in enumerate(chosen):
            if row_rules is rules:
                plain[index] = ok[index]
    return chosen, plain


_CHUNK = 16_384
_WHYS: dict[tuple[str, str], str] = {}


def _why(field: str, why: str) -> str:
    """"field: why" on one line; one string for rows that share it (a day may reject 100,000 rows)."""
    text = _WHYS.get((field, why))
    if text is None:
        if len(_WHYS) > 4096:
            _WHYS.clear()
        text = _WHYS[(field, why)] = ONE_LINE.sub(" ", f"{field}: {why}")
    return text


# the plain https reference `ImageResolver` accepts as it is (ASCII, no case folding: a subset of _PLAIN_HTTPS)
_PLAIN_HTTPS_RE2 = r"^[Hh][Tt][Tt][Pp][Ss]://[A-Za-z0-9.\-]+(:[0-9]+)?([/?#]|$)"


def _plainly_valid(table: pa.Table, dups: dict[str, int], rules: _Rules) -> list[bool]:
    """Per row: True if the full rules would surely accept it as it is — ids and prompts with a letter or digit,
    the usual https image, the endpoint's exact allowed values or nulls, no params — checked column-wise in Arrow.
    False only means "run the full rules"."""
    names = table.column_names

    def text(name: str, pattern: str) -> pa.ChunkedArray:
        column = table.column(name)
        if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
            return pa.chunked_array([pa.nulls(table.num_rows, pa.bool_())])
        return pc.match_substring_regex(column, pattern)

    def optional(name: str, allowed: list, kinds: tuple) -> Any:
        if name not in names:
            return True
        column = table.column(name)
        try:
            if any(kind(column.type) for kind in kinds):
                return pc.or_kleene(pc.is_null(column), pc.is_in(column, value_set=pa.array(allowed, column.type)))
        except (pa.ArrowException, TypeError, ValueError):
            pass
        return pc.is_null(column)  # another type: the full rules say what they accept

    ok = pc.and_kleene(text("item_id", "[A-Za-z0-9]"), text("prompt", "[A-Za-z0-9]"))
    cap = rules.profile.text_cap(rules.profile.catalog_mapping["prompt"])
    if cap is not None and pa.types.is_string(table.column("prompt").type):  # longer: the full rules reject it
        ok = pc.and_kleene(ok, pc.less_equal(pc.utf8_length(table.column("prompt")), cap))
    ok = pc.and_kleene(ok, text("image_uri", _PLAIN_HTTPS_RE2))
    if dups:
        ids = table.column("item_id")
        ok = pc.and_kleene(ok, pc.invert(pc.is_in(ids, value_set=pa.array(list(dups), ids.type))))
    strings = (pa.types.is_string, pa.types.is_large_string)
    for name, kinds in (("resolution", strings), ("aspect_ratio", strings),
                        ("duration", (pa.types.is_integer, pa.types.is_floating)), ("params", ()),
                        ("end_image_uri", ())):  # an end frame: the full rules
        allowed = [v for v in rules.exact[name] if v is not None] if name in rules.exact else []
        ok = pc.and_kleene(ok, optional(name, allowed, kinds))
    return pc.fill_null(ok, False).to_pylist()
