"""Ledger basics: request keys and specs, schema and setup; and the fixtures and helpers the other ledger tests
(test_ledger_claims.py, test_ledger_rules.py, test_ledger_concurrency.py, test_group_commit.py) import from here.
Real SQLite files and a throwaway PostgreSQL database (skipped when the server is unreachable)."""

from __future__ import annotations

import inspect
import os
import uuid
from datetime import datetime, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from sora_pipeline.coordination import default_ledger_url
from sora_pipeline.coordination.schema import LATEST_VERSION
from sora_pipeline.ledger import Decision, Ledger, RequestSpec, RequestState, ResubmitPolicy, request_key

EP = "fal-ai/sora-2/image-to-video/pro"
SHA = "ab" * 32
DAY = "2026-01-02"
POLICY = ResubmitPolicy()
S = RequestState


# ---------------------------------------------------------------- fixtures / helpers
@pytest.fixture(scope="session")
def pg_url(pg_admin):
    """A throwaway database on conftest's `pg_admin` (skipped without PostgreSQL, a failure when CI is set)."""
    engine, admin_url = pg_admin
    name = f"sora_ledger_test_{uuid.uuid4().hex[:12]}"
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fresh_pg(pg_url: str) -> str:
    with Ledger.open(pg_url) as lg, lg._engine.begin() as conn:
        conn.execute(text("DELETE FROM attempts"))
        conn.execute(text("DELETE FROM requests"))
    return pg_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    return _fresh_pg(request.getfixturevalue("pg_url"))


@pytest.fixture
def ledger(db_url):
    with Ledger.open(db_url) as lg:
        yield lg


def spec(i: int | str = 0, *, cost: float = 2.0, day: str = DAY, **over) -> RequestSpec:
    fields = dict(item_id=f"item-{i}", day=day, prompt=f"a cat number {i}", resolution="1080p",
                  aspect_ratio="16:9", duration=4, image_sha256=SHA, used_openai_key=False, estimated_cost=cost)
    fields.update(over)
    return RequestSpec.create(EP, **fields)


def planned(lg: Ledger, i: int | str = 0, **kw) -> str:
    s = spec(i, **kw)
    lg.plan([s])
    return s.request_key


def submit(lg: Ledger, key: str, owner: str = "run-1", policy: ResubmitPolicy = POLICY, **kw) -> int:
    decision, entry = lg.claim(key, owner=owner, policy=policy, **kw)
    assert decision is Decision.SUBMIT, decision
    return entry.attempt


def submitted(lg: Ledger, key: str, attempt: int, rid: str = "rid-1") -> None:
    lg.mark_submitted(key, attempt, request_id=rid, status_url=f"https://q/{rid}/status",
                      response_url=f"https://q/{rid}", cancel_url=f"https://q/{rid}/cancel",
                      submitted_at=datetime.now(timezone.utc))


# ---------------------------------------------------------------- request_key
KEY_ARGS = dict(item_id="a", prompt="hello", resolution="720p", aspect_ratio="16:9", duration=8, image_sha256=SHA)


def test_request_key_deterministic_and_normalized():
    k = request_key(EP, **KEY_ARGS)
    assert len(k) == 64 and int(k, 16) >= 0
    assert k == request_key(EP, **KEY_ARGS)
    assert k == request_key(EP, **dict(reversed(list(KEY_ARGS.items()))))  # kwarg order does not matter
    from sora_pipeline.fal.models import AspectRatio, Duration, Resolution
    assert k == request_key(EP, **KEY_ARGS | dict(prompt="  hello\n", resolution=Resolution.P720,
                                                   aspect_ratio=AspectRatio.LANDSCAPE, duration=Duration.S8,
                                                   image_sha256=SHA.upper()))
    assert k == request_key(EP, **KEY_ARGS | dict(duration="8"))


@pytest.mark.parametrize("field,value", [
    ("item_id", "b"), ("prompt", "hello!"), ("resolution", "1080p"), ("aspect_ratio", "9:16"), ("duration", 12),
    ("image_sha256", "cd" * 32),
])
def test_request_key_changes_with_every_field(field, value):
    assert request_key(EP, **KEY_ARGS) != request_key(EP, **KEY_ARGS | {field: value})
    assert request_key(EP, **KEY_ARGS) != request_key(EP + "x", **KEY_ARGS)


def test_request_key_never_takes_a_secret(tmp_path):
    params = inspect.signature(request_key).parameters
    assert not any("key" in p and p != "endpoint_id" for p in params) and "api_key" not in params
    with pytest.raises(TypeError):
        request_key(EP, **KEY_ARGS, api_key="sk-secret")  # type: ignore[call-arg]
    s = spec(0, used_openai_key=True)
    assert s.spec_json()["used_openai_key"] is True and "api_key" not in s.spec_json()
    assert s.request_key == spec(0, used_openai_key=False).request_key  # same video either way
    with Ledger.open(f"sqlite:///{tmp_path / 'l.sqlite'}") as lg:
        lg.plan([s])
        assert "sk-" not in repr(lg.get(s.request_key))


@pytest.mark.parametrize("bad", [dict(prompt="  "), dict(resolution="4k"), dict(duration=5),
                                 dict(image_sha256="xyz"), dict(aspect_ratio="1:1")])
def test_request_key_validates(bad):
    with pytest.raises(ValueError):
        request_key(EP, **KEY_ARGS | bad)


def test_plan_refuses_mismatched_key(ledger):
    s = spec(0)
    forged = RequestSpec(**{**s.__dict__, "prompt": "another prompt"})
    with pytest.raises(ValueError, match="does not match"):
        ledger.plan([forged])


# ---------------------------------------------------------------- schema / setup
def test_schema_versioned_and_idempotent(db_url):
    with Ledger.open(db_url) as a, Ledger.open(db_url) as b:
        assert a.schema_version == b.schema_version == LATEST_VERSION
        with a._engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar() == LATEST_VERSION


def test_sqlite_uses_wal(tmp_path):
    with Ledger.open(f"sqlite:///{tmp_path / 'w.sqlite'}") as lg, lg._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar().lower() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_repr_hides_password(pg_url):
    url = make_url(pg_url).set(password="hunter2").render_as_string(hide_password=False)
    with Ledger.open(url) as lg:
        assert "hunter2" not in repr(lg) and "***" in repr(lg)


def test_default_ledger_url(tmp_path):
    wh = tmp_path / "wh"
    url = default_ledger_url(str(wh), None)
    assert url == f"sqlite:///{wh.resolve()}/_ledger/ledger.sqlite" and (wh / "_ledger").is_dir()
    assert default_ledger_url(wh.resolve().as_uri(), "/nowhere") == url
    home = tmp_path / "dh"
    assert default_ledger_url("s3://bucket/wh", str(home)) == f"sqlite:///{home.resolve()}/sora_ledger.sqlite"
    assert home.is_dir()
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert default_ledger_url("gs://b/wh", None) == f"sqlite:///{tmp_path.resolve()}/sora_ledger.sqlite"
    finally:
        os.chdir(cwd)


# ---------------------------------------------------------------- a SQLite file deleted or replaced underneath
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_sqlite_ledger_whose_file_goes_away_refuses_every_transaction(tmp_path, how):
    from sora_pipeline.coordination import LedgerFileGone

    path = tmp_path / "ledger.sqlite"
    ledger = Ledger.open(f"sqlite:///{path}")
    one = RequestSpec.create(EP, item_id="g0", day=DAY, prompt="p", resolution="720p", aspect_ratio="16:9",
                             duration=4, image_sha256=SHA, used_openai_key=False, estimated_cost=1.0)
    ledger.plan([one])
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"ledger.sqlite{suffix}").unlink(missing_ok=True)
    if how == "replaced":
        Ledger.open(f"sqlite:///{path}").close()  # an empty ledger in its place
    with pytest.raises(LedgerFileGone, match=f"ledger file {path} was {how}") as err:
        ledger.claim(one.request_key, owner="o", policy=POLICY)
    (saved,) = tmp_path.glob("ledger.sqlite.saved-*")
    assert str(saved) in str(err.value)
    with pytest.raises(LedgerFileGone):  # and it stays refused
        ledger.entries_for_day(DAY)
    ledger.close()
    with Ledger.open(f"sqlite:///{saved}") as copy:  # the copy holds what the lost file held
        assert [e.item_id for e in copy.entries_for_day(DAY)] == ["g0"]


def test_recover_day_puts_back_what_the_warehouse_records_and_leaves_known_requests(tmp_path):
    from sora_pipeline.ledger import recover_day

    ledger = Ledger.open(f"sqlite:///{tmp_path / 'new.sqlite'}")
    base = dict(endpoint_id=EP, backend="simulator", resolution="720p", aspect_ratio="16:9", requested_duration=4,
                estimated_cost=1.2, used_openai_key=False)
    rows = [
        dict(base, item_id="a", request_key="k" * 64, attempt=1, status="completed", request_id="rid-a",
             api_json='{"url": "http://127.0.0.1/a.mp4", "content_type": "video/mp4"}', video_id="v-a",
             archive_uri="/w/videos/a.mp4", sha256="00" * 32, file_size=10, probe_json='{"width": 1}'),
        dict(base, item_id="b", request_key="j" * 64, attempt=2, status="pending", request_id="rid-b"),
        dict(base, item_id="c", request_key="u" * 64, attempt=1, status="unknown", request_id=None),
        dict(base, item_id="d", request_key="s" * 64, attempt=0, status="skipped", request_id=None),
    ]
    assert recover_day(ledger, DAY, rows, queue_base_url="http://127.0.0.1:9") == 3
    got = {e.item_id: e for e in ledger.entries_for_day(DAY)}
    assert {k: (e.state, e.attempt) for k, e in got.items()} == {
        "a": (S.COMPLETED, 1), "b": (S.SUBMITTED, 2), "c": (S.UNKNOWN, 1)}
    assert got["a"].output["video"]["url"] == "http://127.0.0.1/a.mp4" and got["a"].artifacts["probe"] == {"width": 1}
    assert got["b"].request_id == "rid-b" and got["b"].status_url.startswith("http://127.0.0.1:9/")
    decision, _ = ledger.claim("k" * 64, owner="o", policy=POLICY)
    assert decision == Decision.REUSE
    assert recover_day(ledger, DAY, rows) == 0  # known now: the ledger is the record
    ledger.close()
