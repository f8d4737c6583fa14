"""`ShardedTransport`: many concurrent requests on loopback spread over small pools, never more connections than
the cap, counts released whatever happens to the response (read, streamed and abandoned, refused connection)."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from sora_pipeline.fal.pools import ShardedTransport, pooled_async_client


class CountingServer:
    """HTTP/1.1 keep-alive server on 127.0.0.1 that answers after `delay` and counts connections at once."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay, self.open_now, self.most_open, self.accepted = delay, 0, 0, 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_now += 1
        self.accepted += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while await reader.readline():
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                await asyncio.sleep(self.delay)
                body = b"x" * 5000
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.open_now -= 1
            writer.close()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()


def test_concurrent_requests_spread_over_small_pools_within_the_cap():
    async def main():
        server = CountingServer()
        async with server as url:
            transport = ShardedTransport(20, per_pool=4)
            assert transport.pools == 5
            most: list[int] = []
            async with httpx.AsyncClient(transport=transport) as http:
                async def one(i: int) -> None:
                    response = await http.get(f"{url}/r/{i}")
                    assert response.status_code == 200 and len(response.content) == 5000
                    most.append(max(transport.open_responses()))

                await asyncio.gather(*(one(i) for i in range(300)))
                assert transport.open_responses() == [0] * 5  # every response released
            assert max(most) <= 300 // 5 + 1  # sent to the least busy pool: an even share each, at most
            assert server.most_open <= 20  # never more connections than the cap
            assert 5 <= server.accepted <= 40  # kept alive and reused, not one connection per request

    asyncio.run(main())


def test_abandoned_streams_and_refused_connections_release_their_pool():
    async def main():
        server = CountingServer(delay=0.0)
        async with server as url:
            transport = ShardedTransport(8, per_pool=4)
            async with httpx.AsyncClient(transport=transport) as http:
                for _ in range(10):  # a stream left after its first chunk (a body over a cap, say)
                    async with http.stream("GET", f"{url}/big") as response:
                        async for _chunk in response.aiter_bytes():
                            break
                assert transport.open_responses() == [0, 0]
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        async with pooled_async_client(max_connections=8) as http:
            for _ in range(5):
                with pytest.raises(httpx.ConnectError):
                    await http.get(dead)
            assert http._transport.open_responses() == [0, 0]  # noqa: SLF001

    asyncio.run(main())
