"""Webhook mode end to end over loopback: simulator → receiver (`sora_pipeline.generation.webhooks`) → ledger → waiter."""

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

from sora_pipeline.generation.costs import PriceTable
from sora_pipeline.fal.client import AsyncFalQueueClient
from sora_pipeline.fal.models import ImageToVideoInput
from sora_pipeline.fal.protocol import PollPolicy, RetryPolicy
from sora_pipeline.generation import GenerationConfig, GenerationRunner, WorkItem
from sora_pipeline.ledger import (
    Decision,
    Ledger,
    RequestSpec,
    RequestState,
    ResubmitPolicy,
)
from sora_pipeline.simulator.webhook import sign_headers
from sora_pipeline.generation.webhooks import (
    WebhookConfig,
    WebhookEvent,
    WebhookServer,
    WebhookSignatureError,
    find_attempt,
    keys_from_jwks,
    parse_public_key,
    record_webhook,
    verify_signature,
    wait_for_webhook,
)
from tests.conftest import png_bytes

EP = "fal-ai/sora-2/image-to-video/pro"
DAY = "2026-11-20"
IMAGE = "data:image/png;base64," + base64.b64encode(png_bytes(64, 36)).decode()


# ---------------------------------------------------------------- helpers
@pytest.fixture
def ledger(tmp_path):
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as lg:
        yield lg


def spec(item_id: str, prompt: str | None = None) -> RequestSpec:
    import hashlib

    return RequestSpec.create(EP, item_id=item_id, day=DAY, prompt=prompt or f"prompt {item_id}",
                              resolution="720p", aspect_ratio="16:9", duration=4,
                              image_sha256=hashlib.sha256(IMAGE.encode()).hexdigest(), used_openai_key=False,
                              estimated_cost=1.2)


def client(base_url: str, webhook_url: str | None) -> AsyncFalQueueClient:
    return AsyncFalQueueClient(key="k", base_url=base_url, endpoint_id=EP, webhook_url=webhook_url,
                               retry=RetryPolicy(max_attempts=3, total_timeout=10),
                               poll=PollPolicy(interval=0.05, max_interval=0.2, backoff_after=5))


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


def until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def sim_key_config(sim) -> WebhookConfig:
    return WebhookConfig(public_keys=[parse_public_key(sim.webhook_public_key)])


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


def test_event_parsing_and_error_mapping(ledger):
    with pytest.raises(ValueError):
        WebhookEvent.parse(b"[]")
    with pytest.raises(ValueError):
        WebhookEvent.parse(b'{"request_id": "x", "status": "DONE"}')
    s = spec("e1")
    ledger.plan([s])
    _, entry = ledger.claim(s.request_key, owner="o", policy=ResubmitPolicy())
    ledger.mark_submitted(s.request_key, entry.attempt, request_id="req-e1", status_url=None, response_url=None,
                          cancel_url=None)
    infra = WebhookEvent(request_id="req-e1", status="ERROR", error="Invalid status code: 500",
                         payload={"detail": "runner went away", "error_type": "runner_disconnected"})
    assert record_webhook(ledger, infra) == "failed"
    got = ledger.get(s.request_key)
    assert (got.state, got.error_type, got.retryable) == (RequestState.FAILED, "runner_disconnected", True)
    assert record_webhook(ledger, infra) == "duplicate"
    policy = WebhookEvent(request_id="req-e1", status="ERROR", error="Invalid status code: 422",
                          payload={"detail": [{"loc": ["body", "prompt"], "msg": "flagged",
                                               "type": "content_policy_violation"}]})
    assert record_webhook(ledger, policy) == "failed"
    got = ledger.get(s.request_key)
    assert (got.error_type, got.retryable) == ("content_policy_violation", False)
    assert "flagged" in got.error_message
    assert record_webhook(ledger, WebhookEvent(request_id="nope", status="OK")) == "unmatched"
    # an OK webhook after a failure still records the paid result (a result is never lost) ...
    ok = WebhookEvent(request_id="req-e1", status="OK", payload={"video": {"url": "https://v/1.mp4", "width": 1920,
                                                                           "height": 1080, "duration": 4.0},
                                                                 "video_id": "v1"})
    assert record_webhook(ledger, ok, PriceTable()) == "completed"
    got = ledger.get(s.request_key)
    assert got.state == RequestState.COMPLETED and got.output["video_id"] == "v1"
    assert got.actual_cost == pytest.approx(0.5 * 4) and got.seconds_generated == 4.0
    # ... and no error overwrites it
    assert record_webhook(ledger, infra) == "ignored"
    assert record_webhook(ledger, ok) == "duplicate"
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
        assert entry is not None and entry.state == RequestState.COMPLETED
        assert entry.output["video"]["url"].startswith(sim.base_url) and entry.output["video_id"]
        assert entry.actual_cost == pytest.approx(0.3 * 4) and waited < 5
        stats = sim.stats()
        assert stats["calls"]["status"] == 0 and stats["calls"]["result"] == 0  # nobody polled fal
        assert stats["webhook_deliveries"]["delivered"] == 1
        assert stats["webhooks"][0]["state"] == "delivered" and stats["webhooks"][0]["last_status"] == 200
        assert hooks.stats()["completed"] == 1 and hooks.stats().get("rejected_signature", 0) == 0


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
        assert all(e.state == RequestState.COMPLETED for e in entries)
        until(lambda: sim.stats()["webhook_deliveries"]["duplicates"] == 3)
        assert sim.stats()["webhook_deliveries"]["delivered"] == 3
        assert hooks.stats()["completed"] == 3 and hooks.stats()["duplicate"] == 3
        for s, e in zip(specs, entries):
            history = ledger.history(s.request_key)
            assert len(history) == 1 and history[0].state == RequestState.COMPLETED
            assert ledger.get(s.request_key).completed_at == e.completed_at  # the duplicate changed nothing


def test_webhook_before_the_request_id_is_recorded_is_retried(make_simulator, ledger):
    sim = make_simulator(run_latency=0.0, webhook_retry_base=0.1)
    with WebhookServer(ledger, sim_key_config(sim)) as hooks:
        s = spec("race")

        async def flow():
            attempt, _ = await submit_through_ledger(ledger, sim.base_url, hooks.url, s, record_delay=0.6)
            return await wait_for_webhook(ledger, s.request_key, attempt, timeout=10, poll_ledger_every=0.05)

        entry = asyncio.run(flow())
        assert entry.state == RequestState.COMPLETED
        assert hooks.stats()["unmatched"] >= 1 and hooks.stats()["completed"] == 1
        info = sim.stats()["webhooks"][0]
        assert info["attempts"] >= 2 and info["state"] == "delivered"


def test_model_error_webhook_marks_failed(make_simulator, ledger):
    sim = make_simulator(run_latency=0.05)
    with WebhookServer(ledger, sim_key_config(sim)) as hooks:
        s = spec("f", prompt="a dog [simulate-failure]")

        async def flow():
            attempt, _ = await submit_through_ledger(ledger, sim.base_url, hooks.url, s)
            return await wait_for_webhook(ledger, s.request_key, attempt, timeout=10, poll_ledger_every=0.05)

        entry = asyncio.run(flow())
        assert entry.state == RequestState.FAILED and entry.error_type == "simulated_model_error"
        assert entry.retryable is False and hooks.stats()["failed"] == 1


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
        runner = GenerationRunner(cfg, lambda: client(sim.base_url, hooks.url), ledger)
        outcomes = {o.item_id: o for o in runner.run(items)}
    assert [outcomes[f"w{i}"].status for i in range(3)] == ["completed"] * 3
    assert outcomes["w3"].status == "failed" and "simulated_model_error" in outcomes["w3"].error_message
    assert all(outcomes[f"w{i}"].sha256 and outcomes[f"w{i}"].file_size for i in range(3))
    stats = sim.stats()
    assert stats["calls"]["status"] == 0 and stats["calls"]["result"] == 0 and stats["submits"] == 4
    assert stats["calls"]["file"] == 3  # videos are still downloaded, once each
    assert hooks.stats()["completed"] == 3 and hooks.stats()["failed"] == 1


def test_generation_runner_falls_back_to_polling(make_simulator, ledger, tmp_path):
    sim = make_simulator(run_latency=0.1, webhook_drop_probability=1.0)
    items = [WorkItem(item_id="p0", prompt="lost webhook", image_ref=IMAGE, resolution="720p",
                      aspect_ratio="16:9", duration=4, day=DAY)]
    with WebhookServer(ledger, sim_key_config(sim)) as hooks:
        cfg = GenerationConfig(endpoint_id=EP, backend="simulator", queue_base_url=sim.base_url, owner="run-p",
                               day=DAY, progress_interval=60, webhook_wait=0.5, webhook_ledger_poll=0.05)
        runner = GenerationRunner(cfg, lambda: client(sim.base_url, hooks.url), ledger)
        (outcome,) = runner.run(items)
    assert outcome.status == "completed"
    assert sim.stats()["calls"]["status"] >= 1 and sim.stats()["webhook_deliveries"]["dropped"] == 1
    assert ledger.get(outcome.request_key).state == RequestState.COMPLETED


def test_receiver_service_entry_point(tmp_path):
    """`python -m sora_pipeline.generation.webhooks` with keys from a JWKS file: healthz, a refused unsigned call, SIGTERM."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519",
                                          "x": base64.urlsafe_b64encode(pub).decode().rstrip("=")}]}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SORA_")}
    env.update(SORA_LEDGER_URL=f"sqlite:///{tmp_path / 'ledger.sqlite'}", SORA_WEBHOOK_JWKS_FILE=str(jwks))
    proc = subprocess.Popen([sys.executable, "-m", "sora_pipeline.generation.webhooks", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        until(lambda: _get_ok(base + "/healthz"), timeout=30)
        body = b'{"request_id": "r", "status": "OK", "payload": null}'
        assert httpx.post(base + "/fal/webhook", content=body, trust_env=False).status_code == 401
        signed = sign_headers(key, "r", "u", body)
        r = httpx.post(base + "/fal/webhook", content=body, headers=signed, trust_env=False)
        assert r.status_code == 409 and r.json()["result"] == "unmatched"  # valid signature, unknown request
        assert httpx.get(base + "/stats", trust_env=False).json()["rejected_signature"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "receiving fal webhooks" in out


def _get_ok(url: str) -> bool:
    try:
        return httpx.get(url, trust_env=False, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_dagster_materialization_in_webhook_mode(make_simulator, tmp_path):
    from sora_pipeline.warehouse.tables import read_day_partition
    from tests.pipeline_helpers import DAY as PDAY
    from tests.pipeline_helpers import (
        catalog_rows,
        make_project,
        materialize_day,
        resources,
    )

    sim = make_simulator(run_latency=0.2, webhook_drop_probability=0.0)
    project = make_project(tmp_path, catalog_rows(n=3))
    with Ledger(project["ledger_url"]) as shared, WebhookServer(shared, sim_key_config(sim)) as hooks:
        res = resources(sim.base_url, project, webhook_url=hooks.url, webhook_ledger_poll_seconds=0.05)
        assert materialize_day(res).success
    assert sim.stats()["calls"]["status"] == 0 and sim.stats()["submits"] == 3
    assert len(read_day_partition(project["warehouse_uri"], "video_metadata", PDAY)) == 3
