"""A day's manifest and the files it names: which files *are* a day, and which ones are garbage.

Layout of one day D of a table T under a warehouse W:

- `W/T/date=D/_manifest.json`: names the day's current version; replaced by a single PUT (a rename locally), so a
  reader that reads it sees the old day or the new one, whole. It also lists the versions it retired, and when;
- `W/T/date=D/data.parquet`: the current version's copy for plain readers (pandas, pyarrow, a `T/**/*.parquet`
  glob), replaced in one step right after the manifest (a server-side copy on object stores, a hard link
  locally): the table's folder holds one whole version of each day, never two;
- `W/_versions/T/date=D/part-v<ns>-<hex>.parquet`: the day's versions, each written once under a fresh name and
  never changed, outside the table's folder (pyarrow and pandas also skip a `_` folder).

Files no manifest names are ignored by readers: an upload in progress, a crashed writer's file, a retired version.
A day without a manifest is the old layout (every `*.parquet` in the folder except new-style names, or the
moved-aside copy of an interrupted old-style swap under `<table>/.staging/`).

`collect_garbage` deletes a retired file once it was retired `grace_s` ago (a reader that read the older manifest
just before the swap still finds its file meanwhile), and a file no manifest ever named once it is `orphan_age_s`
old (a writer refuses to publish a file older than half that, so a live writer's file is never collected).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field

from .files import Store

MANIFEST = "_manifest.json"
FORMAT = "sora-day-manifest/1"
STAGING = ".staging"  # the old layout's staging folder
GC_GRACE_S = 600.0  # a retired file stays readable this long after the swap
ORPHAN_AGE_S = 3600.0  # a file no manifest names is garbage once this old
DATA_RE = re.compile(r"^part-v\d{19}-[0-9a-f]{12}\.parquet$")
VERSIONS = "_versions"  # W/_versions/T/date=D/: the immutable versions (outside the table's folder)
MIRROR = "data.parquet"  # the current version's copy, for plain readers of `date=*/*.parquet`
DAY_DIR_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_ASIDE_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})\.old-(\d+)-")


def new_data_name() -> str:
    """A fresh, sortable data file name (`part-v<ns>-<12 hex>.parquet`), never reused."""
    return f"part-v{time.time_ns():019d}-{uuid.uuid4().hex[:12]}.parquet"


def is_legacy_data(name: str) -> bool:
    """A data file of the old layout: any visible `*.parquet` that is not a new-style data file nor the mirror."""
    return (name.endswith(".parquet") and not name.startswith((".", "_")) and not DATA_RE.match(name)
            and name != MIRROR)


def versions_root(store: Store, tdir: str) -> str:
    """`W/_versions/T` for the table folder `W/T`."""
    parent, table = store.split(tdir)
    return store.join(parent, VERSIONS, table)


def versions_dir(store: Store, tdir: str, day: str) -> str:
    return store.join(versions_root(store, tdir), f"date={day}")


@dataclass(frozen=True)
class Manifest:
    files: tuple[str, ...]  # current data files, names inside the day folder
    rows: int
    written_at: float  # seconds since the epoch (the writer's clock)
    retired: tuple[tuple[str, float], ...] = field(default=())  # (file, retired at)
    writer: str = ""

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "files": list(self.files), "rows": self.rows,
                           "written_at": self.written_at, "writer": self.writer,
                           "retired": [{"file": f, "at": at} for f, at in self.retired]}, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str = "") -> Manifest:
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            files = tuple(str(f) for f in doc["files"])
            if not files or any("/" in f or not DATA_RE.match(f) for f in files):
                raise ValueError(f"bad file names {files!r}")
            retired = tuple((str(r["file"]), float(r["at"])) for r in doc.get("retired", ()))
            return cls(files, int(doc.get("rows", -1)), float(doc.get("written_at", 0)), retired,
                       str(doc.get("writer", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable day manifest {where}: {exc}") from None


def read_manifest(store: Store, day_dir: str) -> Manifest | None:
    path = store.join(day_dir, MANIFEST)
    data = store.cat(path)
    return None if data is None else Manifest.from_json(data, path)


def legacy_files(store: Store, tdir: str, day: str, names: list[str] | None = None) -> list[str]:
    """The old layout's files of a day without a manifest; if the folder is empty, the newest moved-aside copy
    of an interrupted old-style swap (which is put back in place)."""
    day_dir = store.join(tdir, f"date={day}")
    names = store.listdir(day_dir) if names is None else names
    files = [store.join(day_dir, n) for n in names if is_legacy_data(n)]
    if files or MANIFEST in names:
        return files
    asides = sorted(((int(m.group(2)), n) for n in store.listdir(store.join(tdir, STAGING))
                     if (m := _ASIDE_RE.match(n)) and m.group(1) == day))
    if not asides:
        return []
    try:  # finish the old swap: the aside is the day's only complete copy
        if not store.listdir(day_dir):
            store.rmtree(day_dir)
        store.move_tree(store.join(tdir, STAGING, asides[-1][1]), day_dir)
    except OSError:
        pass  # someone else is on it
    return [store.join(day_dir, n) for n in store.listdir(day_dir) if is_legacy_data(n)]


def day_files(store: Store, tdir: str, day: str) -> list[str] | None:
    """The current data files of one day (store paths), or None if the day was never written."""
    day_dir = store.join(tdir, f"date={day}")
    store.refresh(day_dir)
    manifest = read_manifest(store, day_dir)
    vdir = versions_dir(store, tdir, day)
    files = [store.join(vdir, f) for f in manifest.files] if manifest else legacy_files(store, tdir, day)
    store.refresh(*files)
    return files or None


def table_files(store: Store, tdir: str) -> dict[str, list[str]]:
    """The current data files of every day of a table: one listing, then the manifests (fetched together)."""
    by_day: dict[str, list[str]] = {}
    for entry in store.tree(tdir):
        parts = entry.rel.split("/")
        if len(parts) == 2 and DAY_DIR_RE.match(parts[0]):
            by_day.setdefault(DAY_DIR_RE.match(parts[0]).group(1), []).append(parts[1])
        elif len(parts) >= 2 and parts[0] == STAGING and (m := _ASIDE_RE.match(parts[1])):
            by_day.setdefault(m.group(1), [])
    paths = {d: store.join(tdir, f"date={d}", MANIFEST) for d, names in by_day.items() if MANIFEST in names}
    manifests = store.cat_many(list(paths.values()))
    out: dict[str, list[str]] = {}
    for d in sorted(by_day):
        if d in paths:
            data = manifests.get(paths[d]) or store.cat(paths[d])
            if data is not None:
                vdir = versions_dir(store, tdir, d)
                out[d] = [store.join(vdir, f) for f in Manifest.from_json(data, paths[d]).files]
                continue
        files = legacy_files(store, tdir, d, by_day[d] or None)
        if files:
            out[d] = files
    store.refresh(*(f for files in out.values() for f in files))
    return out


def collect_garbage(store: Store, tdir: str, *, grace_s: float = GC_GRACE_S, orphan_age_s: float = ORPHAN_AGE_S,
                    now: float | None = None) -> list[str]:
    """Delete the table's files that no reader can need any more; returns their store paths.

    Per day with a manifest: files it retired more than `grace_s` ago; data files it neither names nor retired
    (a crashed writer's, or left by the old layout) and hidden temp files, once `orphan_age_s` old; the old
    layout's leftovers of that day under `.staging/`, once `orphan_age_s` old. Days without a manifest are left
    alone. Deleted files that a manifest still lists as retired are dropped from it by the day's next write."""
    now = time.time() if now is None else now
    days: dict[str, dict[str, tuple[str, float | None]]] = {}  # day → name → (path, mtime)
    staging: dict[str, list[tuple[str, float | None]]] = {}
    vroot = versions_root(store, tdir)
    for root, entry in [(tdir, e) for e in store.tree(tdir)] + [(vroot, e) for e in store.tree(vroot)]:
        parts = entry.rel.split("/")
        if len(parts) == 2 and (m := DAY_DIR_RE.match(parts[0])):
            days.setdefault(m.group(1), {})[parts[1]] = (store.join(root, *parts), entry.mtime)
        elif len(parts) >= 2 and parts[0] == STAGING and (m := re.match(r"^date=(\d{4}-\d{2}-\d{2})", parts[1])):
            staging.setdefault(m.group(1), []).append((store.join(tdir, *parts), entry.mtime))
    managed = {d: names for d, names in days.items() if MANIFEST in names}
    # a day whose only other file is its current one has nothing to collect: skip reading its manifest
    busy = {d: names for d, names in managed.items() if len(set(names) - {MIRROR}) > 2 or d in staging}
    paths = {d: store.join(tdir, f"date={d}", MANIFEST) for d in busy}
    manifests = store.cat_many(list(paths.values()))

    def old(mtime: float | None, age: float) -> bool:
        return mtime is not None and now - mtime >= age

    doomed: list[str] = []
    for d, names in busy.items():
        data = manifests.get(paths[d]) or store.cat(paths[d])
        if data is None:
            continue
        manifest = Manifest.from_json(data, paths[d])
        retired = dict(manifest.retired)
        for name, (path, mtime) in names.items():
            if name in (MANIFEST, MIRROR) or name in manifest.files:
                continue
            if name in retired:
                gone = now - retired[name] >= grace_s
            else:
                ours = DATA_RE.match(name) or is_legacy_data(name) or (name[:1] == "." and name.endswith(".tmp"))
                gone = bool(ours) and old(mtime, orphan_age_s)
            if gone:
                doomed.append(path)
        doomed.extend(p for p, mtime in staging.get(d, ()) if old(mtime, orphan_age_s))
    for path in doomed:
        store.delete(path)
    return doomed
