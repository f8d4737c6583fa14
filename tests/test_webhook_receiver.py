"""The receiver under attack, over loopback (issue 20): forged webhooks never become outcomes, it does not start
without fal's keys, it listens on 127.0.0.1 by default, and a body is never read past the cap."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx
import psutil
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sora_pipeline.generation.config import GenerationConfig
from sora_pipeline.generation.records import WorkItem
from sora_pipeline.generation.runner import GenerationRunner
from sora_pipeline.webhooks.receiver import WebhookConfig, WebhookServer
from sora_pipeline.ledger import Ledger, RequestState
from sora_pipeline.simulator.webhook_delivery import sign_headers, signing_key
from tests.webhook_helpers import (
    DAY,
    EP,
    IMAGE,
    chunked_post,
    client,
    free_port,
    get_ok,
    jwks_file,
    receiver_env,
    sim_key_config,
    until,
)


@pytest.fixture
def ledger(tmp_path):
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as lg:
        yield lg


STOLEN = "http://127.0.0.2:9/someone-elses.mp4"


def insecure_config() -> WebhookConfig:
    """A receiver that takes unsigned webhooks: only with the explicit test switch."""
    return WebhookConfig(insecure_test_mode=True)


def forged(request_id: str, status: str) -> dict:
    if status == "ERROR":
        return {"request_id": request_id, "status": "ERROR", "error": "Invalid status code: 500",
                "payload": {"detail": [{"type": "runner_disconnected"}]}}
    return {"request_id": request_id, "status": "OK", "error": None,
            "payload": {"video": {"url": STOLEN, "duration": 4.0, "width": 1280, "height": 720},
                        "video_id": "stolen"}}


def test_forged_webhooks_never_make_an_item_resubmittable(make_simulator, ledger, tmp_path):
    """A forged ERROR and a forged OK (unsigned, and a signed ERROR) for requests still running at fal: the next
    run resumes them (no second submit) and the forged URL is stored nowhere."""
    sim = make_simulator(run_latency=3600.0)  # still running for the whole test
    items = [WorkItem(item_id=f"x{i}", prompt=f"forged {i}", image_ref=IMAGE, resolution="720p",
                      aspect_ratio="16:9", duration=4, day=DAY) for i in range(3)]

    def run(owner: str):
        cfg = GenerationConfig(endpoint_id=EP, backend="simulator", queue_base_url=sim.base_url, owner=owner,
                               day=DAY, archive_root=str(tmp_path / "videos"), progress_interval=60,
                               total_timeout=0.5, webhook_wait=0.2, webhook_ledger_poll=0.05)
        return {o.item_id: o for o in GenerationRunner(cfg, lambda _profile: client(sim.base_url, hooks.url), ledger).run(items)}

    with WebhookServer(ledger, insecure_config()) as hooks, WebhookServer(ledger, sim_key_config(sim)) as signed:
        first = run("run-1")
        assert [first[i.item_id].status for i in items] == ["pending"] * 3 and sim.stats()["submits"] == 3
        rids = {o.item_id: ledger.get(o.request_key).request_id for o in first.values()}
        sim_key = signing_key(sim.config)
        with httpx.Client(trust_env=False) as c:
            answers = [c.post(hooks.url, json=forged(rids["x0"], "ERROR")),
                       c.post(hooks.url, json=forged(rids["x1"], "OK"))]
            body = json.dumps(forged(rids["x2"], "ERROR")).encode()  # signed, but still not proof enough
            answers.append(c.post(signed.url, content=body, headers=sign_headers(sim_key, rids["x2"], "u", body)))
        assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
        assert [a.json()["result"] for a in answers] == ["hint"] * 3
        for o in first.values():
            entry = ledger.get(o.request_key)
            assert entry.state == RequestState.SUBMITTED and entry.output is None  # a hint, not an outcome
        second = run("run-2")
    assert sim.stats()["submits"] == 3  # nothing was paid for twice
    assert all(o.decision == "resumed" and o.status == "pending" for o in second.values())
    for o in second.values():
        history = ledger.history(o.request_key)
        assert len(history) == 1 and history[0].state == RequestState.SUBMITTED
        assert STOLEN not in json.dumps([h.__dict__ for h in history], default=str)
        assert o.video_url is None


def test_receiver_refuses_to_start_without_keys(tmp_path, ledger):

    with pytest.raises(ValueError, match="JWKS"):
        WebhookServer(ledger, WebhookConfig()).start()
    env = receiver_env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "sora_pipeline.webhooks", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "SORA_WEBHOOK_JWKS_FILE" in lines[0] and "--insecure-test-mode" in lines[0]


def test_oversized_bodies_are_cut_at_the_cap(tmp_path):
    """A chunked POST far above the cap (and one declaring 1 GiB) is answered 413 after reading about the cap:
    the receiver's memory grows by a few MiB, not by the body."""


    port = free_port()
    env = receiver_env(tmp_path, SORA_WEBHOOK_JWKS_FILE=str(jwks_file(tmp_path, Ed25519PrivateKey.generate())),
                        SORA_WEBHOOK_MAX_BODY_BYTES=str(1 << 20))
    proc = subprocess.Popen([sys.executable, "-m", "sora_pipeline.webhooks", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        until(lambda: get_ok(base + "/healthz"), timeout=60)
        receiver = psutil.Process(proc.pid)
        baseline = receiver.memory_info().rss
        peak = [baseline]

        def sample() -> None:
            peak[0] = max(peak[0], receiver.memory_info().rss)

        body_size = 128 << 20
        status, sent = chunked_post(port, limit=body_size, on_chunk=sample)
        sample()
        assert " 413 " in status + " ", status
        growth = peak[0] - baseline
        assert growth < 16 << 20, f"receiver grew {growth / 2**20:.0f} MiB for a {body_size >> 20} MiB body"
        assert sent < body_size
        status, sent = chunked_post(port, limit=body_size, declare=1 << 30, on_chunk=sample)
        sample()
        assert " 413 " in status + " ", status
        assert peak[0] - baseline < 16 << 20 and sent < body_size
        assert httpx.get(base + "/stats", trust_env=False).json()["rejected_size"] == 2
    finally:
        proc.kill()
        proc.communicate(timeout=20)
def test_receiver_service_entry_point(tmp_path):
    """`python -m sora_pipeline.webhooks` with keys from a JWKS file: it listens on 127.0.0.1 by
    default; healthz, a refused unsigned call, SIGTERM."""

    key = Ed25519PrivateKey.generate()
    port = free_port()
    env = receiver_env(tmp_path, SORA_WEBHOOK_JWKS_FILE=str(jwks_file(tmp_path, key)))
    proc = subprocess.Popen([sys.executable, "-m", "sora_pipeline.webhooks", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        until(lambda: get_ok(base + "/healthz"), timeout=60)
        listening = {c.laddr.ip for c in psutil.Process(proc.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}, listening  # loopback unless --host says otherwise
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


def test_receiver_settings_fail_in_one_line(tmp_path, ledger):
    """Unusable key settings, and the test switch on a non-loopback address, are refused before anything listens."""
    from sora_pipeline.webhooks.signatures import WebhookKeyError

    bad = tmp_path / "bad.json"
    bad.write_text('{"keys": []}')
    cases = {"SORA_WEBHOOK_JWKS_FILE": str(tmp_path / "missing.json"), "SORA_WEBHOOK_PUBLIC_KEYS": "abc",
             "SORA_WEBHOOK_REQUIRE_SIGNATURE": "false", "SORA_WEBHOOK_MAX_BODY_BYTES": "lots"}
    for name, value in [*cases.items(), ("SORA_WEBHOOK_JWKS_FILE", str(bad))]:
        with pytest.raises(WebhookKeyError) as err:
            WebhookConfig.from_env({name: value})
        assert name in str(err.value) and "\n" not in str(err.value)
    assert WebhookConfig.from_env({"SORA_WEBHOOK_INSECURE_TEST_MODE": "1"}).insecure_test_mode
    with pytest.raises(WebhookKeyError, match="loopback only"):
        WebhookServer(ledger, insecure_config(), host="0.0.0.0").start()
    keyed = WebhookConfig.from_env({"SORA_WEBHOOK_JWKS_FILE": str(jwks_file(tmp_path, Ed25519PrivateKey.generate()))})
    assert keyed.verifies and not keyed.insecure_test_mode
    keyed.check("0.0.0.0")  # with fal's keys any address is allowed
