"""What changed in the catalog: a cheap signature from one listing (no Parquet read) and per-day fingerprints of
the rows (for the sensor that re-materializes edited days)."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import pyarrow as pa
import pyarrow.dataset as ds

from sora_pipeline.catalog.columns import CONTRACT_COLUMNS
from sora_pipeline.catalog.reader import (
    CatalogError,
    _canonical,
    _data_files,
    _day_key,
    _open,
    _scan,
    _TYPE_ERRORS,
    _views,
    open_catalog,
)


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
    per_day: dict[str, list[str]] = defaultdict(list)
    if not cat.drift:
        try:
            _fingerprint_rows(cat.dataset, per_day)
        except _TYPE_ERRORS:  # a file's values do not fit the unified schema: file by file
            per_day.clear()
            cat.drift = True
        except (pa.ArrowException, OSError) as exc:
            raise CatalogError(f"catalog {cat.uri!r} could not be scanned: {exc}") from exc
    if cat.drift:  # each file with its own schema (the values are hashed as they are)
        _scan(cat, lambda: [_fingerprint_rows(view.dataset(cat), per_day) for view in _views(cat)])
    return {day: hashlib.sha256("\n".join(sorted(h)).encode()).hexdigest() for day, h in sorted(per_day.items())}


def _fingerprint_rows(dataset: ds.Dataset, per_day: dict[str, list[str]]) -> None:
    columns = [c for c in CONTRACT_COLUMNS if c in dataset.schema.names]
    for batch in dataset.to_batches(columns=columns):
        for row in batch.to_pylist():
            key = _day_key(row.get("scheduled_date"))
            if key is None:
                continue
            values = [_canonical(row.get(c)) for c in CONTRACT_COLUMNS]
            while len(values) > 7 and values[-1] is None:  # no end frame, no params: the fingerprint catalogs
                values.pop()  # had before those columns existed
            blob = json.dumps(values, default=str, ensure_ascii=False)
            per_day[key].append(hashlib.sha256(blob.encode()).hexdigest())
