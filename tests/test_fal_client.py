"""The fal queue client against the real simulator over loopback, plus pinpoint faults via mock transports."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from sora_pipeline.fal import (
    AmbiguousSubmitError,
    AsyncFalQueueClient,
    AuthenticationError,
    FalQueueClient,
    ImageToVideoInput,
    InputValidationError,
    PollPolicy,
    RateLimitedError,
    RequestFailedError,
    ResultGoneError,
    RetryPolicy,
    TransientError,
    WaitTimeoutError,
)
from sora_pipeline.fal.inputs import ImageInputError, load_image_input
from tests.conftest import png_bytes

FAST = dict(poll=PollPolicy(interval=0.05), retry=RetryPolicy(max_attempts=5, initial_delay=0.01, max_delay=0.2))
SECRET = "fal-secret-key-123456"
OPENAI = "sk-openai-secret-987654"


def client_for(sim, **kw) -> FalQueueClient:
    return FalQueueClient(key=kw.pop("key", SECRET), base_url=sim.base_url, **{**FAST, **kw})


def args(uri, **kw):
    return {"prompt": "a lighthouse at dawn", "image_url": uri, **kw}


def test_subscribe_end_to_end_with_logs_and_urls(simulator, png_data_uri):
    seen = []
    with client_for(simulator) as client:
        handle = client.submit(args(png_data_uri, resolution="720p", aspect_ratio="16:9"))
        assert handle.status_url.endswith(f"/fal-ai/sora-2/requests/{handle.request_id}/status")
        assert handle.cancel_url.endswith("/cancel") and handle.response_url.startswith(simulator.base_url)
        status = client.wait(handle, on_status=lambda h, s: seen.append(s))
        output = client.result(handle)
    assert status.done and seen[-1].status == "COMPLETED"
    assert any(s.logs for s in seen), "status answers carry logs"
    assert output.video.url.endswith(".mp4") and output.video_id
    assert (output.video.width, output.video.height) == (1280, 720)


def test_async_client_runs_many_requests_concurrently(make_simulator, png_data_uri):
    import asyncio

    sim = make_simulator(run_latency=0.5)

    async def main():
        async with AsyncFalQueueClient(key=SECRET, base_url=sim.base_url, **FAST) as client:
            return await asyncio.gather(*(client.subscribe(args(png_data_uri, prompt=f"p{i}")) for i in range(10)))

    started = time.monotonic()
    outputs = asyncio.run(main())
    assert len({o.video_id for o in outputs}) == 10
    assert time.monotonic() - started < 5 * 0.5 * 10 / 10 + 3  # concurrent, not 10 × latency
    assert sim.stats()["submits"] == 10


def test_queue_position_reported_when_account_is_saturated(make_simulator, png_data_uri):
    sim = make_simulator(run_latency=1.0, max_running=1)
    with client_for(sim) as client:
        handles = [client.submit(args(png_data_uri, prompt=f"q{i}")) for i in range(3)]
        positions = [client.status(h).queue_position for h in handles[1:]]
    assert positions == [0, 1]


def test_invalid_input_rejected_before_any_http_call():
    calls = []
    transport = httpx.MockTransport(lambda r: calls.append(r) or httpx.Response(200, json={}))
    with FalQueueClient(key=SECRET, transport=transport, **FAST) as client:
        with pytest.raises(InputValidationError) as err:
            client.submit({"prompt": "x", "image_url": "https://x/y.png", "duration": 5})
        assert "duration" in str(err.value) and err.value.fields == ["duration"]
        with pytest.raises(InputValidationError, match="prompt"):
            client.submit({"prompt": "  ", "image_url": "https://x/y.png"})
        with pytest.raises(InputValidationError, match="image_url"):
            client.submit({"prompt": "x"})
    assert calls == []


def test_server_422_detail_list_maps_to_input_validation(png_data_uri):
    detail = [{"loc": ["body", "image_url"], "msg": "could not load image", "type": "image_load_error"}]
    transport = httpx.MockTransport(lambda r: httpx.Response(422, json={"detail": detail}))
    with FalQueueClient(key=SECRET, transport=transport, **FAST) as client:
        with pytest.raises(InputValidationError) as err:
            client.submit(args(png_data_uri))
    assert err.value.fields == ["body.image_url"] and "could not load image" in str(err.value)


def test_wrong_key_is_an_authentication_error_without_the_key(make_simulator, png_data_uri):
    sim = make_simulator(accepted_keys=["the-right-key"])
    with client_for(sim) as client, pytest.raises(AuthenticationError) as err:
        client.submit(args(png_data_uri))
    assert err.value.status_code == 403 and SECRET not in str(err.value) and SECRET not in repr(err.value)


def test_rate_limit_honours_retry_after_then_succeeds():
    answers = iter([httpx.Response(429, headers={"Retry-After": "0.3"}, json={"detail": "slow down"}),
                    httpx.Response(200, json={"request_id": "r1", "status_url": "https://q/s",
                                              "response_url": "https://q/r", "cancel_url": "https://q/c"})])
    times = []
    transport = httpx.MockTransport(lambda r: times.append(time.monotonic()) or next(answers))
    with FalQueueClient(key=SECRET, transport=transport, **FAST) as client:
        handle = client.submit(args("https://example.com/a.png"))
    assert handle.request_id == "r1" and len(times) == 2 and times[1] - times[0] >= 0.29


def test_rate_limit_exhausted_is_typed():
    transport = httpx.MockTransport(lambda r: httpx.Response(429, headers={"Retry-After": "0"}))
    with FalQueueClient(key=SECRET, transport=transport, **FAST) as client:
        with pytest.raises(RateLimitedError) as err:
            client.submit(args("https://example.com/a.png"))
    assert err.value.retryable


@pytest.mark.parametrize("fault", [
    lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("no answer", request=r)),
    lambda r: (_ for _ in ()).throw(httpx.RemoteProtocolError("dropped", request=r)),
    lambda r: httpx.Response(500, json={"detail": "boom"}),
    lambda r: httpx.Response(504, json={"detail": "gateway timeout"}),
    lambda r: httpx.Response(200, content=b"{not json"),
])
def test_ambiguous_submit_is_never_retried(fault):
    posts = []
    transport = httpx.MockTransport(lambda r: posts.append(r) or fault(r))
    with FalQueueClient(key=SECRET, transport=transport, **FAST) as client:
        with pytest.raises(AmbiguousSubmitError):
            client.submit(args("https://example.com/a.png"))
    assert len(posts) == 1, "an ambiguous submit must not be sent twice"


def test_submit_retried_when_provably_not_accepted():
    answers = iter([httpx.ConnectError("refused"), httpx.Response(503), httpx.Response(
        200, json={"request_id": "r2", "status_url": "https://q/s", "response_url": "https://q/r",
                   "cancel_url": "https://q/c"})])

    def handler(request):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with FalQueueClient(key=SECRET, transport=httpx.MockTransport(handler), **FAST) as client:
        assert client.submit(args("https://example.com/a.png")).request_id == "r2"


@pytest.mark.parametrize("fault", ["server_error", "unavailable", "drop", "malformed", "rate_limit"])
def test_status_and_result_survive_simulator_faults(make_simulator, png_data_uri, fault):
    sim = make_simulator(faults={fault: 0.4}, fault_calls=frozenset({"status", "result"}), seed=3)
    with client_for(sim, retry=RetryPolicy(max_attempts=12, initial_delay=0.01, max_delay=0.05)) as client:
        output = client.subscribe(args(png_data_uri))
    assert output.video.url
    assert sim.stats()["faults"].get(fault, 0) >= 1


def test_result_that_404s_once_is_retried(make_simulator, png_data_uri):
    sim = make_simulator(faults={"result_404_once": 1.0})
    with client_for(sim) as client:
        assert client.subscribe(args(png_data_uri)).video.url
    assert sim.stats()["faults"]["result_404_once"] == 1


def test_gone_result_is_typed():
    transport = httpx.MockTransport(lambda r: httpx.Response(410, json={"detail": "expired"}))
    with FalQueueClient(key=SECRET, transport=transport, **FAST) as client:
        with pytest.raises(ResultGoneError):
            client.result(client.protocol.handle_for("abc"))


def test_transient_errors_exhaust_into_typed_error():
    transport = httpx.MockTransport(lambda r: httpx.Response(502))
    with FalQueueClient(key=SECRET, transport=transport, **FAST) as client:
        with pytest.raises(TransientError) as err:
            client.status(client.protocol.handle_for("abc"))
    assert err.value.retryable and err.value.status_code == 502


def test_model_failure_is_request_failed(simulator, png_data_uri):
    with client_for(simulator) as client, pytest.raises(RequestFailedError) as err:
        client.subscribe(args(png_data_uri, prompt="please [simulate-failure]"))
    assert err.value.request_id


def test_wait_timeout(make_simulator, png_data_uri):
    sim = make_simulator(run_latency=5.0)
    with client_for(sim) as client:
        handle = client.submit(args(png_data_uri))
        with pytest.raises(WaitTimeoutError):
            client.wait(handle, timeout=0.3)
        assert client.cancel(handle) == "CANCELLATION_REQUESTED"
    assert sim.stats()["cancels"] == 1


def test_cancel_after_completion_and_unknown(simulator, png_data_uri):
    with client_for(simulator) as client:
        handle = client.submit(args(png_data_uri))
        client.wait(handle)
        assert client.cancel(handle) == "ALREADY_COMPLETED"
        assert client.cancel(client.protocol.handle_for("nope")) == "NOT_FOUND"


def test_polling_backs_off_for_long_jobs():
    policy = PollPolicy(interval=1.0, max_interval=10.0, backoff=2.0, backoff_after=30.0)
    assert policy.next_delay(5, 1.0) == 1.0
    assert policy.next_delay(31, 1.0) == 2.0 and policy.next_delay(300, 8.0) == 10.0


def test_secrets_never_in_logs_errors_or_reprs(make_simulator, png_data_uri, caplog):
    caplog.set_level(logging.DEBUG)
    sim = make_simulator(faults={"rate_limit": 0.3, "server_error": 0.3},
                         fault_calls=frozenset({"status", "result"}))
    with client_for(sim, retry=RetryPolicy(max_attempts=15, initial_delay=0.01, max_delay=0.05)) as client:
        inp = ImageToVideoInput(prompt="x", image_url=png_data_uri, api_key=OPENAI)
        client.subscribe(inp)
        texts = [repr(client), str(client), repr(inp), str(inp), inp.model_dump_json(), repr(client.protocol)]
    with FalQueueClient(key=SECRET, base_url=sim.base_url, **FAST) as other:
        with pytest.raises(Exception) as err:
            other.submit({"prompt": "x", "image_url": "nope", "duration": 7, "api_key": OPENAI})
        texts += [str(err.value), repr(err.value)]
    blob = "\n".join(texts + [r.getMessage() for r in caplog.records])
    assert SECRET not in blob and OPENAI not in blob
    assert "Key " + SECRET not in blob


def test_image_inputs(tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(png_bytes(40, 80))
    image = load_image_input(str(png))
    assert image.url.startswith("data:image/png;base64,") and (image.width, image.height) == (40, 80)
    assert image.url.split(",", 1)[1][:40] not in repr(image) and len(repr(image)) < 200
    assert load_image_input("https://example.com/x.png").url == "https://example.com/x.png"
    (tmp_path / "b.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageInputError, match="does not decode as an image"):
        load_image_input(str(tmp_path / "b.png"))
    with pytest.raises(ImageInputError, match="cap"):
        load_image_input(str(png), max_bytes=10)
    with pytest.raises(ImageInputError, match="http://"):
        load_image_input("http://example.com/x.png")
    with pytest.raises(ImageInputError, match="not found"):
        load_image_input(str(tmp_path / "missing.png"))


def test_async_wait_follows_the_status_stream_with_one_call(make_simulator, png_data_uri):
    import asyncio

    sim = make_simulator(run_latency=1.0, queue_latency=0.3)
    seen = []

    async def main():
        async with AsyncFalQueueClient(key=SECRET, base_url=sim.base_url, **FAST) as client:
            handle = await client.submit(args(png_data_uri))
            await client.wait(handle, on_status=lambda h, s: seen.append(s.status))
            return await client.result(handle)

    assert asyncio.run(main()).video.url
    assert seen[0] == "IN_QUEUE" and "IN_PROGRESS" in seen and seen[-1] == "COMPLETED"
    calls = sim.stats()["calls"]
    assert (calls["submit"], calls["status"], calls["result"]) == (1, 1, 1)  # not one call per poll


def test_async_wait_falls_back_to_polling_without_a_stream():
    import asyncio

    polls = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/stream"):
            return httpx.Response(405)
        polls.append(request)
        return httpx.Response(200 if len(polls) >= 3 else 202,
                              json={"status": "COMPLETED" if len(polls) >= 3 else "IN_PROGRESS"})

    async def main():
        async with AsyncFalQueueClient(key=SECRET, transport=httpx.MockTransport(handler), **FAST) as client:
            return await client.wait(client.protocol.handle_for("abc"))

    assert asyncio.run(main()).done and len(polls) == 3


def test_async_stream_wait_times_out(make_simulator, png_data_uri):
    import asyncio

    sim = make_simulator(run_latency=5.0)

    async def main():
        async with AsyncFalQueueClient(key=SECRET, base_url=sim.base_url, **FAST) as client:
            handle = await client.submit(args(png_data_uri))
            await client.wait(handle, timeout=0.5)

    with pytest.raises(WaitTimeoutError):
        asyncio.run(main())
