"""Sync and async clients for fal's queue: submit → status (with logs) → result, cancel, and wait/subscribe.

Both share `QueueProtocol` (what to send, how to read answers, where the caps are) and one retry policy
(tenacity); they differ only in how bytes move. Pass `transport=` (an httpx transport) to test pinpoint faults.

Safety settings (constructor keywords, None: the default; the pipeline passes its settings' values):
`max_json_bytes` (env `SORA_MAX_JSON_BYTES`, default 8 MiB) caps every submit/status/result/cancel answer: it is
read as a stream and abandoned past the cap (an oversized result is a non-retryable `RequestFailedError`, never a
completed request; an oversized status a `TransientError`; an oversized submit an `AmbiguousSubmitError`).
`max_stream_event_bytes` (env `SORA_MAX_STREAM_EVENT_BYTES`, default 1 MiB) caps each status-stream line: a longer
one abandons the stream and the client polls instead. Redirects are never followed: a 3xx answer is an error
(`TransientError`; on submit `AmbiguousSubmitError`), and the key is only ever sent to the configured origin."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from pydantic import SecretStr
from tenacity import AsyncRetrying, Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay

from sora_pipeline.fal.errors import RequestFailedError, WaitTimeoutError
from sora_pipeline.endpoints import DEFAULT_ENDPOINT_ID, EndpointProfile
from sora_pipeline.fal.models import ImageToVideoInput, ImageToVideoOutput
from sora_pipeline.fal.error_mapping import RetrySignal
from sora_pipeline.fal.limits import StreamEventTooLarge, araw_chunks, raw_chunks
from sora_pipeline.fal.policies import PollPolicy, RetryPolicy
from sora_pipeline.fal.pools import ShardedTransport
from sora_pipeline.fal.protocol import OutgoingRequest, QueueHandle, QueueProtocol, QueueStatus

log = logging.getLogger("sora_pipeline.fal")
DEFAULT_QUEUE_URL = "https://queue.fal.run"
IDLE_CONNECTIONS = 4  # kept-alive connections of the blocking client: httpcore checks every idle one per request


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """The verified TLS context every client of this process shares (httpx would load the CA bundle again for
    each client, ~50 ms apiece), made once: httpx's `trust_env` honours SSL_CERT_FILE / SSL_CERT_DIR as the
    process started with them (OpenSSL's own variables: this module does not read them)."""
    return httpx.create_ssl_context(trust_env=True)


StatusCallback = Callable[[QueueHandle, QueueStatus], Any]


class _ClientBase:
    def __init__(self, *, key: str | SecretStr | None, base_url: str = DEFAULT_QUEUE_URL,
                 endpoint_id: str = DEFAULT_ENDPOINT_ID, retry: RetryPolicy | None = None,
                 poll: PollPolicy | None = None, timeout: float = 30.0, connect_timeout: float = 10.0,
                 priority: str | None = None, start_timeout: float | None = None, webhook_url: str | None = None,
                 max_connections: int = 100, max_json_bytes: int | None = None,
                 max_stream_event_bytes: int | None = None, profile: EndpointProfile | None = None) -> None:
        self.protocol = QueueProtocol(base_url=base_url, endpoint_id=endpoint_id, key=key, priority=priority,
                                      start_timeout=start_timeout, webhook_url=webhook_url,
                                      max_json_bytes=max_json_bytes, max_stream_event_bytes=max_stream_event_bytes,
                                      profile=profile)
        self.retry = retry or RetryPolicy()
        self.poll = poll or PollPolicy()
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout, pool=None)
        # httpcore scans its whole pool (idle connections quadratically) on every request: the blocking client
        # keeps few idle ones; the async one splits its connections into small pools (`ShardedTransport`)
        self._limits = httpx.Limits(max_connections=max_connections,
                                    max_keepalive_connections=min(max_connections, IDLE_CONNECTIONS))

    @property
    def base_url(self) -> str:
        return self.protocol.base_url

    @property
    def endpoint_id(self) -> str:
        return self.protocol.endpoint_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.protocol!r})"

    def _retry_kwargs(self, req: OutgoingRequest) -> dict[str, Any]:
        policy = self.retry

        def wait(state) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return policy.backoff(state.attempt_number, getattr(exc, "retry_after", None))

        def before_sleep(state) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("fal %s: %s; retrying (attempt %d of %d)", req.phase, getattr(exc, "error", exc),
                        state.attempt_number + 1, policy.max_attempts)

        return dict(stop=stop_after_attempt(policy.max_attempts) | stop_after_delay(policy.total_timeout),
                    wait=wait, retry=retry_if_exception_type(RetrySignal), before_sleep=before_sleep, reraise=True)

    def _request_kwargs(self, req: OutgoingRequest) -> dict[str, Any]:
        return {"json": req.json, "headers": req.headers, "params": req.params}

    def _wait_step(self, handle: QueueHandle, status: QueueStatus, started: float, timeout: float | None,
                   previous: float | None) -> float:
        elapsed = time.monotonic() - started
        if timeout is not None and elapsed > timeout:
            raise WaitTimeoutError(f"request still {status.status} after {elapsed:.0f}s (it may still finish)",
                                   request_id=handle.request_id)
        return self.poll.next_delay(elapsed, previous)

    @staticmethod
    def _check_completed(handle: QueueHandle, status: QueueStatus) -> None:
        if status.error:
            raise RequestFailedError(f"request failed: {status.error}", request_id=handle.request_id,
                                     fal_error_type=status.error_type, retryable=False)


class FalQueueClient(_ClientBase):
    """Blocking client. Use as a context manager or call `close()`."""

    def __init__(self, *, transport: httpx.BaseTransport | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._http = httpx.Client(timeout=self._timeout, limits=self._limits, transport=transport,
                                  verify=shared_ssl_context(), headers=self.protocol.headers(),
                                  follow_redirects=False)

    def __enter__(self) -> FalQueueClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, req: OutgoingRequest, parse: Callable[[httpx.Response], Any], request_id: str | None = None):
        try:
            for attempt in Retrying(**self._retry_kwargs(req)):
                with attempt:
                    try:
                        with self._http.stream(req.method, req.url, **self._request_kwargs(req)) as response:
                            body = self.protocol.body_reader(response, req.phase, request_id)
                            for chunk in raw_chunks(response):  # decoded by the reader, boundedly
                                if body.feed(chunk):
                                    break
                    except httpx.HTTPError as exc:
                        raise self.protocol.network_error(exc, req.phase, request_id) from None
                    return parse(body.finish())
        except RetrySignal as signal:
            raise signal.error from None

    def submit(self, arguments: ImageToVideoInput | dict[str, Any]) -> QueueHandle:
        return self._send(self.protocol.submit(arguments), self.protocol.parse_submit)

    def status(self, handle: QueueHandle, *, logs: bool = True) -> QueueStatus:
        return self._send(self.protocol.status(handle, logs=logs),
                          lambda r: self.protocol.parse_status(r, handle.request_id), handle.request_id)

    def result(self, handle: QueueHandle) -> ImageToVideoOutput:
        return self._send(self.protocol.result(handle), lambda r: self.protocol.parse_result(r, handle.request_id),
                          handle.request_id)

    def cancel(self, handle: QueueHandle) -> str:
        return self._send(self.protocol.cancel(handle), lambda r: self.protocol.parse_cancel(r, handle.request_id),
                          handle.request_id)

    def wait(self, handle: QueueHandle, *, timeout: float | None = None,
             on_status: StatusCallback | None = None) -> QueueStatus:
        """Poll until COMPLETED (sleeping first, so a request finishing within L costs ⌈L/interval⌉ polls)."""
        started, delay = time.monotonic(), self.poll.interval
        while True:
            time.sleep(delay)
            status = self.status(handle)
            if on_status:
                on_status(handle, status)
            if status.done:
                self._check_completed(handle, status)
                return status
            delay = self._wait_step(handle, status, started, timeout, delay)

    def subscribe(self, arguments: ImageToVideoInput | dict[str, Any], *, timeout: float | None = None,
                  on_enqueue: Callable[[QueueHandle], Any] | None = None,
                  on_status: StatusCallback | None = None) -> ImageToVideoOutput:
        handle = self.submit(arguments)
        if on_enqueue:
            on_enqueue(handle)
        self.wait(handle, timeout=timeout, on_status=on_status)
        return self.result(handle)


class AsyncFalQueueClient(_ClientBase):
    """asyncio client on httpx.AsyncClient; same protocol, retries and errors as `FalQueueClient`."""

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # many small pools (`ShardedTransport`): httpcore's per-request bookkeeping grows with its pool's size.
        # Status streams hold a connection each for a whole generation: pools of their own, so a short call
        # (submit, result) never waits behind them
        self._http, self._streams = (
            httpx.AsyncClient(timeout=self._timeout, headers=self.protocol.headers(), follow_redirects=False,
                              transport=transport or ShardedTransport(self._limits.max_connections,
                                                                      verify=shared_ssl_context()))
            for _ in range(2))

    async def __aenter__(self) -> AsyncFalQueueClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._streams.aclose()

    async def _send(self, req: OutgoingRequest, parse: Callable[[httpx.Response], Any],
                    request_id: str | None = None):
        try:
            async for attempt in AsyncRetrying(**self._retry_kwargs(req)):
                with attempt:
                    try:
                        async with self._http.stream(req.method, req.url, **self._request_kwargs(req)) as response:
                            body = self.protocol.body_reader(response, req.phase, request_id)
                            async for chunk in araw_chunks(response):  # decoded by the reader, boundedly
                                if body.feed(chunk):
                                    break
                    except httpx.HTTPError as exc:
                        raise self.protocol.network_error(exc, req.phase, request_id) from None
                    return parse(body.finish())
        except RetrySignal as signal:
            raise signal.error from None

    async def submit(self, arguments: ImageToVideoInput | dict[str, Any]) -> QueueHandle:
        return await self._send(self.protocol.submit(arguments), self.protocol.parse_submit)

    async def status(self, handle: QueueHandle, *, logs: bool = True) -> QueueStatus:
        return await self._send(self.protocol.status(handle, logs=logs),
                                lambda r: self.protocol.parse_status(r, handle.request_id), handle.request_id)

    async def result(self, handle: QueueHandle) -> ImageToVideoOutput:
        return await self._send(self.protocol.result(handle),
                                lambda r: self.protocol.parse_result(r, handle.request_id), handle.request_id)

    async def cancel(self, handle: QueueHandle) -> str:
        return await self._send(self.protocol.cancel(handle),
                                lambda r: self.protocol.parse_cancel(r, handle.request_id), handle.request_id)

    async def wait(self, handle: QueueHandle, *, timeout: float | None = None,
                   on_status: Callable[[QueueHandle, QueueStatus], Any | Awaitable[Any]] | None = None
                   ) -> QueueStatus:
        """Until COMPLETED: follow the status stream (`PollPolicy.stream`), else poll."""
        started, delay = time.monotonic(), self.poll.interval
        if self.poll.stream:
            status = await self._wait_streaming(handle, started, timeout, on_status)
            if status is not None:
                return status
        while True:
            await asyncio.sleep(delay)
            status = await self.status(handle)
            if await self._seen(handle, status, on_status):
                return status
            delay = self._wait_step(handle, status, started, timeout, delay)

    async def _seen(self, handle: QueueHandle, status: QueueStatus, on_status) -> bool:
        if on_status:
            outcome = on_status(handle, status)
            if asyncio.iscoroutine(outcome):
                await outcome
        if status.done:
            self._check_completed(handle, status)
        return status.done

    async def _wait_streaming(self, handle: QueueHandle, started: float, timeout: float | None,
                              on_status) -> QueueStatus | None:
        """Follow `…/status/stream` (server-sent events). A quiet stream that hits the read timeout is simply
        reopened; other failures are retried a few times. None: no usable stream, the caller polls instead."""
        remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        try:
            async with asyncio.timeout(remaining):
                return await self._follow_stream(handle, started, timeout, on_status)
        except TimeoutError:
            raise WaitTimeoutError(f"request still running after {timeout:.0f}s (it may still finish)",
                                   request_id=handle.request_id) from None

    async def _follow_stream(self, handle: QueueHandle, started: float, timeout: float | None,
                             on_status) -> QueueStatus | None:
        req = self.protocol.status_stream(handle)
        failures = 0
        while failures < 3:
            status = None
            try:
                async with self._streams.stream(req.method, req.url, params=req.params) as response:
                    if response.status_code != 200:
                        return None  # no stream here (or an error/redirect the polling path maps properly)
                    lines = self.protocol.line_splitter(response)  # capped: an endless line never fills memory
                    async for chunk in araw_chunks(response):
                        for line in lines.feed(chunk):
                            if not line.startswith("data:"):
                                continue
                            status = self.protocol.status_from_body(json.loads(line[5:]), handle.request_id)
                            if await self._seen(handle, status, on_status):
                                return status
                            self._wait_step(handle, status, started, timeout, None)
            except httpx.ReadTimeout:
                continue  # nothing to report for a while: reopen
            except StreamEventTooLarge as exc:
                log.warning("status stream of %s: %s; polling instead", handle.request_id, exc)
                return None
            except (httpx.HTTPError, ValueError, RetrySignal) as exc:
                failures += 1
                log.debug("status stream of %s failed (%s); retrying", handle.request_id, type(exc).__name__)
                await asyncio.sleep(self.retry.backoff(failures))
                continue
            if status is None:
                failures += 1  # the stream closed without a single event
        return None

    async def subscribe(self, arguments: ImageToVideoInput | dict[str, Any], *, timeout: float | None = None,
                        on_enqueue: Callable[[QueueHandle], Any] | None = None,
                        on_status: StatusCallback | None = None) -> ImageToVideoOutput:
        handle = await self.submit(arguments)
        if on_enqueue:
            on_enqueue(handle)
        await self.wait(handle, timeout=timeout, on_status=on_status)
        return await self.result(handle)


__all__ = ["AsyncFalQueueClient", "FalQueueClient", "shared_ssl_context"]
