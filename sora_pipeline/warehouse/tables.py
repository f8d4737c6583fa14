"""Per-day Parquet tables through fsspec: `<warehouse>/<table>/date=YYYY-MM-DD/`, each day replaced atomically
for readers, on local disks and object stores alike, without renaming anything a reader may be reading.

A write puts the day's rows in a new version under a fresh name (`<warehouse>/_versions/<table>/date=D/
part-v<ns>-<hex>.parquet`, outside the table's folder), then
replaces the day's manifest (`_manifest.json`, a single PUT on object stores, a rename locally) with one that
names the new version and lists the old one as retired, then replaces `data.parquet`, the copy plain Parquet
readers see, in one step. Readers (`read_day_partition`, `read_table`, `day_files`, `current_files`, and the
DuckDB views of `sora_pipeline.analytics.query`) read the manifest and only the version it names, so they see
the old day or the new one — never a mix, never nothing. A plain `read_parquet('<table>/date=*/*.parquet')` sees
each day's `data.parquet`: one whole version, the new one from a moment after the swap. Retired versions are
deleted `gc_grace_s` after the swap (manifest.py). A day without a manifest is the old layout (every `*.parquet`
of the folder) and is read as before; its next write gives it a manifest and removes the old files.

Writers of one day must take turns: pass `lock` (the Dagster resource passes a lease held in the ledger's database,
`coordination/leases.py`, so writers on any machine sharing the ledger are serialized); without one, a local
warehouse takes a file lock (one machine), an object store none. Two unserialized writers still leave one
complete version (the last manifest wins), but the loser's file may linger until collected as an orphan.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
import time
from datetime import date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from .manifest import GC_GRACE_S, MANIFEST, MIRROR, ORPHAN_AGE_S, Manifest, collect_garbage, day_files
from .manifest import is_legacy_data, new_data_name, read_manifest, table_files, versions_dir
from .files import Store, is_local_fs, open_store

__all__ = ["GC_GRACE_S", "collect_table_garbage", "current_files", "file_uri_for", "is_local_fs", "partition_uri",
           "read_day_partition", "read_table", "table_uri", "write_day_partition"]

log = logging.getLogger("sora_pipeline.warehouse")
READ_ATTEMPTS = 5
_TABLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_URI_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)(.*)$", re.S)
_PARTITION_SCHEMA = pa.schema([("date", pa.date32())])


def file_uri_for(warehouse_uri: str, *parts: str) -> str:
    """Join path parts onto a local path or an fsspec URI (`s3://b/w`, `memory://w`, `file:///x`)."""
    clean = [p.strip("/") for p in parts if p and p.strip("/")]
    m = _URI_RE.match(warehouse_uri)
    if m:
        prefix, rest = m.group(1), m.group(2).rstrip("/")
        return prefix + "/".join([rest, *clean] if rest else clean)
    return os.path.join(warehouse_uri, *clean) if clean else warehouse_uri


def _day(day: date | datetime | str) -> str:
    if isinstance(day, datetime):
        return day.date().isoformat()
    if isinstance(day, date):
        return day.isoformat()
    return date.fromisoformat(str(day).strip()).isoformat()


def _check_table(table: str) -> str:
    if not _TABLE_RE.match(table or ""):
        raise ValueError(f"invalid table name {table!r} (letters, digits, '_', '.', '-'; not hidden)")
    return table


def table_uri(warehouse_uri: str, table: str) -> str:
    return file_uri_for(warehouse_uri, _check_table(table))


def partition_uri(warehouse_uri: str, table: str, day: date | str) -> str:
    return file_uri_for(warehouse_uri, _check_table(table), f"date={_day(day)}")


def _locate(warehouse_uri: str, table: str, storage_options: dict | None) -> tuple[Store, str]:
    return open_store(table_uri(warehouse_uri, table), storage_options)


def write_day_partition(warehouse_uri: str, table: str, day: date | str, data: pa.Table,
                        storage_options: dict | None = None, *, lock: Any = None,
                        gc_grace_s: float = GC_GRACE_S) -> str:
    """Write `data` as day `day` of `table`, atomically replacing that day for readers; return the partition URI.

    `lock`: a context manager held around the write (serializes writers of the day); what it yields may have an
    `ensure_held()` method, called right before the swap (a writer that lost its lease must not publish). A
    0-row table is a valid day. `data` must not have a `date` column: readers add it from the folder name.
    """
    if not isinstance(data, pa.Table):
        raise TypeError(f"data must be a pyarrow.Table, not {type(data).__name__}")
    if "date" in data.schema.names:
        raise ValueError(f"table {table!r}: 'date' is the partition column and cannot be a data column")
    d = _day(day)
    store, tdir = _locate(warehouse_uri, table, storage_options)
    with (lock if lock is not None else _local_lock(store, tdir, d)) as held:
        _write(store, tdir, d, data, held, gc_grace_s)
    try:
        collect_garbage(store, tdir, grace_s=gc_grace_s)
    except Exception as exc:  # garbage is harmless: readers ignore it; the next write tries again
        log.warning("warehouse: could not collect old files of %s: %s: %s", table, type(exc).__name__, exc)
    return partition_uri(warehouse_uri, table, d)


@contextlib.contextmanager
def _local_lock(store: Store, tdir: str, d: str):
    """Without a `lock`: one writer per day per machine on local disks (a file lock); nothing on object stores."""
    if not store.local:
        yield None
        return
    lock_dir = os.path.join(tempfile.gettempdir(), "sora-pipeline-locks")  # outside the table: readers never see it
    os.makedirs(lock_dir, exist_ok=True)
    name = hashlib.sha256(f"{os.path.realpath(tdir)}\0{d}".encode()).hexdigest()[:32]
    with open(os.path.join(lock_dir, f"{name}.lock"), "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield None
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write(store: Store, tdir: str, d: str, data: pa.Table, held: Any, grace_s: float) -> None:
    day_dir = store.join(tdir, f"date={d}")
    store.refresh(day_dir)
    name = new_data_name()
    path = store.join(versions_dir(store, tdir, d), name)
    started = time.monotonic()
    try:
        store.write_parquet(path, data)  # invisible to readers until a manifest names it
        old = read_manifest(store, day_dir)
        now = time.time()
        legacy: list[str] = []
        if old is None:  # first write, or the old layout: its visible files go once the mirror is in place
            legacy = [n for n in store.listdir(day_dir) if is_legacy_data(n)]
            previous: list[str] = []
            kept: list[tuple[str, float]] = []
        else:
            previous = list(old.files)
            kept = [(f, at) for f, at in old.retired if now - at < grace_s]
        manifest = Manifest(files=(name,), rows=data.num_rows, written_at=now,
                            retired=tuple(kept + [(f, now) for f in previous if f != name]),
                            writer=f"{os.uname().nodename}:{os.getpid()}")
        if time.monotonic() - started > ORPHAN_AGE_S / 2:
            raise TimeoutError(f"writing {day_dir} took over {ORPHAN_AGE_S / 2:.0f}s; the garbage collector may "
                               "already treat the new file as an orphan, so it is not published")
        if held is not None and hasattr(held, "ensure_held"):
            held.ensure_held()
        _publish(store, day_dir, manifest)
    except BaseException:
        store.delete(path)
        raise
    store.mirror(path, store.join(day_dir, MIRROR))  # plain readers: one whole version, now the new one
    for n in legacy:  # the old layout's files: manifest readers retry if one was just being read
        store.delete(store.join(day_dir, n))


def _publish(store: Store, day_dir: str, manifest: Manifest) -> None:
    """The swap: one PUT (object stores) or rename (local) of the day's manifest."""
    store.put_atomic(store.join(day_dir, MANIFEST), manifest.to_json())


def _read_files(store: Store, files: list[str], partition_base: str | None = None,
                columns: list[str] | None = None) -> pa.Table:
    kwargs: dict[str, Any] = {}
    if partition_base is not None:
        kwargs = {"partitioning": ds.partitioning(_PARTITION_SCHEMA, flavor="hive"),
                  "partition_base_dir": partition_base}
    dataset = ds.dataset(files, filesystem=store.arrow_fs, format="parquet", **kwargs)
    schemas = [f.physical_schema for f in dataset.get_fragments()]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    if partition_base is not None:
        schema = schema.append(_PARTITION_SCHEMA.field("date"))
    if columns is not None:  # those the files have (a column added later is absent from older days)
        columns = [c for c in columns if c in schema.names]
    return dataset.replace_schema(schema).to_table(columns=columns)


def _retrying(read):
    """Read again from a fresh manifest if a named file is gone (deleted after the grace period, or a file of
    the old layout replaced meanwhile)."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return read()
        except (FileNotFoundError, OSError):
            if attempt == READ_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def read_day_partition(warehouse_uri: str, table: str, day: date | str,
                       storage_options: dict | None = None, columns: list[str] | None = None) -> pa.Table | None:
    """The day's rows of `table` (without a `date` column; only `columns` when given, of those its files have), or
    None if the day was never written."""
    d = _day(day)
    store, tdir = _locate(warehouse_uri, table, storage_options)

    def read() -> pa.Table | None:
        files = day_files(store, tdir, d)
        return _read_files(store, files, columns=columns) if files else None

    return _retrying(read)


def read_table(warehouse_uri: str, table: str, storage_options: dict | None = None) -> pa.Table | None:
    """All days of `table` with a `date` (date32) column from the folder names; None if there are none."""
    store, tdir = _locate(warehouse_uri, table, storage_options)

    def read() -> pa.Table | None:
        files = [f for day in table_files(store, tdir).values() for f in day]
        return _read_files(store, files, partition_base=tdir) if files else None

    return _retrying(read)


def current_files(warehouse_uri: str, table: str, storage_options: dict | None = None) -> dict[str, list[str]]:
    """Every day of `table` → the URIs of its current data files (local paths, or `s3://…` with the protocol),
    as the day's manifest names them: what a reader should open, e.g. DuckDB's `read_parquet([...])`."""
    store, tdir = _locate(warehouse_uri, table, storage_options)
    return {d: [store.uri(f) for f in files] for d, files in table_files(store, tdir).items()}


def collect_table_garbage(warehouse_uri: str, table: str, storage_options: dict | None = None, *,
                          grace_s: float = GC_GRACE_S, orphan_age_s: float = ORPHAN_AGE_S,
                          now: float | None = None) -> list[str]:
    """Delete the old files of every day of `table` no reader can need any more (see manifest.py); every write
    does this for its table. Returns the URIs deleted."""
    store, tdir = _locate(warehouse_uri, table, storage_options)
    return [store.uri(p) for p in collect_garbage(store, tdir, grace_s=grace_s, orphan_age_s=orphan_age_s, now=now)]
