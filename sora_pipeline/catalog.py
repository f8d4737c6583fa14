"""The catalog (input): schema, row validation, and a day-filtered Parquet scan through fsspec + pyarrow.dataset.

The `scheduled_date` filter is pushed down into the scan (partition pruning and row-group statistics); nothing
here loads the whole catalog or goes through pandas. See CONTRACT.md for the columns and rules.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Sequence
from urllib.parse import urlsplit

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from pydantic import BaseModel

from sora_pipeline.catalog_ids import duplicated_ids, write_catalog  # noqa: F401  (write_catalog: API)
from sora_pipeline.fal.models import AspectRatio, Duration, Resolution
from sora_pipeline.tables import is_local_fs

__all__ = [
    "CONTRACT_COLUMNS", "REQUIRED_COLUMNS", "CatalogError", "CatalogItem", "CatalogSlice", "RejectedRow",
    "catalog_fingerprints", "image_roots_from_env", "open_catalog", "read_catalog_day",
]

REQUIRED_COLUMNS = ("item_id", "prompt", "image_uri", "scheduled_date")
OPTIONAL_COLUMNS = ("resolution", "aspect_ratio", "duration")
CONTRACT_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

# fsspec protocols that wrap another filesystem (and could reach local files through it): never followed
_WRAPPER_PROTOCOLS = {"blockcache", "cached", "filecache", "simplecache", "dir", "reference", "zip", "tar",
                      "libarchive", "jlab", "jupyter", "dask", "tree", "data"}
_LOCAL_PROTOCOLS = {"file", "local"}
_URI_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.S)
_DATA_RE = re.compile(r"^data:image/[A-Za-z0-9.+\-]+(;[A-Za-z0-9=.\-]+)*;base64,[A-Za-z0-9+/=\s]+$", re.S)
_SECRET_PATTERNS = [
    (re.compile(r"(?<=://)[^/@\s]+@"), "***@"),  # user:password@host
    (re.compile(r"([?&][^=&#\s]*(?:key|token|secret|sig|signature|password|passwd|credential|auth)[^=&#\s]*=)"
                r"[^&#\s]*", re.I), r"\1***"),
    (re.compile(r"\b(Key|Bearer|Basic)\s+\S+"), r"\1 ***"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "sk-***"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:[0-9a-f]{16,}\b", re.I), "***"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "***"),
]
# long opaque tokens (letters and digits, 40+ chars): masked everywhere except in item_id, the row's name
_OPAQUE = re.compile(r"(?<![A-Za-z0-9_])(?=[A-Za-z0-9_]*\d)(?=[A-Za-z0-9_]*[A-Za-z])[A-Za-z0-9_]{40,}")


class CatalogError(ValueError):
    """The catalog as a whole cannot be read (missing, not Parquet, or a required column is missing)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogItem:
    """A valid catalog row of one day, normalized (nulls → defaults, image location resolved). A plain dataclass:
    `read_catalog_day` has checked every field, and a day can have thousands of rows (pydantic would check
    them all again, ~5 µs each)."""

    item_id: str
    prompt: str
    image_uri: str  # as given in the catalog
    image_ref: str  # https URL, data URI, or absolute fsspec URI/path
    scheduled_date: date
    resolution: Resolution = Resolution.AUTO
    aspect_ratio: AspectRatio = AspectRatio.AUTO
    duration: Duration = Duration.S4
    row_index: int


class RejectedRow(BaseModel):
    """A row that breaks a rule: the first offending field and a one-line reason."""

    item_id: str | None
    scheduled_date: date
    row_index: int
    field: str
    reason: str
    raw: dict[str, str | None]


@dataclass(frozen=True)
class CatalogSlice:
    """One day of the catalog: its valid items and its rejected rows."""

    day: date
    valid: list[CatalogItem]
    rejected: list[RejectedRow]
    catalog_uri: str
    rows_scanned: int


def image_roots_from_env(value: str | None) -> list[str]:
    """Parse `SORA_IMAGE_ROOTS`: comma-separated local folders (blanks dropped, `~` expanded)."""
    if not value:
        return []
    return [os.path.expanduser(part.strip()) for part in value.split(",") if part.strip()]


def open_catalog(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the protocol-less path of a catalog URI (local paths become absolute)."""
    return fsspec.core.url_to_fs(uri, **(storage_options or {}))


@dataclass
class _Catalog:
    uri: str
    fs: Any
    path: str
    local: bool
    is_dir: bool
    dataset: ds.Dataset

    @property
    def folder(self) -> str:
        if self.is_dir:
            return self.path
        return os.path.dirname(self.path) if self.local else posixpath.dirname(self.path)


_DATA_SUFFIXES = (".parquet", ".parq", ".pq")


def _data_files(fs: Any, path: str) -> list[str]:
    """Parquet files under a catalog folder, skipping hidden/underscore names at any depth (e.g. `_SUCCESS`)."""
    out = []
    for f in sorted(fs.find(path)):
        parts = f[len(path):].lstrip("/").split("/")
        if parts[-1].lower().endswith(_DATA_SUFFIXES) and not any(p.startswith((".", "_")) for p in parts):
            out.append(f)
    return out


def _open(uri: str, storage_options: dict | None) -> _Catalog:
    fs, path = open_catalog(uri, storage_options)
    local = is_local_fs(fs)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise CatalogError(f"catalog {uri!r} does not exist") from None
    is_dir = info.get("type") == "directory"
    afs = pafs.LocalFileSystem() if local else fs  # pyarrow wraps fsspec filesystems itself
    try:
        files = _data_files(fs, path) if is_dir else [path]
        if not files:
            raise CatalogError(f"catalog {uri!r} contains no Parquet files")
        rels = [f[len(path):].lstrip("/").split("/") for f in files] if is_dir else []
        if any(len(r) > 1 and "=" in r[0] for r in rels):  # hive-partitioned, e.g. scheduled_date=2026-11-20/
            dataset = ds.dataset(files, filesystem=afs, format="parquet", partitioning="hive",
                                 partition_base_dir=path)
            part_schema = dataset.partitioning.schema
            if "scheduled_date" in part_schema.names:  # partition values are inferred as strings: make it a date
                idx = part_schema.get_field_index("scheduled_date")
                typed = part_schema.set(idx, pa.field("scheduled_date", pa.date32()))
                dataset = ds.dataset(files, filesystem=afs, format="parquet", partition_base_dir=path,
                                     partitioning=ds.partitioning(typed, flavor="hive"))
        else:
            dataset = ds.dataset(files, filesystem=afs, format="parquet")
        if len(files) > 1:
            # the first file's schema is not the catalog's: a column may appear only in later files
            schema = pa.unify_schemas([f.physical_schema for f in dataset.get_fragments()],
                                      promote_options="permissive")
            for fld in dataset.schema:
                if fld.name not in schema.names:
                    schema = schema.append(fld)
            dataset = dataset.replace_schema(schema)
    except CatalogError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CatalogError(f"catalog {uri!r} is not a readable Parquet dataset: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.schema.names]
    if missing:
        raise CatalogError(f"catalog {uri!r} is missing required column(s): {', '.join(map(repr, missing))}")
    return _Catalog(uri, fs, path, local, is_dir, dataset)


def _scan(cat: _Catalog, fn: Any) -> Any:
    try:
        return fn()
    except (pa.ArrowException, OSError) as exc:
        raise CatalogError(f"catalog {cat.uri!r} could not be scanned: {exc}") from exc


def _batches(cat: _Catalog, columns: list[str]) -> Any:
    try:
        yield from cat.dataset.to_batches(columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise CatalogError(f"catalog {cat.uri!r} could not be scanned: {exc}") from exc


def _day_filter(dataset: ds.Dataset, day: date) -> ds.Expression:
    typ = dataset.schema.field("scheduled_date").type
    if pa.types.is_date32(typ) or pa.types.is_date64(typ):
        return ds.field("scheduled_date") == pa.scalar(day, type=typ)
    return ds.field("scheduled_date").cast(pa.date32()) == pa.scalar(day, type=pa.date32())


def redact(text: str, limit: int = 200, *, opaque: bool = True) -> str:
    """Mask things that look like credentials and shorten long values (data URIs keep only their header)."""
    if text.startswith("data:") and "," in text:
        head, payload = text.split(",", 1)
        return f"{head[:80]},<{len(payload)} chars>"
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    if opaque:
        text = _OPAQUE.sub("***", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show(value: Any, *, opaque: bool = True) -> str:
    if isinstance(value, str):
        return repr(redact(value, 80, opaque=opaque))
    return redact(repr(value), 80, opaque=opaque)


_ALLOWED_RES = ", ".join(r.value for r in Resolution)
_ALLOWED_AR = ", ".join(a.value for a in AspectRatio)
_ALLOWED_DUR = ", ".join(str(int(d)) for d in Duration)
_MEMBERS = {enum: {m.value: m for m in enum} for enum in (Resolution, AspectRatio)}  # lookups, not enum() calls
_DURATIONS = {int(d): d for d in Duration}
# the usual image reference: https://host/... (anything unusual takes the full path below)
_PLAIN_HTTPS = re.compile(r"https://[A-Za-z0-9.\-]+(?::\d+)?(?:[/?#]|$)", re.I)


def _enum_value(value: Any, enum: type, default: Any, allowed: str) -> tuple[Any, str | None]:
    if value is None:
        return default, None
    if isinstance(value, str):
        member = _MEMBERS[enum].get(value) or _MEMBERS[enum].get(value.strip().lower())
        if member is not None:
            return member, None
    return None, f"{_show(value)} is not one of {allowed}"


def _duration(value: Any) -> tuple[Duration | None, str | None]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Duration.S4, None
    number: Any = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number is not None and number in _DURATIONS:
        return _DURATIONS[number], None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    shown = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _show(value)
    return None, f"{shown} is not one of {_ALLOWED_DUR}"


class _ImageResolver:
    """Applies the contract's image_uri rules; see `read_catalog_day` for how local paths are confined."""

    def __init__(self, cat: _Catalog, image_roots: Sequence[str]):
        self.cat = cat
        roots = [os.path.realpath(os.path.abspath(os.path.expanduser(_strip_file(r)))) for r in image_roots]
        if cat.local:
            roots.insert(0, os.path.realpath(cat.folder))
            if cat.is_dir:
                roots.insert(1, os.path.realpath(os.path.dirname(cat.folder)))
        self.roots = list(dict.fromkeys(roots))

    def resolve(self, value: Any) -> tuple[str | None, str | None]:
        if value is None:
            return None, "missing"
        if not isinstance(value, str) or not value.strip():
            return None, "must be a non-empty string"
        uri = value.strip()
        if _PLAIN_HTTPS.match(uri):
            return uri, None
        low = uri.lower()
        if low.startswith("https://"):
            return (uri, None) if urlsplit(uri).hostname else (None, f"{_show(uri)} has no host")
        if low.startswith("http://"):
            return None, f"{_show(uri)} uses plain http:// (only https:// URLs are allowed)"
        if low.startswith("data:"):
            if _DATA_RE.match(uri):
                return uri, None
            return None, f"{_show(uri)} is not a data:image/<type>;base64,<data> URI"
        if "::" in uri:
            return None, f"{_show(uri)} is a chained fsspec URL (not allowed)"
        m = _URI_RE.match(uri)
        if m:
            protocol, rest = m.group(1).lower(), m.group(2)
            if protocol in _LOCAL_PROTOCOLS:
                return self._local(uri, rest, relative_ok=False)
            if protocol in _WRAPPER_PROTOCOLS or protocol not in fsspec.available_protocols():
                return None, f"{_show(uri)} uses an unsupported protocol {protocol!r}"
            return uri, None
        if self.cat.local:
            return self._local(uri, uri, relative_ok=True)
        # a path inside a non-local catalog's filesystem (e.g. memory://, s3://): relative to its folder
        path = uri if uri.startswith("/") else posixpath.normpath(posixpath.join(self.cat.folder, uri))
        return self.cat.fs.unstrip_protocol(path), None

    def _local(self, uri: str, path: str, *, relative_ok: bool) -> tuple[str | None, str | None]:
        if not os.path.isabs(path):
            if not (relative_ok and self.cat.local):
                return None, f"{_show(uri)} is a relative file:// URI (give an absolute path)"
            path = os.path.join(self.cat.folder, path)
        real = os.path.realpath(path)
        if not any(_inside(real, root) for root in self.roots):
            return None, f"{_show(uri)} resolves outside the catalog folder and SORA_IMAGE_ROOTS"
        if not os.path.isfile(real):
            return None, f"{_show(uri)} does not exist (resolved to {real})"
        return real, None


def _strip_file(path: str) -> str:
    return path[len("file://"):] if path.lower().startswith("file://") else path


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


def _raw(row: dict[str, Any]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for col in CONTRACT_COLUMNS:
        value = row.get(col)
        text = value.isoformat() if isinstance(value, date) else str(value)
        out[col] = None if value is None else redact(text, opaque=col != "item_id")
    return out


def read_catalog_day(uri: str, day: date | str, *, image_roots: Sequence[str] = (),
                     storage_options: dict | None = None) -> CatalogSlice:
    """The day's rows of the catalog at `uri`, validated: `valid` items and `rejected` rows with reasons.

    Only rows with `scheduled_date == day` are read (the filter is pushed into the Parquet scan); uniqueness of
    `item_id` is checked across the whole catalog by a second scan of just the `item_id` column.

    Image paths: the *catalog's folder* is `uri` itself when it is a directory (also when hive-partitioned),
    else the file's parent. Relative paths resolve against it. A local path (no protocol or `file://`) is
    accepted only if its realpath lies inside the catalog's folder, the *parent* of a directory catalog (so
    `data/catalog` may use `../images/x.png`), or one of `image_roots`; and the file must exist. For a
    non-local catalog (`memory://`, `s3://`, ...) protocol-less paths resolve inside that filesystem. Other
    fsspec URIs (`s3://`, `memory://`, ...) are used as-is; `http://`, chained (`a::b`) and wrapper protocols are
    rejected.
    """
    day = date.fromisoformat(day) if isinstance(day, str) else day
    day = day.date() if isinstance(day, datetime) else day
    cat = _open(uri, storage_options)
    columns = [c for c in CONTRACT_COLUMNS if c in cat.dataset.schema.names]
    day_filter = _day_filter(cat.dataset, day)
    table = _scan(cat, lambda: cat.dataset.to_table(columns=columns, filter=day_filter))
    absent = [None] * table.num_rows
    item_ids, prompts, images, resolutions, aspects, durations = (  # column by column: no dict per row
        table.column(c).to_pylist() if c in columns else absent for c in CONTRACT_COLUMNS if c != "scheduled_date")
    day_ids = [i for i in item_ids if isinstance(i, str) and i.strip()]
    dups = _scan(cat, lambda: duplicated_ids(cat.dataset, day_ids, day_filter))
    resolver = _ImageResolver(cat, image_roots)
    valid: list[CatalogItem] = []
    rejected: list[RejectedRow] = []
    rows = zip(item_ids, prompts, images, resolutions, aspects, durations)
    for index, (item_id, prompt, image_uri, resolution, aspect_ratio, duration) in enumerate(rows):
        problem: tuple[str, str] | None = None
        if item_id is None:
            problem = ("item_id", "missing")
        elif not isinstance(item_id, str) or not item_id.strip():
            problem = ("item_id", "must be a non-empty string")
        elif item_id in dups:
            problem = ("item_id", f"{_show(item_id, opaque=False)} is shared by {dups[item_id]} rows of the catalog "
                                  "(must be unique)")
        if problem is None and (not isinstance(prompt, str) or not prompt.strip()):
            problem = ("prompt", "missing" if prompt is None else "empty after stripping whitespace")
        image_ref, why = (None, None)
        if problem is None:
            image_ref, why = resolver.resolve(image_uri)
            if why:
                problem = ("image_uri", why)
        res, why = _enum_value(resolution, Resolution, Resolution.AUTO, _ALLOWED_RES)
        if problem is None and why:
            problem = ("resolution", why)
        ar, why = _enum_value(aspect_ratio, AspectRatio, AspectRatio.AUTO, _ALLOWED_AR)
        if problem is None and why:
            problem = ("aspect_ratio", why)
        dur, why = _duration(duration)
        if problem is None and why:
            problem = ("duration", why)
        if problem is not None:
            field, why = problem
            shown_id = _show(item_id, opaque=False) if item_id is not None else "None"
            reason = re.sub(r"[\r\n\t]+", " ", f"row {index} (item_id={shown_id}): {field}: {why}")
            rejected.append(RejectedRow(item_id=item_id if isinstance(item_id, str) else None, scheduled_date=day,
                                        row_index=index, field=field, reason=reason,
                                        raw=_raw(table.slice(index, 1).to_pylist()[0])))
            continue
        valid.append(CatalogItem(item_id=item_id, prompt=prompt, image_uri=image_uri, image_ref=image_ref,
                                 scheduled_date=day, resolution=res, aspect_ratio=ar, duration=dur,
                                 row_index=index))
    return CatalogSlice(day=day, valid=valid, rejected=rejected, catalog_uri=uri, rows_scanned=table.num_rows)


def _canonical(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _day_key(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip()[:10]).isoformat()
        except ValueError:
            return None
    return None


def catalog_fingerprints(uri: str, storage_options: dict | None = None) -> dict[str, str]:
    """Per scheduled_date (ISO string), a SHA-256 of that day's rows' contract columns.

    Row order and file layout do not matter (row hashes are sorted); only contract columns are read, batch by
    batch. A day changes fingerprint when a row is added, removed or edited.
    """
    cat = _open(uri, storage_options)
    columns = [c for c in CONTRACT_COLUMNS if c in cat.dataset.schema.names]
    per_day: dict[str, list[str]] = defaultdict(list)
    for batch in _batches(cat, columns):
        for row in batch.to_pylist():
            key = _day_key(row.get("scheduled_date"))
            if key is None:
                continue
            blob = json.dumps([_canonical(row.get(c)) for c in CONTRACT_COLUMNS], default=str, ensure_ascii=False)
            per_day[key].append(hashlib.sha256(blob.encode()).hexdigest())
    return {day: hashlib.sha256("\n".join(sorted(h)).encode()).hexdigest() for day, h in sorted(per_day.items())}
