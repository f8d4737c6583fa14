"""Webhook mode end to end over loopback: simulator → receiver (`webhooks`) → ledger → waiter."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sora_pipeline.fal.models import ImageToVideoInput
from sora_pipeline.generation.config import GenerationConfig
from sora_pipeline.generation.records import WorkItem
from sora_pipeline.generation.runner import GenerationRunner
from sora_pipeline.ledger import (
    Decision,
    Ledger,
    RequestSpec,
    RequestState,
    ResubmitPolicy,
)
from sora_pipeline.simulator.webhook_delivery import sign_headers
from sora_pipeline.webhooks.signatures import (WebhookSignatureError, keys_from_jwks, parse_public_key,
                                                   verify_signature)
from sora_pipeline.webhooks.hints import WebhookEvent, find_attempt, record_webhook, wait_for_webhook
from sora_pipeline.webhooks.receiver import WebhookConfig, WebhookServer

from tests.webhook_helpers import DAY, EP, IMAGE, client, sim_key_config, spec, until


# ---------------------------------------------------------------- helpers
@pytest.fixture
def ledger(tmp_path):
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as lg:
        yield lg


async def submit_through_ledger(ledger: Ledger, base_url: str, webhook_url: str | None, s: RequestSpec,
                                *, record_delay: float = 0.0):
    """What the generation engine does: plan → claim → submit (with ?fal_webhook=) → persist the request id."""
    ledger.plan([s])
    decision, entry = ledger.claim(s.request_key, owner="run-1", policy=ResubmitPolicy())
    assert decision == Decision.SUBMIT
    async with client(base_url, webhook_url) as c:
        handle = await c.submit(ImageToVideoInput(prompt=s.prompt, image_url=IMAGE, resolution="720p",
                                                  aspect_ratio="16:9", duration=4))
    if record_delay:
        await asyncio.sleep(record_delay)
    ledger.mark_submitted(s.request_key, entry.attempt, request_id=handle.request_id,
                          status_url=handle.status_url, response_url=handle.response_url,
                          cancel_url=handle.cancel_url, submitted_at=datetime.now(UTC))
    return entry.attempt, handle


# ---------------------------------------------------------------- signatures
def test_signature_roundtrip_and_rejections():
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    body = b'{"request_id":"r1","status":"OK"}'
    headers = sign_headers(key, "r1", "user-7", body)
    lower = {k.lower(): v for k, v in headers.items()}
    hex_key, b64_key = parse_public_key(pub.hex()), parse_public_key(base64.urlsafe_b64encode(pub).decode())
    assert verify_signature([hex_key], lower, body) == "r1"
    assert verify_signature([parse_public_key(Ed25519PrivateKey.generate().public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw).hex()), b64_key], lower, body) == "r1"  # key rotation: any key matches
    jwks = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(pub).decode().rstrip("=")}]}
    assert verify_signature(keys_from_jwks(json.dumps(jwks)), lower, body) == "r1"
    with pytest.raises(WebhookSignatureError, match="does not verify"):
        verify_signature([hex_key], lower, body + b" ")  # tampered body
    with pytest.raises(WebhookSignatureError, match="does not verify"):
        verify_signature([hex_key], dict(lower, **{"x-fal-webhook-request-id": "r2"}), body)
    with pytest.raises(WebhookSignatureError, match="off"):
        verify_signature([hex_key], lower, body, now=time.time() + 3600)  # replay of an old delivery
    with pytest.raises(WebhookSignatureError, match="missing"):
        verify_signature([hex_key], {}, body)
    with pytest.raises(ValueError):
        parse_public_key("abc")


def test_webhooks_are_recorded_as_hints_only(ledger):
    with pytest.raises(ValueError):
        WebhookEvent.parse(b"[]")
    with pytest.raises(ValueError):
        WebhookEvent.parse(b'{"request_id": "x", "status": "DONE"}')
    s = spec("e1")
    ledger.plan([s])
    _, entry = ledger.claim(s.request_key, owner="o", policy=ResubmitPolicy())
    ledger.mark_submitted(s.request_key, entry.attempt, request_id="req-e1", status_url=None, response_url=None,
                          cancel_url=None)
    error = WebhookEvent(request_id="req-e1", status="ERROR", error="Invalid status code: 500",
                         payload={"detail": "runner went away", "error_type": "runner_disconnected"})
    assert record_webhook(ledger, error) == "hint"
    got = ledger.get(s.request_key)
    assert (got.state, got.error_type, got.retryable) == (RequestState.SUBMITTED, None, None)
    assert got.artifacts["webhook"]["status"] == "ERROR" and got.artifacts["webhook"]["signed"] is False
    assert record_webhook(ledger, error) == "duplicate"
    assert record_webhook(ledger, WebhookEvent(request_id="nope", status="OK")) == "unmatched"
    ok = WebhookEvent(request_id="req-e1", status="OK", payload={"video": {"url": "https://v/1.mp4"},
                                                                 "video_id": "v1"})
    assert record_webhook(ledger, ok, signed=True) == "hint"
    got = ledger.get(s.request_key)
    assert got.state == RequestState.SUBMITTED and got.output is None  # the URL in a webhook is never stored
    assert got.artifacts["webhook"]["status"] == "OK" and "https://v/1.mp4" not in json.dumps(got.artifacts)
    # once fal's own answer is recorded, webhooks change nothing
    ledger.mark_completed(s.request_key, entry.attempt, output={"video": {"url": "https://fal/r.mp4"},
                                                                "video_id": "r"}, completed_at=datetime.now(UTC))
    assert record_webhook(ledger, error) == "ignored"
    assert ledger.get(s.request_key).output["video_id"] == "r"
    assert find_attempt(ledger, "req-e1").attempt == entry.attempt


# ---------------------------------------------------------------- end to end over loopback
def test_webhook_end_to_end_no_polling(make_simulator, ledger):
    sim = make_simulator(run_latency=0.3)
    with WebhookServer(ledger, sim_key_config(sim)) as hooks:
        s = spec("a")

        async def flow():
            attempt, _ = await submit_through_ledger(ledger, sim.base_url, hooks.url, s)
            started = time.monotonic()
            entry = await wait_for_webhook(ledger, s.request_key, attempt, timeout=10, poll_ledger_every=0.05)
            return entry, time.monotonic() - started

        entry, waited = asyncio.run(flow())
        assert entry is not None and entry.state == RequestState.SUBMITTED and waited < 5
        assert entry.artifacts["webhook"]["status"] == "OK" and entry.artifacts["webhook"]["signed"] is True
        assert entry.output is None  # a hint: the runner fetches the result from fal
        until(lambda: sim.stats()["webhook_deliveries"]["delivered"] == 1)  # counted once our 200 reached it
        stats = sim.stats()
        assert stats["calls"]["status"] == 0 and stats["calls"]["result"] == 0  # nobody polled fal
        assert stats["webhooks"][0]["state"] == "delivered" and stats["webhooks"][0]["last_status"] == 200
        assert hooks.stats()["hint"] == 1 and hooks.stats().get("rejected_signature", 0) == 0


def test_invalid_signature_is_refused_then_polling_fallback(make_simulator, ledger):
    sim = make_simulator(run_latency=0.1, webhook_max_attempts=3, webhook_retry_base=0.02)
    wrong = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    with WebhookServer(ledger, WebhookConfig(public_keys=[parse_public_key(wrong)])) as hooks:
        s = spec("b")

        async def flow():
            attempt, handle = await submit_through_ledger(ledger, sim.base_url, hooks.url, s)
            entry = await wait_for_webhook(ledger, s.request_key, attempt, timeout=1.5, poll_ledger_every=0.05)
            assert entry is None  # refused webhooks never touch the ledger: fall back to polling
            async with client(sim.base_url, None) as c:
                await c.wait(handle, timeout=10)
                return await c.result(handle)

        output = asyncio.run(flow())
        assert output.video_id
        until(lambda: sim.stats()["webhook_deliveries"]["gave_up"] == 1)
        stats = sim.stats()["webhook_deliveries"]
        assert stats["attempts"] == 3 and stats["failed_attempts"] == 3 and stats["delivered"] == 0
        assert hooks.stats()["rejected_signature"] == 3
        assert ledger.get(s.request_key).state == RequestState.SUBMITTED
        # an unsigned POST is refused as well
        r = httpx.post(hooks.url, json={"request_id": "x", "status": "OK"}, trust_env=False)
        assert r.status_code == 401


def test_duplicate_deliveries_are_harmless(make_simulator, ledger):
    sim = make_simulator(run_latency=0.1, webhook_duplicate_probability=1.0)
    with WebhookServer(ledger, sim_key_config(sim)) as hooks:
        specs = [spec(f"d{i}") for i in range(3)]

        async def flow():
            attempts = [await submit_through_ledger(ledger, sim.base_url, hooks.url, s) for s in specs]
            return await asyncio.gather(*(wait_for_webhook(ledger, s.request_key, a, timeout=10,
                                                           poll_ledger_every=0.05)
                                          for s, (a, _) in zip(specs, attempts)))

        entries = asyncio.run(flow())
        assert all(e.artifacts["webhook"]["status"] == "OK" for e in entries)
        until(lambda: sim.stats()["webhook_deliveries"]["duplicates"] == 3)
        assert sim.stats()["webhook_deliveries"]["delivered"] == 3
        assert hooks.stats()["hint"] == 3 and hooks.stats()["duplicate"] == 3
        for s, e in zip(specs, entries):
            history = ledger.history(s.request_key)
            assert len(history) == 1 and history[0].state == RequestState.SUBMITTED
            assert ledger.get(s.request_key).artifacts == e.artifacts  # the duplicate changed nothing


def test_webhook_before_the_request_id_is_recorded_is_retried(make_simulator, ledger):
    sim = make_simulator(run_latency=0.0, webhook_retry_base=0.1)
    with WebhookServer(ledger, sim_key_config(sim)) as hooks:
        s = spec("race")

        async def flow():
            attempt, _ = await submit_through_ledger(ledger, sim.base_url, hooks.url, s, record_delay=0.6)
            return await wait_for_webhook(ledger, s.request_key, attempt, timeout=10, poll_ledger_every=0.05)

        entry = asyncio.run(flow())
        assert entry.artifacts["webhook"]["status"] == "OK"
        assert hooks.stats()["unmatched"] >= 1 and hooks.stats()["hint"] == 1
        until(lambda: sim.stats()["webhooks"][0]["state"] == "delivered")  # counted once our 200 reached it
        assert sim.stats()["webhooks"][0]["attempts"] >= 2


def test_error_webhook_is_only_a_hint(make_simulator, ledger):
    sim = make_simulator(run_latency=0.05)
    with WebhookServer(ledger, sim_key_config(sim)) as hooks:
        s = spec("f", prompt="a dog [simulate-failure]")

        async def flow():
            attempt, _ = await submit_through_ledger(ledger, sim.base_url, hooks.url, s)
            return await wait_for_webhook(ledger, s.request_key, attempt, timeout=10, poll_ledger_every=0.05)

        entry = asyncio.run(flow())
        assert entry.state == RequestState.SUBMITTED and entry.artifacts["webhook"]["status"] == "ERROR"
        assert entry.error_type is None and hooks.stats()["hint"] == 1  # the runner asks fal (next test)


def test_webhook_that_never_arrives_returns_none(make_simulator, ledger):
    sim = make_simulator(run_latency=0.05, webhook_drop_probability=1.0)
    with WebhookServer(ledger, sim_key_config(sim)) as hooks:
        s = spec("lost")

        async def flow():
            attempt, _ = await submit_through_ledger(ledger, sim.base_url, hooks.url, s)
            started = time.monotonic()
            entry = await wait_for_webhook(ledger, s.request_key, attempt, timeout=0.8, poll_ledger_every=0.1)
            return entry, time.monotonic() - started

        entry, waited = asyncio.run(flow())
        assert entry is None and 0.7 <= waited < 3
        until(lambda: sim.stats()["webhook_deliveries"]["dropped"] == 1)
        assert sim.stats()["webhook_deliveries"]["attempts"] == 0 and hooks.stats().get("received", 0) == 0
    # a stale attempt (the item was resubmitted meanwhile) also returns None
    assert asyncio.run(wait_for_webhook(ledger, s.request_key, 99, timeout=1)) is None


def test_simulator_only_calls_allowed_hosts(make_simulator):
    sim = make_simulator(run_latency=0.0)
    with httpx.Client(trust_env=False, headers={"Authorization": "Key k"}) as c:
        r = c.post(f"{sim.base_url}/{EP}", params={"fal_webhook": "http://192.0.2.1/hook"},
                   json={"prompt": "p", "image_url": IMAGE})
        assert r.status_code == 200
    until(lambda: sim.stats()["webhook_deliveries"]["refused"] == 1)
    assert sim.stats()["webhooks"][0]["state"] == "refused_host"


# ---------------------------------------------------------------- wiring into the generation engine
def test_generation_runner_in_webhook_mode(make_simulator, ledger, tmp_path):
    sim = make_simulator(run_latency=0.2, webhook_drop_probability=0.0)
    items = [WorkItem(item_id=f"w{i}", prompt=f"webhook item {i}" + (" [simulate-failure]" if i == 3 else ""),
                      image_ref=IMAGE, resolution="720p", aspect_ratio="16:9", duration=4, day=DAY)
             for i in range(4)]
    with WebhookServer(ledger, sim_key_config(sim)) as hooks:
        cfg = GenerationConfig(endpoint_id=EP, backend="simulator", queue_base_url=sim.base_url, owner="run-w",
                               day=DAY, archive_root=str(tmp_path / "videos"), progress_interval=60,
                               webhook_wait=10.0, webhook_ledger_poll=0.05)
        runner = GenerationRunner(cfg, lambda _profile: client(sim.base_url, hooks.url), ledger)
        outcomes = {o.item_id: o for o in runner.run(items)}
    assert [outcomes[f"w{i}"].status for i in range(3)] == ["completed"] * 3
    assert outcomes["w3"].status == "failed" and "simulated_model_error" in outcomes["w3"].error_message
    assert all(outcomes[f"w{i}"].sha256 and outcomes[f"w{i}"].file_size for i in range(3))
    stats = sim.stats()
    # each webhook is confirmed with fal: one status call and one result fetch per request, no polling loop
    assert stats["calls"]["status"] == 4 and 3 <= stats["calls"]["result"] <= 4 and stats["submits"] == 4
    assert stats["calls"]["file"] == 3  # videos are still downloaded, once each
    assert hooks.stats()["hint"] == 4
    assert ledger.get(outcomes["w3"].request_key).error_type == "simulated_model_error"  # fal's own answer


def test_generation_runner_falls_back_to_polling(make_simulator, ledger, tmp_path):
    sim = make_simulator(run_latency=0.1, webhook_drop_probability=1.0)
    items = [WorkItem(item_id="p0", prompt="lost webhook", image_ref=IMAGE, resolution="720p",
                      aspect_ratio="16:9", duration=4, day=DAY)]
    with WebhookServer(ledger, sim_key_config(sim)) as hooks:
        cfg = GenerationConfig(endpoint_id=EP, backend="simulator", queue_base_url=sim.base_url, owner="run-p",
                               day=DAY, progress_interval=60, webhook_wait=0.5, webhook_ledger_poll=0.05)
        runner = GenerationRunner(cfg, lambda _profile: client(sim.base_url, hooks.url), ledger)
        (outcome,) = runner.run(items)
    assert outcome.status == "completed"
    assert sim.stats()["calls"]["status"] >= 1 and sim.stats()["webhook_deliveries"]["dropped"] == 1
    assert ledger.get(outcome.request_key).state == RequestState.COMPLETED


def test_dagster_materialization_in_webhook_mode(make_simulator, tmp_path):
    from sora_pipeline.warehouse.tables import read_day_partition
    from tests.support.fixtures import DAY as PDAY
    from tests.support.fixtures import catalog_rows, make_project, materialize_day, resources

    sim = make_simulator(run_latency=0.2, webhook_drop_probability=0.0)
    project = make_project(tmp_path, catalog_rows(n=3))
    with Ledger.open(project["ledger_url"]) as shared, WebhookServer(shared, sim_key_config(sim)) as hooks:
        res = resources(sim.base_url, project, webhook_url=hooks.url, webhook_ledger_poll_seconds=0.05)
        assert materialize_day(res).success
    assert sim.stats()["calls"]["status"] == 3 and sim.stats()["submits"] == 3  # one confirmation each
    assert len(read_day_partition(project["warehouse_uri"], "video_metadata", PDAY)) == 3
