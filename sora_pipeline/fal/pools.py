"""Connection pools that stay cheap with many requests in flight.

httpcore's pool walks every connection it holds (and every queued request) on each request and on each response
close, so one pool serving 80 concurrent requests spends several times more CPU per request than a pool of 4
(measured on loopback: 2.5 ms vs 0.56 ms per request, `benchmarks/p8_many_endpoints.py` and docs/performance.md).
`ShardedTransport` keeps the same total number of connections as many small pools and sends each request to the
least busy one; `pooled_async_client` builds an `httpx.AsyncClient` on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

#: connections per small pool: a request's pool bookkeeping is proportional to this, not to the whole cap
CONNECTIONS_PER_POOL = 4


class _Released(httpx.AsyncByteStream):
    """A response body that tells its pool's counter when it is closed (once)."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner, self._release = inner, release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class ShardedTransport(httpx.AsyncBaseTransport):
    """`max_connections` spread over pools of `per_pool` connections (all kept alive); each request goes to the
    pool with the fewest open responses. Keyword arguments (`verify`, `trust_env`, …) go to every
    `httpx.AsyncHTTPTransport`."""

    def __init__(self, max_connections: int, per_pool: int = CONNECTIONS_PER_POOL, **transport_kwargs: Any) -> None:
        per_pool = max(1, min(per_pool, max_connections))
        count = max(1, -(-max_connections // per_pool))
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        self._pools = [httpx.AsyncHTTPTransport(limits=limits, **transport_kwargs) for _ in range(count)]
        self._open = [0] * count

    @property
    def pools(self) -> int:
        return len(self._pools)

    def open_responses(self) -> list[int]:
        """Requests each pool is serving now (sent and not yet closed)."""
        return list(self._open)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        i = min(range(len(self._pools)), key=self._open.__getitem__)
        self._open[i] += 1

        def release() -> None:
            self._open[i] -= 1

        try:
            response = await self._pools[i].handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(status_code=response.status_code, headers=response.headers,
                              stream=_Released(response.stream, release), extensions=response.extensions)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def pooled_async_client(*, max_connections: int, verify: Any = True, **client_kwargs: Any) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` on a `ShardedTransport` of `max_connections` (TLS settings go to the pools)."""
    return httpx.AsyncClient(transport=ShardedTransport(max_connections, verify=verify), **client_kwargs)


__all__ = ["CONNECTIONS_PER_POOL", "ShardedTransport", "pooled_async_client"]
