"""The catalog, warehouse, video archive and DuckDB views on `s3://`, through s3fs, against a real S3-compatible
server (moto's server mode) on 127.0.0.1: a whole day end to end, the manifest swap under a concurrent reader,
serialized writers of one day (named leases in the ledger, SQLite and PostgreSQL), garbage collection."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

try:
    import s3fs  # noqa: F401
    from moto import server as moto_server
except ImportError as exc:  # `make install` installs both; with CI set a missing one is a failure
    if os.environ.get("CI"):
        raise
    pytest.skip(f"{exc}: install sora_pipeline[test,s3] (moto[server], s3fs)", allow_module_level=True)

import fsspec  # noqa: E402

from sora_pipeline.analytics.query import connect  # noqa: E402
from tests.support.fixtures import CATALOG_SCHEMA, IMAGES  # noqa: E402
from sora_pipeline.defs.database_resource import LedgerDatabaseResource  # noqa: E402
from sora_pipeline.defs.warehouse_resource import WarehouseResource, write_lease_name  # noqa: E402
from sora_pipeline.ledger import Ledger  # noqa: E402
from sora_pipeline.coordination import LeaseLost  # noqa: E402
from sora_pipeline.media.probe import probe_video  # noqa: E402
from sora_pipeline.warehouse import tables  # noqa: E402
from sora_pipeline.warehouse.manifest import DATA_RE, MANIFEST, MIRROR, ORPHAN_AGE_S  # noqa: E402
from sora_pipeline.warehouse.schemas import Column, TableDef  # noqa: E402
from sora_pipeline.warehouse.files import Store  # noqa: E402
from sora_pipeline.warehouse.tables import (  # noqa: E402
    collect_table_garbage, current_files, read_day_partition, read_table, write_day_partition,
)
from tests.support.fixtures import DAY, catalog_rows, materialize_day, resources
from tests.pipeline_helpers import check_results, materialize_summary

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}  # dummies: nothing may reach AWS
VERSIONED = TableDef("video_metadata", "test rows tagged with their version", (
    Column("tag", pa.string(), "which write"), Column("i", pa.int64(), "row of that write"),
    Column("size", pa.int64(), "rows of that write")))


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on a free loopback port, dummy credentials in the environment; yields storage options."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
    finally:
        server.stop()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture
def s3(s3_server):
    """(s3fs filesystem, `s3://<fresh bucket>`, storage options)."""
    fs = fsspec.filesystem("s3", **s3_server)
    bucket = f"sora-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return fs, f"s3://{bucket}", dict(s3_server)


def _versioned(k: int) -> pa.Table:
    size = 1 + (k * 7) % 13
    return VERSIONED.from_rows([{"tag": f"v{k}", "i": i, "size": size} for i in range(size)])


def _whole(rows: list[dict]) -> str:
    """The one version a read saw; fails on nothing, a mix, or a partial version."""
    assert rows, "a reader saw no rows"
    tags = {r["tag"] for r in rows}
    assert len(tags) == 1, f"a reader saw a mix of versions: {sorted(tags)}"
    assert sorted(r["i"] for r in rows) == list(range(rows[0]["size"])), "a reader saw part of a version"
    return tags.pop()


def _names(fs, uri: str) -> list[str]:
    fs.invalidate_cache()
    return sorted(p.rsplit("/", 1)[-1] for p in fs.find(uri.removeprefix("s3://")))


# ---------------------------------------------------------------- (a) a whole day on s3://
def _write_inputs(fs, root: str) -> None:
    """Images and a 4-row catalog under `<root>/data/` on S3 (written with the test's own s3fs client)."""
    for name, (size, color) in IMAGES.items():
        buf = io.BytesIO()
        Image.new("RGB", size, color).save(buf, format="PNG")
        fs.pipe_file(f"{root}/data/images/{name}.png".removeprefix("s3://"), buf.getvalue())
    with fs.open(f"{root}/data/catalog/part-0.parquet".removeprefix("s3://"), "wb") as fh:
        pq.write_table(pa.Table.from_pylist(catalog_rows(), schema=CATALOG_SCHEMA), fh)


def test_a_whole_day_on_s3_then_duckdb_views(tmp_path, simulator, s3):
    fs, root, options = s3
    _write_inputs(fs, root)
    project = {"catalog_uri": f"{root}/data/catalog", "warehouse_uri": f"{root}/warehouse",
               "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}", "storage_options": options}
    res = resources(simulator.base_url, project)
    result = materialize_day(res)
    assert result.success
    # the money check may warn (an `auto` estimate is the dearest tier): tests/test_billing.py covers it
    assert all(v for k, v in check_results(result).items() if k != "fal_billing_matches_estimate"), \
        check_results(result)
    rows = read_day_partition(project["warehouse_uri"], "video_metadata", DAY, storage_options=options).to_pylist()
    assert sorted(r["item_id"] for r in rows) == ["it0", "it1", "it2", "it3"]
    for row in rows:  # the archived video is on S3, whole, and is what the row describes
        assert row["archive_uri"].startswith(f"{root}/warehouse/videos/date={DAY}/")
        with fsspec.open(row["archive_uri"], "rb", **options) as fh:
            data = fh.read()
        assert len(data) == row["file_size"]
        probe = probe_video(io.BytesIO(data))
        assert (probe.width, probe.height, probe.num_frames) == (row["width"], row["height"], row["num_frames"])
    for table in ("catalog_items", "generations", "failed_generations", "video_metadata", "rejected_items",
                  "generation_daily_stats"):
        assert MANIFEST in _names(fs, f"{root}/warehouse/{table}/date={DAY}"), table

    again = materialize_day(res)  # a second run rewrites every table of the day (the old files are kept a while)
    assert again.success
    assert sum(bool(DATA_RE.match(n)) for n in _names(fs, f"{root}/warehouse/_versions/video_metadata/date={DAY}")) == 2
    assert materialize_summary(res).success
    con = connect(project["warehouse_uri"], storage_options=options)
    assert con.execute("SELECT date::VARCHAR, count(*) FROM video_metadata GROUP BY 1").fetchall() == [(DAY, 4)]
    assert con.execute("SELECT count(*) FROM generations WHERE status = 'completed'").fetchone() == (4,)
    assert con.execute("SELECT completed FROM generation_summary WHERE scope = 'all'").fetchone() == (4,)
    assert con.execute("SELECT count(*) FROM generation_daily_stats").fetchone() == (1,)
    con.close()


# ---------------------------------------------------------------- (b) the swap, under a concurrent reader
@pytest.mark.parametrize("grace", [tables.GC_GRACE_S, 0.0])
def test_a_reader_sees_whole_versions_while_a_writer_rewrites_the_day(s3, grace):
    _fs, root, options = s3
    wh = f"{root}/warehouse"
    write_day_partition(wh, "video_metadata", DAY, _versioned(0), options)
    writes, reads, seen, errors = 15, [0], set(), []
    done = threading.Event()
    progress = threading.Condition()

    def reader() -> None:
        try:
            while True:
                finished = done.is_set()
                seen.add(_whole(read_day_partition(wh, "video_metadata", DAY, options).to_pylist()))
                _whole(read_table(wh, "video_metadata", options).to_pylist())
                if grace and reads[0] % 3 == 0:  # the DuckDB views: a snapshot, readable through the grace period
                    con = connect(wh, storage_options=options)
                    _whole([dict(zip(("tag", "i", "size"), r)) for r in
                            con.execute("SELECT tag, i, size FROM video_metadata").fetchall()])
                    con.close()
                with progress:
                    reads[0] += 1
                    progress.notify_all()
                if finished:
                    return
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            with progress:
                progress.notify_all()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for k in range(1, writes + 1):
            with progress:  # let the reader finish a read between two writes, so it sees many versions
                start = reads[0]
                progress.wait_for(lambda: reads[0] > start or errors, timeout=120)
            write_day_partition(wh, "video_metadata", DAY, _versioned(k), options, gc_grace_s=grace)
    finally:
        done.set()
        thread.join(timeout=300)
    assert not errors, errors[0]
    assert len(seen) >= writes // 2 and f"v{writes}" in seen, sorted(seen)
    assert _whole(read_day_partition(wh, "video_metadata", DAY, options).to_pylist()) == f"v{writes}"


def test_readers_see_another_process_write_despite_fsspecs_listing_cache(s3):
    """s3fs answers `info`/`open` from a cached listing of the folder: a reader that listed a day before another
    process rewrote it must still find the new file its manifest names."""
    fs, root, options = s3
    wh = f"{root}/warehouse"
    other = {**options, "skip_instance_cache": True}  # another process's client
    day_dir = f"{wh}/video_metadata/date={DAY}".removeprefix("s3://")
    with fs.open(f"{day_dir}/part-0.parquet", "wb") as fh:  # the old layout
        pq.write_table(_versioned(1), fh)
    assert _whole(read_day_partition(wh, "video_metadata", DAY, options).to_pylist()) == "v1"
    shared = fsspec.filesystem("s3", **options)
    assert [p.rsplit("/", 1)[-1] for p in shared.ls(day_dir)] == ["part-0.parquet"]  # now cached
    write_day_partition(wh, "video_metadata", DAY, _versioned(2), other)
    assert len(shared.ls(day_dir)) == 1  # the cache is stale...
    assert _whole(read_table(wh, "video_metadata", options).to_pylist()) == "v2"  # ...and no reader trusts it
    con = connect(wh, storage_options=options)
    assert {r[0] for r in con.execute("SELECT tag FROM video_metadata").fetchall()} == {"v2"}
    con.close()
    assert _whole(read_day_partition(wh, "video_metadata", DAY, options).to_pylist()) == "v2"


# ---------------------------------------------------------------- (c) writers of one day take turns
def test_a_second_writer_waits_for_the_first(tmp_path, s3, ledger_url):
    _fs, root, options = s3
    wh = WarehouseResource(warehouse_uri=f"{root}/warehouse", database=LedgerDatabaseResource(url=ledger_url),
                           storage_options=options)
    leases = wh.database.leases()
    name = write_lease_name(wh.table_uri("video_metadata"), DAY)
    attempts = []
    real_acquire = leases.acquire_lease

    def counting_acquire(lease_name, holder, **kw):  # the real call, counted
        ok = real_acquire(lease_name, holder, **kw)
        attempts.append((holder, ok))
        return ok

    leases.acquire_lease = counting_acquire
    try:
        with leases.hold_lease(name, lease_s=30) as first:
            second = threading.Thread(target=wh.write, args=(VERSIONED, DAY, _versioned(2)))
            second.start()
            deadline = time.monotonic() + 120
            while sum(1 for h, ok in attempts if h != first.holder and not ok) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert any(h != first.holder and not ok for h, ok in attempts), "the second writer never tried"
            # the first writer publishes its version while the second one waits
            write_day_partition(wh.warehouse_uri, "video_metadata", DAY, _versioned(1), options,
                                lock=contextlib.nullcontext(first))
            assert second.is_alive()
            assert _whole(read_day_partition(wh.warehouse_uri, "video_metadata", DAY, options).to_pylist()) == "v1"
        second.join(timeout=300)
        assert not second.is_alive()
    finally:
        del leases.acquire_lease
    assert _whole(read_day_partition(wh.warehouse_uri, "video_metadata", DAY, options).to_pylist()) == "v2"
    assert leases.lease_info(name) is None  # released


def test_concurrent_writers_never_overlap(s3, ledger_url, monkeypatch):
    _fs, root, options = s3
    resources_ = [WarehouseResource(warehouse_uri=f"{root}/warehouse", database=LedgerDatabaseResource(url=ledger_url),
                                    storage_options=options) for _ in range(3)]
    inside, most, lock = [0], [0], threading.Lock()
    real_write = tables._write

    def observed_write(*args, **kwargs):  # the real swap, with a count of writers inside it
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            return real_write(*args, **kwargs)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(tables, "_write", observed_write)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for k in range(4):
                resources_[n].write(VERSIONED, DAY, _versioned(10 * n + k))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[0]
    assert most[0] == 1  # one writer of the day at a time
    final = _whole(read_day_partition(f"{root}/warehouse", "video_metadata", DAY, options).to_pylist())
    assert final in {f"v{10 * n + 3}" for n in range(3)}  # the last write of one of them, whole


def test_a_writer_finds_its_new_version_despite_a_listing_another_writer_cached(s3, monkeypatch):
    """Writers in one process share one s3fs client and its listing cache. Another writer's garbage collection
    (run after it released the day) lists the versions folder: S3 answers just before this writer's upload
    completes, s3fs stores the answer just after (the upload had already cleared the cache). The writer holding
    the lease must still find its own new version (s3fs's copy to `data.parquet` looked it up in that listing:
    FileNotFoundError) and readers the current one."""
    _fs, root, options = s3
    wh = f"{root}/warehouse"
    write_day_partition(wh, "video_metadata", DAY, _versioned(1), options)
    other = fsspec.filesystem("s3", **options, skip_instance_cache=True)  # the other writer's LIST, not cached here
    real_write = Store.write_parquet
    stale: list[str] = []

    def upload_while_another_writer_lists(self, path, data):
        folder = path.rsplit("/", 1)[0]
        listing = other.ls(folder, detail=True, refresh=True)  # answered before the upload completes ...
        real_write(self, path, data)
        self.fs.dircache[folder] = listing  # ... stored by s3fs's `find` after it (what the shared client keeps)
        stale.append(folder)

    monkeypatch.setattr(Store, "write_parquet", upload_while_another_writer_lists)
    write_day_partition(wh, "video_metadata", DAY, _versioned(2), options)
    assert len(stale) == 1
    assert _whole(read_day_partition(wh, "video_metadata", DAY, options).to_pylist()) == "v2"
    mirror = f"{wh}/video_metadata/date={DAY}/{MIRROR}".removeprefix("s3://")
    assert _whole(pq.read_table(io.BytesIO(other.cat_file(mirror))).to_pylist()) == "v2"  # plain readers too
    write_day_partition(wh, "video_metadata", DAY, _versioned(3), options)  # the next writer of the day, too
    assert _whole(read_day_partition(wh, "video_metadata", DAY, options).to_pylist()) == "v3"


def test_a_crashed_holders_lease_runs_out_and_a_lost_lease_blocks_the_swap(s3, ledger_url):
    _fs, root, options = s3
    wh = WarehouseResource(warehouse_uri=f"{root}/warehouse", database=LedgerDatabaseResource(url=ledger_url),
                           storage_options=options)
    leases = wh.database.leases()
    name = write_lease_name(wh.table_uri("video_metadata"), DAY)
    assert leases.acquire_lease(name, "crashed-worker", lease_s=1.0)  # never renewed nor released
    wh.write(VERSIONED, DAY, _versioned(5))  # waits for the lease to run out, then takes it over
    assert _whole(read_day_partition(wh.warehouse_uri, "video_metadata", DAY, options).to_pylist()) == "v5"
    assert leases.lease_info(name) is None

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_holder = f"{os.uname().nodename}:{int(dead.stdout)}:00000000"  # a process of this host, gone
    assert leases.acquire_lease(name, dead_holder, lease_s=3600)
    with leases.hold_lease(name, wait_s=60) as taken:  # taken over at once, not in an hour
        assert leases.lease_info(name).holder == taken.holder

    with leases.hold_lease(name, lease_s=0.6) as held:  # renewed every 0.2 s ...
        later = datetime.now(timezone.utc) + timedelta(seconds=5)
        assert leases.acquire_lease(name, "intruder", lease_s=60, now=later)  # ... but taken over
        deadline = time.monotonic() + 120
        while held.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(LeaseLost):
            write_day_partition(wh.warehouse_uri, "video_metadata", DAY, _versioned(6), options,
                                lock=contextlib.nullcontext(held))
    assert _whole(read_day_partition(wh.warehouse_uri, "video_metadata", DAY, options).to_pylist()) == "v5"
    assert leases.lease_info(name).holder == "intruder"  # a lost lease is not released by its old holder


# ---------------------------------------------------------------- (d) garbage collection on S3
def test_garbage_collection_on_s3(s3, monkeypatch):
    fs, root, options = s3
    wh = f"{root}/warehouse"
    day_dir = f"{wh}/video_metadata/date={DAY}"
    for k in range(3):
        write_day_partition(wh, "video_metadata", DAY, _versioned(k), options)
    write_day_partition(wh, "video_metadata", "2026-11-21", _versioned(7), options)
    first = current_files(wh, "video_metadata", options)
    monkeypatch.setattr(tables, "_publish", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    monkeypatch.setattr(Store, "delete", lambda self, path: None)  # a killed writer leaves its upload behind
    with pytest.raises(KeyboardInterrupt):
        write_day_partition(wh, "video_metadata", DAY, _versioned(9), options)
    monkeypatch.undo()
    versions = f"{wh}/_versions/video_metadata/date={DAY}"
    assert sum(bool(DATA_RE.match(n)) for n in _names(fs, versions)) == 4  # 1 current, 2 retired, 1 orphan
    assert sorted(_names(fs, day_dir)) == sorted([MANIFEST, MIRROR])
    assert collect_table_garbage(wh, "video_metadata", options) == []  # all within their grace
    now = time.time()
    gone = collect_table_garbage(wh, "video_metadata", options, now=now + tables.GC_GRACE_S + 1)
    assert len(gone) == 2 and all(g.startswith(f"{versions}/part-v") for g in gone)
    gone = collect_table_garbage(wh, "video_metadata", options, now=now + ORPHAN_AGE_S + 1)
    assert len(gone) == 1  # the orphan, once old enough
    assert sorted(_names(fs, day_dir)) == sorted([MANIFEST, MIRROR])
    assert _names(fs, versions) == [first[DAY][0].rsplit("/", 1)[-1]]
    assert _whole(read_day_partition(wh, "video_metadata", DAY, options).to_pylist()) == "v2"
    assert current_files(wh, "video_metadata", options) == first


def test_the_catalog_reader_sees_a_file_another_process_added(s3):
    """A long-running reader (the sensor, the daemon) of an s3:// catalog finds a file added after its first read,
    although s3fs keeps the folder's listing for the life of the process."""
    from sora_pipeline.catalog import read_catalog_day

    fs, root, options = s3
    _write_inputs(fs, root)
    catalog = f"{root}/data/catalog"
    assert len(read_catalog_day(catalog, DAY, storage_options=options).valid) == 4
    other = fsspec.filesystem("s3", **options, skip_instance_cache=True)  # another process's client
    more = [dict(r, item_id=f"late-{r['item_id']}") for r in catalog_rows()]
    with other.open(f"{catalog}/part-1.parquet".removeprefix("s3://"), "wb") as fh:
        pq.write_table(pa.Table.from_pylist(more, schema=CATALOG_SCHEMA), fh)
    assert len(read_catalog_day(catalog, DAY, storage_options=options).valid) == 8
