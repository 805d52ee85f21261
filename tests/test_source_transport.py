"""The lean keep-alive transport of the Letta client, over real sockets."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from exporter.source._transport import LeanTransport, lean_transport_applies
from testkit import FakeLetta, LettaStore

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> AsyncIterator[str]:
    tasks: list[asyncio.Task[None]] = []

    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(closing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def test_keeps_connections_alive_against_the_fake() -> None:
    store = LettaStore()
    store.generate(3)
    with FakeLetta(store, flavour="cloud") as letta:
        async with httpx.AsyncClient(
            base_url=letta.url, transport=LeanTransport(max_keepalive=2)
        ) as client:
            for step_id in store.step_ids():
                response = await client.get(f"/v1/steps/{step_id}/trace", params={"x": "a b"})
                assert response.status_code == 200
                assert response.json()["step_id"] == step_id
            missing = await client.get("/v1/runs/run-00000000-0000-4000-8000-000000000000")
            assert missing.status_code == 404
        requests = letta.requests
    assert len({r.client_port for r in requests}) == 1  # one connection, reused
    assert requests[0].query == {"x": ("a b",)}
    assert requests[0].headers["host"].startswith("127.0.0.1:")


async def test_chunked_gzip_and_connection_close() -> None:
    body = gzip.compress(b'{"ok": true}')

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n"
            b"Connection: close\r\n\r\n"
            + b"%x\r\n%s\r\n" % (5, body[:5])
            + b"%x\r\n%s\r\n" % (len(body) - 5, body[5:])
            + b"0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    async for url in _serve(handler):
        async with httpx.AsyncClient(base_url=url, transport=LeanTransport()) as client:
            assert (await client.get("/")).json() == {"ok": True}
            assert (await client.get("/")).json() == {"ok": True}  # a new connection


async def test_a_stale_keep_alive_connection_is_retried_once() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # Keep-alive promised, but the server drops the idle connection after one answer.
        await asyncio.sleep(0.05)
        writer.close()

    async for url in _serve(handler):
        transport = LeanTransport()
        async with httpx.AsyncClient(base_url=url, transport=transport) as client:
            assert (await client.get("/")).text == "ok"
            await asyncio.sleep(0.2)
            assert (await client.get("/")).text == "ok"
    assert connections == 2


async def test_errors_are_httpx_errors() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        await asyncio.sleep(5)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"SPDY/9 what\r\n\r\n")
        await writer.drain()

    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        writer.close()

    async for url in _serve(silent):
        async with httpx.AsyncClient(
            base_url=url, transport=LeanTransport(), timeout=0.2
        ) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/")
    async for url in _serve(garbage):
        async with httpx.AsyncClient(base_url=url, transport=LeanTransport()) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/")
    async for url in _serve(hangs_up):
        async with httpx.AsyncClient(base_url=url, transport=LeanTransport()) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/")
    async with httpx.AsyncClient(
        base_url="http://127.0.0.1:9", transport=LeanTransport()
    ) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/")


def test_applies_only_without_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    assert lean_transport_applies("http://localhost:8283")
    assert lean_transport_applies("https://api.letta.com")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert lean_transport_applies("http://localhost:8283")
    assert not lean_transport_applies("https://api.letta.com")
