"""The lean keep-alive transport of the Letta client, over real sockets."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from exporter.source._transport import BodyTooLargeError, LeanTransport, lean_transport_applies
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


# ---------------------------------------------------------------------- every framing branch
# Each test below fails when the branch it names is broken (each was checked by breaking it).


async def _answer(writer: asyncio.StreamWriter, body: bytes, *extra: bytes) -> None:
    head = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *extra]
    writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
    await writer.drain()


def _target(head: bytes) -> bytes:
    return head.split(b" ", 2)[1]


async def test_an_informational_answer_is_not_the_answer() -> None:
    # 103 Early Hints (and a 100) before each 200: each request must get its own body, and the
    # next request on the same connection must not get the previous one's.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await _read_head(reader)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            await writer.drain()
            await _answer(writer, _target(head))

    async for url in _serve(handler):
        transport = LeanTransport()
        async with httpx.AsyncClient(base_url=url, transport=transport) as client:
            assert (await client.get("/a")).text == "/a"
            assert (await client.get("/b")).text == "/b"
            key = ("http", "127.0.0.1", httpx.URL(url).port or 80)
            headers = [(b"Host", httpx.URL(url).netloc)]
            status, _, body = await transport.get_raw(key, b"/c", headers, {})
            assert (status, body) == (200, b"/c")


async def test_early_hints_from_the_fake_letta() -> None:
    store = LettaStore()
    store.generate(3)
    with FakeLetta(store, flavour="cloud", early_hints=True) as letta:
        async with httpx.AsyncClient(base_url=letta.url, transport=LeanTransport()) as client:
            for step_id in store.step_ids():
                response = await client.get(f"/v1/steps/{step_id}/trace")
                assert response.json()["step_id"] == step_id
        assert len({r.client_port for r in letta.requests}) == 1


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_the_cap_is_refused(chunked: bool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        body = b"x" * 1000
        if chunked:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(10):
                writer.write(b"64\r\n" + body[:100] + b"\r\n")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        else:
            await _answer(writer, body)

    async for url in _serve(handler):
        async with httpx.AsyncClient(base_url=url, transport=LeanTransport(max_body=999)) as client:
            with pytest.raises(BodyTooLargeError) as raised:
                await client.get("/")
            assert raised.value.limit == 999
        async with httpx.AsyncClient(
            base_url=url, transport=LeanTransport(max_body=1000)
        ) as client:
            assert len((await client.get("/")).content) == 1000


async def test_the_read_timeout_is_per_read_not_per_answer() -> None:
    # A body that trickles in over ~1 s, a piece every 0.1 s, with a 0.5 s read timeout: every
    # read gets data in time, so the answer arrives; a server that goes quiet times out.
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        for _ in range(10):
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"x")
        await writer.drain()

    async def quiet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nxx")
        await writer.drain()
        await asyncio.sleep(30)

    async for url in _serve(trickle):
        async with httpx.AsyncClient(
            base_url=url, transport=LeanTransport(), timeout=httpx.Timeout(5, read=0.5)
        ) as client:
            assert (await client.get("/")).content == b"x" * 10
    async for url in _serve(quiet):
        async with httpx.AsyncClient(
            base_url=url, transport=LeanTransport(), timeout=httpx.Timeout(5, read=0.3)
        ) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/")


async def test_a_write_the_server_does_not_read_times_out() -> None:
    # Back-pressure: a large body to a server that never reads waits for the socket to drain,
    # bounded by the write timeout (without the drain the write "succeeds" into memory and the
    # wait becomes a read timeout instead).
    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async for url in _serve(deaf):
        async with httpx.AsyncClient(
            base_url=url,
            transport=LeanTransport(),
            timeout=httpx.Timeout(5, write=0.3, read=2),
        ) as client:
            with pytest.raises(httpx.WriteTimeout):
                await client.post("/", content=b"x" * (32 * 1024 * 1024))


class _Counting:
    """A server whose first connection answers ``answered`` requests, then hangs up on the next.

    ``hang_up`` is what it sends before closing (nothing: a stale keep-alive connection).
    """

    def __init__(self, *, answered: int = 1, hang_up: bytes = b"") -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self._answered = answered
        self._hang_up = hang_up

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first = self.connections == 1
        served = 0
        while True:
            head = await _read_head(reader)
            self.requests.append(head.split(b" ", 1)[0])
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            if first and served == self._answered:
                writer.write(self._hang_up)
                await writer.drain()
                writer.close()
                return
            served += 1
            await _answer(writer, b"ok")


async def test_a_stale_connection_is_resent_for_a_get() -> None:
    # The server closes the kept-alive connection as the second request arrives, before a byte
    # of an answer: the GET goes again on a fresh connection.
    server = _Counting()
    async for url in _serve(server):
        async with httpx.AsyncClient(base_url=url, transport=LeanTransport()) as client:
            assert (await client.get("/")).text == "ok"
            assert (await client.get("/")).text == "ok"
    assert server.connections == 2
    assert server.requests == [b"GET", b"GET", b"GET"]


async def test_a_stale_connection_is_not_resent_for_a_post() -> None:
    server = _Counting()
    async for url in _serve(server):
        async with httpx.AsyncClient(base_url=url, transport=LeanTransport()) as client:
            assert (await client.get("/")).text == "ok"
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post("/", content=b"do it once")
    assert server.requests == [b"GET", b"POST"]  # never sent twice


async def test_nothing_is_resent_once_part_of_an_answer_came() -> None:
    server = _Counting(hang_up=b"HTTP/1.1 200 OK\r\nContent-Len")
    async for url in _serve(server):
        async with httpx.AsyncClient(base_url=url, transport=LeanTransport()) as client:
            assert (await client.get("/")).text == "ok"
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/")
    assert server.requests == [b"GET", b"GET"]
    assert server.connections == 1


async def test_a_fresh_connection_that_hangs_up_is_an_error_not_a_resend() -> None:
    server = _Counting(answered=0)
    async for url in _serve(server):
        async with httpx.AsyncClient(base_url=url, transport=LeanTransport()) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/")
    assert server.requests == [b"GET"]


async def test_connection_close_is_honoured_even_if_the_server_keeps_the_socket() -> None:
    # "Connection: close" with the socket left open: reusing it would wait forever.
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_head(reader)
        await _answer(writer, b"ok", b"Connection: close")
        await asyncio.sleep(30)

    async for url in _serve(handler):
        async with httpx.AsyncClient(
            base_url=url, transport=LeanTransport(), timeout=httpx.Timeout(5, read=2)
        ) as client:
            for _ in range(3):
                assert (await client.get("/")).text == "ok"
    assert connections == 3


async def test_keep_alive_reuses_one_connection_per_concurrent_request() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            head = await _read_head(reader)
            await _answer(writer, _target(head))

    async for url in _serve(handler):
        async with httpx.AsyncClient(
            base_url=url, transport=LeanTransport(max_keepalive=2)
        ) as client:
            for _ in range(5):
                bodies = await asyncio.gather(client.get("/x"), client.get("/y"))
                assert [b.text for b in bodies] == ["/x", "/y"]
    assert connections == 2


async def test_head_and_no_content_answers_have_no_body() -> None:
    # HEAD's Content-Length and a 204 describe no body: reading one would eat the next answer.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await _read_head(reader)
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            elif _target(head) == b"/none":
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                await _answer(writer, b"after")
            await writer.drain()

    async for url in _serve(handler):
        async with httpx.AsyncClient(base_url=url, transport=LeanTransport()) as client:
            assert (await client.head("/")).content == b""
            assert (await client.get("/next")).text == "after"
            assert (await client.get("/none")).status_code == 204
            assert (await client.get("/next")).text == "after"
