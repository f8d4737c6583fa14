"""File operations of the warehouse on one fsspec filesystem: the local disk (`os` calls, rename-published files)
or an object store (single-object PUTs, fresh listings). Nothing here knows about days or manifests."""

from __future__ import annotations

import os
import posixpath
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_local_fs(fs: Any) -> bool:
    """Whether an fsspec filesystem is the local disk (`file`/`local` protocol)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool({"file", "local"} & set(protocols))


@dataclass(frozen=True)
class Entry:
    """One file under a listed folder: its path relative to that folder (`/`-separated) and modification time
    (seconds since the epoch; None when the store does not say)."""

    rel: str
    mtime: float | None


def _mtime(info: dict) -> float | None:
    for key in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str) and value:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def open_store(uri: str, storage_options: dict | None = None) -> tuple[Store, str]:
    """The `Store` of `uri` and the path inside it. An object store gets its own fsspec client without a listings
    cache: the default client is shared by every thread of the process, and a listing another thread (another
    writer's garbage collection) received just before this writer's upload completed would otherwise be stored
    just after it, and s3fs would answer `info`/`copy` of the new file from it: FileNotFoundError."""
    options = dict(storage_options or {})
    fs, path = fsspec.core.url_to_fs(uri, **options)
    if not is_local_fs(fs) and getattr(getattr(fs, "dircache", None), "use_listings_cache", False):
        fs, path = fsspec.core.url_to_fs(uri, **{**options, "use_listings_cache": False})
    return Store(fs), path


class Store:
    """Paths inside one filesystem. Object-store listings are never served from fsspec's listings cache (give it
    a filesystem made by `open_store`: one that keeps none)."""

    def __init__(self, fs: Any):
        self.fs = fs
        self.local = is_local_fs(fs)
        self.arrow_fs = pafs.LocalFileSystem() if self.local else fs

    def join(self, *parts: str) -> str:
        return os.path.join(*parts) if self.local else posixpath.join(*parts)

    def split(self, path: str) -> tuple[str, str]:
        """(parent, name) of a path."""
        return os.path.split(path.rstrip(os.sep)) if self.local else posixpath.split(path.rstrip("/"))

    def uri(self, path: str) -> str:
        """What DuckDB and users open: the local path, or the URI with its protocol (`s3://bucket/key`)."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def refresh(self, *paths: str) -> None:
        """Forget cached listings of `paths` and their parents (another process may have written since: fsspec
        answers `info`/`open` of a file from a cached listing of its folder, and would not find a newer file).
        A no-op on filesystems from `open_store`; kept for a `Store` made on a shared client."""
        if not self.local:
            for path in paths:
                self.fs.invalidate_cache(path)

    def listdir(self, path: str) -> list[str]:
        if self.local:
            return sorted(os.listdir(path)) if os.path.isdir(path) else []
        self.refresh(path)
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)

    def tree(self, path: str) -> list[Entry]:
        """Every file under `path`, recursively (one paged LIST on object stores)."""
        if self.local:
            out = []
            for root, _dirs, names in os.walk(path):
                for name in names:
                    full = os.path.join(root, name)
                    try:
                        mtime = os.stat(full).st_mtime
                    except FileNotFoundError:
                        continue
                    out.append(Entry(os.path.relpath(full, path).replace(os.sep, "/"), mtime))
            return sorted(out, key=lambda e: e.rel)
        self.refresh(path)
        try:
            found = self.fs.find(path, detail=True)
        except FileNotFoundError:
            return []
        base = path.rstrip("/") + "/"
        return sorted((Entry(str(name)[len(base):], _mtime(info)) for name, info in found.items()
                       if str(name).startswith(base) and info.get("type", "file") == "file"), key=lambda e: e.rel)

    def cat(self, path: str) -> bytes | None:
        """A whole small file, or None if there is none."""
        try:
            if self.local:
                with open(path, "rb") as fh:
                    return fh.read()
            self.refresh(path)
            return self.fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def cat_many(self, paths: list[str]) -> dict[str, bytes]:
        """Several small files at once (concurrent GETs on object stores); missing ones are left out."""
        if self.local or len(paths) < 2:
            return {p: data for p in paths if (data := self.cat(p)) is not None}
        self.refresh(*paths)
        got = self.fs.cat(paths, on_error="omit")
        return {str(k): v for k, v in got.items() if isinstance(v, bytes)}

    def put_atomic(self, path: str, data: bytes) -> None:
        """Replace a small file in one step: a rename locally, a single PUT on object stores."""
        if not self.local:
            self.fs.pipe_file(path, data)
            return
        self._replace_local(path, lambda fh: fh.write(data), unique=True)

    def write_parquet(self, path: str, data: pa.Table) -> None:
        """Write a Parquet file that appears only once complete (hidden temp + rename locally; objects are
        published by the store when their upload completes)."""
        if not self.local:
            with self.fs.open(path, "wb") as fh:
                pq.write_table(data, fh)
            return
        self._replace_local(path, lambda fh: pq.write_table(data, fh))

    def _replace_local(self, path: str, write: Any, *, unique: bool = False) -> None:
        """Write a hidden temp file next to `path` (synced), rename it over `path`, sync the folder."""
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        suffix = f".{uuid.uuid4().hex}" if unique else ""
        tmp = os.path.join(folder, f".{os.path.basename(path)}{suffix}.tmp")
        try:
            with open(tmp, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            self.delete(tmp)
            raise
        fsync_dir(folder)

    def mirror(self, src: str, dst: str) -> None:
        """Make `dst` a copy of the (immutable) file `src`, replacing `dst` in one step: a server-side copy on
        object stores (one object replaced), a hard link (or a copy) renamed over `dst` locally."""
        if not self.local:
            self.fs.copy(src, dst)
            return
        folder = os.path.dirname(dst)
        tmp = os.path.join(folder, f".{os.path.basename(dst)}.{uuid.uuid4().hex}.tmp")
        try:
            try:
                os.link(src, tmp)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        except BaseException:
            self.delete(tmp)
            raise
        fsync_dir(folder)

    def delete(self, path: str) -> None:
        """Remove one file; a missing one is fine."""
        try:
            if self.local:
                os.unlink(path)
            else:
                self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    def rmtree(self, path: str) -> None:
        if self.local:
            shutil.rmtree(path, ignore_errors=True)
            return
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def move_tree(self, src: str, dst: str) -> None:
        """Move folder `src` to `dst` (a rename locally; file by file elsewhere). Used only to repair the old
        layout's interrupted swaps."""
        if self.local:
            os.rename(src, dst)
            return
        for f in self.fs.find(src):
            self.fs.mv(f, posixpath.join(dst, posixpath.relpath(f, src)))
        self.rmtree(src)


def fsync_dir(path: str) -> None:
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
