"""The wire rules kept once (`sora_pipeline.wire`, `fal.urls`) and the callers that now share them: which backend
a queue URL is (a real simulator and hostile servers on loopback), the platform API URL check's one-line errors,
loopback hosts, and the webhook's signed bytes (the simulator signs what the receiver verifies)."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from sora_pipeline.fal.identity import SIMULATOR_IDENTITY_PATH, BackendProbeError, identify_backend
from sora_pipeline.fal.platform import PlatformError, check_api_url
from sora_pipeline.fal.urls import origin_url
from sora_pipeline.serving import BackgroundServer
from sora_pipeline.simulator.webhook_delivery import sign_headers
from sora_pipeline.webhooks.signatures import verify_signature
from sora_pipeline.wire import is_loopback, signed_message


class _Answers(BackgroundServer):
    """A loopback server answering the identity path with a fixed status and body."""

    name = "identity answers"

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__()
        self.status, self.body = status, body

    def make_app(self):
        async def answer(request):
            return Response(self.body, status_code=self.status, media_type="application/json")

        return Starlette(routes=[Route(SIMULATOR_IDENTITY_PATH, answer)])


def test_a_simulator_says_it_is_one(simulator):
    assert identify_backend(simulator.base_url) == "simulator"
    assert identify_backend(simulator.base_url + "/some/prefix/") == "simulator"


@pytest.mark.parametrize("status, body", [
    (200, b'{"simulator": true, "pad": "' + b"x" * 8000 + b'"}'),  # over the 4 KiB cap: not read as an answer
    (404, b'{"simulator": true}'),  # only a 200 counts
    (200, b'{"simulator": "yes"}'),
    (200, b"not json"),
])
def test_anything_else_is_taken_for_fal(status, body):
    with _Answers(status, body) as server:
        assert identify_backend(server.base_url) == "fal"


def test_fal_itself_is_not_asked_and_a_silent_url_fails_in_one_line():
    assert identify_backend("https://queue.fal.run") == "fal"
    assert identify_backend("https://QUEUE.fal.run:443/") == "fal"
    with pytest.raises(BackendProbeError, match="SORA_FAL_QUEUE_URL"):
        identify_backend("http://127.0.0.1:9/", timeout=2)
    with pytest.raises(BackendProbeError, match="not an http"):
        identify_backend("queue.fal.run")


def test_origin_url_names_scheme_host_and_a_port_only_when_it_is_not_the_default():
    assert origin_url("https://Queue.fal.run/fal-ai/x?y=1") == "https://queue.fal.run"
    assert origin_url("http://127.0.0.1:8000/a") == "http://127.0.0.1:8000"
    assert origin_url("http://[::1]:80/") == "http://[::1]"
    assert origin_url("ftp://host/") is None


@pytest.mark.parametrize("url, with_key, message", [
    ("https://api.fal.ai/v1/", True, None),
    ("http://127.0.0.1:8080", True, None),
    ("http://api.example.com", False, None),
    ("http://api.example.com", True, "platform API URL 'http://api.example.com' is plain http on a non-loopback "
                                     "host: the key would travel in clear, nothing was sent; use https (set "
                                     "SORA_FAL_API_URL)"),
    ("https://user:pw@api.fal.ai", True, "platform API URL 'https://user:pw@api.fal.ai' must be a plain http(s) URL "
                                         "like https://api.fal.ai/v1; set SORA_FAL_API_URL"),
    ("http://[::1", True, "platform API URL 'http://[::1' is not a URL; set SORA_FAL_API_URL"),
])
def test_the_platform_api_url_check_keeps_its_one_line_errors(url, with_key, message):
    if message is None:
        assert check_api_url(url, with_key=with_key) == url.rstrip("/")
    else:
        with pytest.raises(PlatformError) as err:
            check_api_url(url, with_key=with_key)
        assert str(err.value) == message


def test_loopback_hosts():
    for host in ("localhost", "LOCALHOST", "127.0.0.1", "127.8.9.1", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in (None, "", "example.com", "10.0.0.1", "localhost.example.com", "[::2]"):
        assert not is_loopback(host), host


def test_the_simulator_signs_what_the_receiver_verifies():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key, body = Ed25519PrivateKey.generate(), b'{"request_id": "r-1", "status": "OK"}'
    headers = sign_headers(key, "r-1", "user-1", body)
    assert verify_signature([key.public_key()], {k.lower(): v for k, v in headers.items()}, body) == "r-1"
    assert signed_message("r-1", "u", "7", b"") == (
        b"r-1\nu\n7\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
