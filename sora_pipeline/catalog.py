"""The catalog (input): a day-filtered Parquet scan through fsspec + pyarrow.dataset, validated by the row rules
of `catalog_rows` and the catalog-wide item_id check of `catalog_ids`.

The `scheduled_date` filter is pushed down into the scan (partition pruning and row-group statistics); nothing
here loads the whole catalog or goes through pandas. See CONTRACT.md for the columns and rules.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Sequence

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from sora_pipeline.catalog_ids import day_row_groups, duplicated_ids, fragments_dataset, write_catalog
from sora_pipeline.catalog_rows import (CONTRACT_COLUMNS, OPTIONAL_COLUMNS, REQUIRED_COLUMNS, CatalogItem,
                                        ImageResolver, RejectedRow, check_rows, redact)
from sora_pipeline.tables import is_local_fs

__all__ = [
    "CONTRACT_COLUMNS", "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "CatalogError", "CatalogItem", "CatalogSlice",
    "RejectedRow", "catalog_fingerprints", "catalog_signature", "image_roots_from_env", "open_catalog",
    "read_catalog_day", "redact", "write_catalog",
]


class CatalogError(ValueError):
    """The catalog as a whole cannot be read (missing, not Parquet, or a required column is missing)."""


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


def _data_files(fs: Any, path: str, listing: Any = None) -> list[str]:
    """Parquet files under a catalog folder (of `listing`, else of `fs.find`), skipping hidden/underscore names at
    any depth (e.g. `_SUCCESS`)."""
    out = []
    for f in sorted(fs.find(path) if listing is None else listing):
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
    parts = _scan(cat, lambda: day_row_groups(cat.dataset, day_filter))
    table = _scan(cat, lambda: fragments_dataset(cat.dataset, parts).to_table(columns=columns, filter=day_filter))
    day_ids = [i for i in table.column("item_id").to_pylist() if isinstance(i, str) and i.strip()]
    dups = _scan(cat, lambda: duplicated_ids(cat.dataset, day_ids, day_filter, parts))
    resolver = ImageResolver(cat.fs, cat.folder, local=cat.local, is_dir=cat.is_dir, image_roots=image_roots)
    valid, rejected = check_rows(table, day, dups, resolver)
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


# what filesystems report of a file's last write (local mtime, S3/GCS/Azure ETags and timestamps, fsspec memory)
_CHANGE_MARKERS = ("mtime", "ETag", "etag", "LastModified", "last_modified", "updated", "md5Hash", "generation",
                   "created")


def catalog_signature(uri: str, storage_options: dict | None = None) -> str | None:
    """A marker of the catalog's data files from one listing (paths, sizes, modification times or ETags), no
    Parquet read: it changes when a file is written, added or removed. None when the filesystem reports no
    modification marker for a file (then nothing may be concluded from it)."""
    fs, path = open_catalog(uri, storage_options)
    try:
        info = fs.info(path)
        is_dir = info.get("type") == "directory"
        listing = fs.find(path, detail=True) if is_dir else {path: info}
    except FileNotFoundError:
        return None
    entries = []
    for name in _data_files(fs, path, listing) if is_dir else [path]:
        meta = listing[name]
        markers = {k: str(meta[k]) for k in _CHANGE_MARKERS if meta.get(k) is not None}
        if not markers:
            return None
        entries.append([name, str(meta.get("size")), markers])
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


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
