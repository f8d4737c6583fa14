"""Fault and hostile modes of the embedded fal queue simulator, over real HTTP on loopback: injected errors on
submit/status/result/cancel/file, failed requests, echoed keys, lying cancels, foreign URLs and request ids,
redirects, huge and endless bodies. The rest of the simulator: tests/test_simulator.py."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from tests.simulator_helpers import ENDPOINT, LANDSCAPE, client, running, submit, wait_done


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("sim-videos")


# -- faults ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,code", [("rate_limit", 429), ("unavailable", 503), ("server_error", 500)])
def test_submit_faults_before_recording(cache_dir, kind, code):
    with running(cache_dir, faults={kind: 1.0}, retry_after_seconds=0.2) as server, client() as c:
        r = submit(c, server.base_url)
        assert r.status_code == code and "detail" in r.json()
        if kind == "rate_limit":
            assert r.headers["retry-after"] == "0.2" and r.json() == {"detail": "Rate limited"}
        if kind == "server_error":
            assert r.headers["x-fal-error-type"] == "internal_server_error"
            assert r.json()["error_type"] == "internal_server_error"
        stats = server.stats()
        assert stats["submits"] == 0 and stats["calls"]["submit"] == 1 and stats["faults"] == {kind: 1}
        assert stats["in_queue"] + stats["in_progress"] + stats["completed"] == 0


def test_submit_drop_slow_malformed_are_recorded(cache_dir):
    with running(cache_dir, faults={"drop": 1.0}, run_latency=0.0) as server, client() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            submit(c, server.base_url, prompt="dropped")
        stats = server.stats()
        assert stats["submits"] == 1 and stats["faults"] == {"drop": 1}
        assert stats["submits_by_prompt"] == {"dropped": 1}
    with running(cache_dir, faults={"slow": 1.0}, slow_seconds=0.6, run_latency=0.0) as server, client() as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post(server.base_url + ENDPOINT, json={"prompt": "slow", "image_url": LANDSCAPE}, timeout=0.2)
        assert server.stats()["submits"] == 1 and server.stats()["faults"] == {"slow": 1}
        t0 = time.monotonic()
        r = submit(c, server.base_url, prompt="slow but patient")
        assert r.status_code == 200 and time.monotonic() - t0 >= 0.55
    with running(cache_dir, faults={"malformed": 1.0}) as server, client() as c:
        r = submit(c, server.base_url)
        assert r.status_code == 200 and r.text == "{not json"
        with pytest.raises(ValueError):
            r.json()
        assert server.stats()["submits"] == 1


def test_faults_on_status_result_cancel(cache_dir):
    with running(cache_dir, faults={"rate_limit": 1.0}, fault_calls=frozenset({"status", "cancel"}),
                 run_latency=0.0) as server, client() as c:
        sub = submit(c, server.base_url).json()
        assert c.get(sub["status_url"]).status_code == 429
        assert c.put(sub["cancel_url"]).status_code == 429
        assert server.stats()["faults"] == {"rate_limit": 2}
    with running(cache_dir, faults={"drop": 1.0}, fault_calls=frozenset({"status"})) as server, client() as c:
        sub = submit(c, server.base_url).json()
        with pytest.raises(httpx.RemoteProtocolError):
            c.get(sub["status_url"])
        assert server.stats()["calls"]["status"] == 1
    with running(cache_dir, faults={"malformed": 1.0, "server_error": 0.0},
                 fault_calls=frozenset({"result"})) as server, client() as c:
        sub = submit(c, server.base_url).json()
        assert c.get(sub["response_url"]).text == "{not json"
    with running(cache_dir, faults={"unavailable": 1.0}, fault_calls=frozenset({"file"}),
                 run_latency=0.0) as server, client() as c:
        sub = submit(c, server.base_url).json()
        wait_done(c, sub["status_url"])
        video = c.get(sub["response_url"]).json()["video"]
        assert c.get(video["url"]).status_code == 503
        assert server.stats()["calls"]["file"] == 1 and server.stats()["faults"] == {"unavailable": 1}


def test_result_404_once(cache_dir):
    with running(cache_dir, faults={"result_404_once": 1.0}, run_latency=0.0) as server, client() as c:
        sub = submit(c, server.base_url).json()
        wait_done(c, sub["status_url"])
        assert c.get(sub["response_url"]).status_code == 404
        assert c.get(sub["response_url"]).status_code == 200
        assert c.get(sub["response_url"]).status_code == 200
        assert server.stats()["faults"] == {"result_404_once": 1}


def test_request_error(cache_dir):
    with running(cache_dir, faults={"request_error": 1.0}, run_latency=0.0, seed=7) as server, client() as c:
        subs = [submit(c, server.base_url, prompt=f"p{i}").json() for i in range(10)]
        kinds = {}
        for sub in subs:
            _, body = wait_done(c, sub["status_url"])
            r = c.get(sub["response_url"])
            kinds[r.status_code] = r
            assert body["error_type"] in ("content_policy_violation", "runner_disconnected")
        assert set(kinds) == {422, 500}
        policy, disconnected = kinds[422], kinds[500]
        assert policy.headers["x-fal-retryable"] == "false"
        assert policy.json()["detail"][0]["type"] == "content_policy_violation"
        assert policy.json()["detail"][0]["loc"] == ["body", "prompt"]
        assert disconnected.headers["x-fal-retryable"] == "true"
        assert disconnected.json()["error_type"] == "runner_disconnected"
        assert disconnected.headers["x-fal-error-type"] == "runner_disconnected"
        stats = server.stats()
        assert stats["faults"] == {"request_error": 10} and stats["completed"] == 10 and stats["failed"] == 10


# -- hostile modes -------------------------------------------------------------------------------------------------

def test_echo_key_repeats_the_authorization_header(cache_dir):
    with running(cache_dir, faults={"echo_key": 1.0}) as server, client() as c:
        r = submit(c, server.base_url)
        assert r.status_code == 401 and r.json()["detail"] == "invalid key: Key test-key"
        assert server.stats()["submits"] == 0  # answered before anything is recorded
    with running(cache_dir, faults={"echo_key": 1.0}, fault_calls=frozenset({"status"})) as server, client() as c:
        sub = submit(c, server.base_url).json()
        r = c.get(sub["status_url"])
        assert r.status_code == 401 and "Key test-key" in r.json()["detail"]


def test_cancel_already_completed_leaves_the_job_running(cache_dir):
    with running(cache_dir, faults={"cancel_already_completed": 1.0}, run_latency=0.3) as server, client() as c:
        sub = submit(c, server.base_url).json()
        r = c.put(sub["cancel_url"])
        assert r.status_code == 400 and r.json() == {"status": "ALREADY_COMPLETED"}
        _, body = wait_done(c, sub["status_url"])
        assert "error" not in body
        assert c.get(sub["response_url"]).status_code == 200 and c.get(sub["response_url"]).status_code == 200
        assert server.stats()["cancels"] == 0 and server.stats()["faults"] == {"cancel_already_completed": 1}


def test_foreign_urls_bad_request_id_and_redirect(cache_dir):
    foreign = "http://127.0.0.1:9"
    with running(cache_dir, faults={"foreign_urls": 1.0}, foreign_base_url=foreign) as server, client() as c:
        sub = submit(c, server.base_url).json()
        assert all(sub[k].startswith(foreign + "/fal-ai/sora-2/requests/" + sub["request_id"])
                   for k in ("status_url", "response_url", "cancel_url"))
        own = f"{server.base_url}/fal-ai/sora-2/requests/{sub['request_id']}/status"
        assert c.get(own).json()["status_url"].startswith(foreign)  # status answers too
    with running(cache_dir, faults={"foreign_urls": 1.0}) as server, client() as c:
        assert submit(c, server.base_url).json()["status_url"].startswith(f"http://127.0.0.2:{server.port}/")
    with running(cache_dir, faults={"bad_request_id": 1.0}) as server, client() as c:
        sub = submit(c, server.base_url).json()
        assert sub["request_id"].startswith("../") and sub["request_id"][3:] in sub["status_url"]
        wait_done(c, sub["status_url"])  # recorded and runs
    with running(cache_dir, faults={"redirect": 1.0}, foreign_base_url=foreign,
                 fault_calls=frozenset({"submit"})) as server, client() as c:
        r = submit(c, server.base_url)
        assert r.status_code == 302 and r.headers["location"] == foreign + ENDPOINT
        assert server.stats()["submits"] == 0


@pytest.mark.parametrize("declare", [False, True])
def test_huge_and_endless_bodies(cache_dir, declare):
    size = 3 * 1024 * 1024 + 17
    faults = {"huge_json": 1.0, "huge_status_json": 1.0, "endless_video": 1.0}
    with running(cache_dir, faults=faults, hostile_bytes=size, hostile_declare_length=declare,
                 run_latency=0.0) as server, client() as c:
        sub = submit(c, server.base_url).json()
        status = c.get(sub["status_url"], params={"logs": 1})
        assert len(status.content) == size and status.json()["request_id"] == sub["request_id"]
        assert ("content-length" in status.headers) == declare
        while c.get(sub["status_url"]).status_code != 200:
            time.sleep(0.02)
        result = c.get(sub["response_url"])
        assert result.status_code == 200 and len(result.content) == size
        video = result.json()["video"]
        assert video["url"].endswith(".mp4") and len(video["file_name"]) > size - 1000
        file = c.get(video["url"])
        assert file.status_code == 200 and len(file.content) == size and file.headers["content-type"] == "video/mp4"
        assert server.stats()["hostile_bytes_sent"] >= 3 * size


def test_huge_stream_event(cache_dir):
    with running(cache_dir, faults={"huge_stream_event": 1.0}, hostile_bytes=1_000_000) as server, client() as c:
        sub = submit(c, server.base_url).json()
        with c.stream("GET", sub["status_url"] + "/stream") as r:
            body = r.read()
        first, _, rest = body.partition(b"\n\n")
        assert first.startswith(b"data: {") and rest.startswith(b"data: AAAA") and b"\n" not in rest
        assert len(rest) == 1_000_000 + len(b"data: ")
        assert c.get(sub["status_url"]).status_code in (200, 202)  # polling answers normally
        assert server.stats()["faults"] == {"huge_stream_event": 1}


def test_cli_help_lists_every_fault_kind():
    from sora_pipeline.simulator import FAULT_KINDS

    out = subprocess.run([sys.executable, "-m", "sora_pipeline.simulator", "--help"], check=True,
                         capture_output=True, text=True).stdout
    assert all(kind in out for kind in FAULT_KINDS) and "--foreign-base-url" in out and "--hostile-bytes" in out


# -- fal's platform API: billing faults and the lost submit answer ---------------------------------------------------

ADMIN = {"Authorization": "Key sim-admin-key-0123456789"}
PRO = ENDPOINT.strip("/")


def finish(server, bodies, c) -> list[str]:
    """Submit each body and wait until the simulator has completed them all; their request ids."""
    ids = [submit(c, server.base_url, **b).json()["request_id"] for b in bodies]
    deadline = time.monotonic() + 60
    while server.stats()["completed"] < len(ids):
        assert time.monotonic() < deadline, "jobs did not complete"
        time.sleep(0.05)
    return ids


def events(server, **params) -> list[dict]:
    answer = httpx.get(server.base_url + "/v1/models/billing-events", params=params, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    return answer.json()["billing_events"]


def history(server, c, **params) -> list[dict]:
    answer = c.get(server.base_url + "/v1/models/requests/by-endpoint",
                   params={"endpoint_id": PRO, "expand": "payloads", **params})
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]


def test_a_lost_submit_answer_still_runs_bills_and_is_in_the_history(cache_dir):
    """`drop` on submit is the lost answer: the job is recorded and runs; fal's records show it."""
    sent = {"prompt": "answer lost", "image_url": LANDSCAPE, "duration": 4}
    with running(cache_dir, faults={"drop": 1.0}, fault_calls={"submit"}, run_latency=0.0,
                 admin_keys=[ADMIN["Authorization"][4:]]) as server, client() as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.post(server.base_url + ENDPOINT, json=sent)
        deadline = time.monotonic() + 60
        while server.stats()["completed"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        [item] = history(server, c)
        assert item["json_input"] == sent and item["status_code"] == 200  # the body exactly as sent
        [event] = events(server)
        assert event["request_id"] == item["request_id"] and event["output_units"] == 4.0
        result = c.get(f"{server.base_url}/fal-ai/sora-2/requests/{item['request_id']}")
        assert result.headers["x-fal-billable-units"] == "4.0"
        assert result.headers["x-fal-request-id"] == item["request_id"]


def test_billing_lag_discount_outlier_and_foreign_requests(cache_dir):
    config = dict(run_latency=0.0, admin_keys=[ADMIN["Authorization"][4:]], billing_discount_percent=20,
                  billing_outlier=10, billing_outlier_job=2, billing_foreign_requests=3, seed=7)
    bodies = [{"prompt": f"job {i}", "duration": 4, "resolution": "720p"} for i in range(3)]
    with running(cache_dir, **config) as server, client() as c:
        ids = finish(server, bodies, c)
        got = {e["request_id"]: e for e in events(server)}
        foreign = sorted(set(got) - set(ids))
        assert len(foreign) == 3 and set(ids) <= set(got)
        for rid in ids:
            e = got[rid]
            units = 40.0 if rid == ids[1] else 4.0  # the second job is the outlier: billed 10× its seconds
            assert (e["output_units"], e["unit_price"], e["percent_discount"]) == (units, 0.3, 20)
            assert e["cost_subtotal"] == pytest.approx(units * 0.3)
            assert e["cost_total"] == pytest.approx(units * 0.3 * 0.8)
            assert e["cost_discount"] == pytest.approx(units * 0.3 * 0.2)
            assert e["cost_estimate_nano_usd"] == pytest.approx(e["cost_total"] * 1e9)
        outlier = c.get(f"{server.base_url}/fal-ai/sora-2/requests/{ids[1]}")
        assert outlier.headers["x-fal-billable-units"] == "4.0"  # the result tells the truth
        assert events(server, request_id=",".join(foreign[:2])) == [got[r] for r in sorted(
            foreign[:2], key=lambda r: (got[r]["timestamp"], r))]
        assert server.stats()["platform_calls"]["/v1/models/billing-events"] == 2
    with running(cache_dir, **config) as again:  # the foreign ids follow from the seed
        assert sorted(e["request_id"] for e in events(again)) == foreign
    with running(cache_dir, **{**config, "billing_lag_seconds": 3600}) as server, client() as c:
        ids = finish(server, bodies[:1], c)
        assert events(server) == []  # billed, but not shown yet
        assert [i["request_id"] for i in history(server, c)] == ids


def test_content_policy_failures_are_billed_and_others_not(cache_dir):
    with running(cache_dir, faults={"request_error": 1.0}, run_latency=0.0, seed=3,
                 admin_keys=[ADMIN["Authorization"][4:]]) as server, client() as c:
        ids = finish(server, [{"prompt": f"refused {i}"} for i in range(6)], c)
        items = {i["request_id"]: i for i in history(server, c)}
        policy = [r for r in ids if items[r]["status_code"] == 422]
        other = [r for r in ids if items[r]["status_code"] == 500]
        assert policy and other and len(policy) + len(other) == 6
        assert {e["request_id"] for e in events(server)} == set(policy)
        assert {i["request_id"] for i in history(server, c, status="user_error")} == set(policy)
        assert {i["request_id"] for i in history(server, c, status="error")} == set(other)
        assert c.get(f"{server.base_url}/fal-ai/sora-2/requests/{policy[0]}").headers["x-fal-billable-units"]
        assert "x-fal-billable-units" not in c.get(f"{server.base_url}/fal-ai/sora-2/requests/{other[0]}").headers


def test_platform_routes_take_faults_only_when_asked(cache_dir):
    with running(cache_dir, faults={"unavailable": 1.0}, fault_calls={"platform"}) as server, client() as c:
        assert c.get(server.base_url + "/v1/models", params={"endpoint_id": PRO}).status_code == 503
        assert c.get(server.base_url + "/v1/models/pricing", params={"endpoint_id": PRO}).status_code == 503
        assert submit(c, server.base_url).status_code == 200
        assert c.get(server.base_url + "/_simulator/stats").json()["platform_calls"] == {
            "/v1/models": 1, "/v1/models/pricing": 1}
    with running(cache_dir, faults={"unavailable": 1.0}) as server, client() as c:  # default: queue calls only
        assert c.get(server.base_url + "/v1/models", params={"endpoint_id": PRO}).status_code == 200
