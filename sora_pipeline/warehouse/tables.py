"""Per-day Parquet partitions through fsspec, replaced atomically: `<warehouse>/<table>/date=YYYY-MM-DD/*.parquet`.

A write goes to a hidden staging folder first (`<table>/.staging/date=D-<uuid>/part-<uuid>.parquet`), then is
swapped into place:

1. if `date=D` exists, move it aside to `<table>/.staging/date=D.old-<ns>-<uuid>`;
2. move the staging folder to `date=D`;
3. delete the moved-aside copy.

Locally steps 1 and 2 are `os.rename` of directories (each atomic), so `date=D` always holds one complete set of
files; a crash between 1 and 2 leaves `date=D` missing and the old copy aside, and the next read or write of that
day restores it (recovery also deletes asides left after step 3 and stale staging folders). On object stores
(fsspec `mv` = copy + delete) the same protocol runs file by file; since a partition is exactly one file, each
step is a single-object copy (atomic on S3/GCS/Azure), so readers see the old file, no file (recovered as above),
or the new file — never a mix or a partial object. One writer per day at a time is assumed (Dagster runs a
partition once at a time); readers ignore names starting with `.` or `_`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
import time
import uuid
from datetime import date, datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = ["file_uri_for", "partition_uri", "read_day_partition", "read_table", "table_uri", "write_day_partition"]

STAGING = ".staging"
STALE_STAGING_SECONDS = 3600  # an unfinished staging folder older than this is garbage
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


def is_local_fs(fs: Any) -> bool:
    """Whether an fsspec filesystem is the local disk (`file`/`local` protocol)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool({"file", "local"} & set(protocols))


class _Ops:
    """Directory operations on one filesystem: `os` calls locally, per-file fsspec calls elsewhere."""

    def __init__(self, fs: Any):
        self.fs = fs
        self.local = is_local_fs(fs)
        self.arrow_fs = pafs.LocalFileSystem() if self.local else fs

    def join(self, *parts: str) -> str:
        return os.path.join(*parts) if self.local else posixpath.join(*parts)

    def listdir(self, path: str) -> list[str]:
        if self.local:
            return sorted(os.listdir(path)) if os.path.isdir(path) else []
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)

    def files(self, path: str) -> list[str]:
        """Data files directly inside a partition folder (hidden and `_` names ignored)."""
        if self.local:
            names = self.listdir(path)
            return [os.path.join(path, n) for n in names
                    if n.endswith(".parquet") and not n.startswith((".", "_")) and os.path.isfile(os.path.join(path, n))]
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            name = posixpath.basename(str(e["name"]).rstrip("/"))
            if e.get("type") == "file" and name.endswith(".parquet") and not name.startswith((".", "_")):
                out.append(str(e["name"]))
        return sorted(out)

    def exists(self, path: str) -> bool:
        if self.local:
            return os.path.isdir(path)
        return bool(self.fs.exists(path) and self.fs.find(path))

    def makedirs(self, path: str) -> None:
        if self.local:
            os.makedirs(path, exist_ok=True)
        else:
            self.fs.makedirs(path, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        """Move folder `src` to the not-yet-existing `dst` (atomic locally; file by file elsewhere)."""
        if self.local:
            os.rename(src, dst)
            return
        if self.exists(dst):
            raise FileExistsError(dst)
        found = self.fs.find(src)
        if not found:
            raise FileNotFoundError(src)
        for f in found:
            self.fs.mv(f, posixpath.join(dst, posixpath.relpath(f, src)))
        self.rmtree(src)

    def rmtree(self, path: str) -> None:
        if self.local:
            shutil.rmtree(path, ignore_errors=True)
            return
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def write_parquet(self, path: str, data: pa.Table) -> None:
        if self.local:
            with open(path, "wb") as fh:
                pq.write_table(data, fh)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(os.path.dirname(path))
        else:
            with self.fs.open(path, "wb") as fh:  # object stores publish the object on close
                pq.write_table(data, fh)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _locate(warehouse_uri: str, table: str, storage_options: dict | None) -> tuple[_Ops, str]:
    fs, path = fsspec.core.url_to_fs(table_uri(warehouse_uri, table), **(storage_options or {}))
    return _Ops(fs), path


def _asides(ops: _Ops, tdir: str, d: str) -> list[str]:
    """Moved-aside copies of day `d`, oldest first."""
    prefix = f"date={d}.old-"
    names = [n for n in ops.listdir(ops.join(tdir, STAGING)) if n.startswith(prefix)]
    names.sort(key=lambda n: int(n[len(prefix):].split("-", 1)[0] or 0))
    return [ops.join(tdir, STAGING, n) for n in names]


def _recover(ops: _Ops, tdir: str, d: str, *, writer: bool = False) -> None:
    """Finish an interrupted swap of day `d`: restore a moved-aside copy if `date=d` is missing, drop leftovers.

    The (single) writer of a day also deletes every unfinished staging folder of that day; readers delete only
    local ones older than STALE_STAGING_SECONDS, since a writer may be filling one right now.
    """
    target = ops.join(tdir, f"date={d}")
    asides = _asides(ops, tdir, d)
    if asides and not ops.exists(target):
        try:
            ops.rename(asides[-1], target)
            asides = asides[:-1]
        except (FileNotFoundError, FileExistsError, OSError):
            return  # someone else is on it; the next call will see a consistent state
    for aside in asides:
        if ops.exists(target):
            ops.rmtree(aside)
    staging = ops.join(tdir, STAGING)
    for name in ops.listdir(staging):
        if not name.startswith(f"date={d}-"):
            continue
        path = ops.join(staging, name)
        if writer:
            ops.rmtree(path)
        elif ops.local and time.time() - os.path.getmtime(path) > STALE_STAGING_SECONDS:
            shutil.rmtree(path, ignore_errors=True)


def _move_aside(ops: _Ops, target: str, aside: str) -> None:
    ops.rename(target, aside)


def _move_in(ops: _Ops, stage: str, target: str) -> None:
    ops.rename(stage, target)


def write_day_partition(warehouse_uri: str, table: str, day: date | str, data: pa.Table,
                        storage_options: dict | None = None) -> str:
    """Write `data` as day `day` of `table`, atomically replacing that day's files; return the partition URI.

    A 0-row table is a valid day (a file with just the schema is written). `data` must not have a `date`
    column: that is the hive partition column readers add.
    """
    if not isinstance(data, pa.Table):
        raise TypeError(f"data must be a pyarrow.Table, not {type(data).__name__}")
    if "date" in data.schema.names:
        raise ValueError(f"table {table!r}: 'date' is the partition column and cannot be a data column")
    d = _day(day)
    ops, tdir = _locate(warehouse_uri, table, storage_options)
    with _writer_lock(ops, tdir, d):
        return _write_locked(ops, tdir, d, data, warehouse_uri, table)


@contextlib.contextmanager
def _writer_lock(ops: _Ops, tdir: str, d: str):
    """One writer per day at a time on local disks (two runs of the same day may finish together); object
    stores have no locks: there the last writer wins and a concurrent writer's staging folder may be lost."""
    if not ops.local:
        yield
        return
    lock_dir = os.path.join(tempfile.gettempdir(), "sora-pipeline-locks")  # outside the table: readers never see it
    os.makedirs(lock_dir, exist_ok=True)
    name = hashlib.sha256(f"{os.path.realpath(tdir)}\0{d}".encode()).hexdigest()[:32]
    with open(os.path.join(lock_dir, f"{name}.lock"), "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_locked(ops: _Ops, tdir: str, d: str, data: pa.Table, warehouse_uri: str, table: str) -> str:
    _recover(ops, tdir, d, writer=True)
    staging = ops.join(tdir, STAGING)
    stage = ops.join(staging, f"date={d}-{uuid.uuid4().hex}")
    ops.makedirs(stage)
    try:
        ops.write_parquet(ops.join(stage, f"part-{uuid.uuid4().hex}.parquet"), data)
    except BaseException:
        ops.rmtree(stage)
        raise
    target = ops.join(tdir, f"date={d}")
    for attempt in range(5):
        aside = None
        if ops.exists(target):
            aside = ops.join(staging, f"date={d}.old-{time.time_ns()}-{uuid.uuid4().hex[:8]}")
            _move_aside(ops, target, aside)
        try:
            _move_in(ops, stage, target)
        except Exception:
            if ops.exists(target) and attempt < 4:
                continue  # a reader restored the old copy in between: move it aside again
            _recover(ops, tdir, d)  # put the old copy back, drop our staging folder
            ops.rmtree(stage)
            raise
        if ops.local:
            _fsync_dir(tdir)
        if aside is not None:
            ops.rmtree(aside)
        break
    return partition_uri(warehouse_uri, table, d)


def _read_files(ops: _Ops, files: list[str], partition_base: str | None = None) -> pa.Table:
    kwargs: dict[str, Any] = {}
    if partition_base is not None:
        kwargs = {"partitioning": ds.partitioning(_PARTITION_SCHEMA, flavor="hive"),
                  "partition_base_dir": partition_base}
    dataset = ds.dataset(files, filesystem=ops.arrow_fs, format="parquet", **kwargs)
    schemas = [f.physical_schema for f in dataset.get_fragments()]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    if partition_base is not None:
        schema = schema.append(_PARTITION_SCHEMA.field("date"))
    return dataset.replace_schema(schema).to_table()


def _with_retry(fn):
    for attempt in range(3):
        try:
            return fn()
        except FileNotFoundError:  # a concurrent swap moved the files; the next listing is consistent
            if attempt == 2:
                raise
            time.sleep(0.05 * (attempt + 1))


def read_day_partition(warehouse_uri: str, table: str, day: date | str,
                       storage_options: dict | None = None) -> pa.Table | None:
    """The day's rows of `table` (without a `date` column), or None if the day was never written."""
    d = _day(day)
    ops, tdir = _locate(warehouse_uri, table, storage_options)
    _recover(ops, tdir, d)
    target = ops.join(tdir, f"date={d}")

    def read() -> pa.Table | None:
        files = ops.files(target)
        return _read_files(ops, files) if files else None

    return _with_retry(read)


def read_table(warehouse_uri: str, table: str, storage_options: dict | None = None) -> pa.Table | None:
    """All days of `table` with a `date` (date32) column from the partition folders; None if there are none."""
    ops, tdir = _locate(warehouse_uri, table, storage_options)
    days = set()
    for name in ops.listdir(ops.join(tdir, STAGING)):
        m = re.match(r"^date=(\d{4}-\d{2}-\d{2})\.old-", name)
        if m:
            days.add(m.group(1))
    for d in sorted(days):
        _recover(ops, tdir, d)

    def read() -> pa.Table | None:
        files: list[str] = []
        for name in ops.listdir(tdir):
            if re.match(r"^date=\d{4}-\d{2}-\d{2}$", name):
                files.extend(ops.files(ops.join(tdir, name)))
        return _read_files(ops, files, partition_base=tdir) if files else None

    return _with_retry(read)
