"""The benchmark's servers, each in its own process: a fast fake Letta and a counting receiver.

The fake Letta answers with :class:`testkit.FakeLetta`'s own routing (same routes, same
cursors, same flavours) over the generated :class:`~testkit.LettaStore`, but through a
small asyncio HTTP/1.1 server instead of the stdlib ``ThreadingHTTPServer``: bodies are the
store's pre-serialized bytes, connections are kept alive, a request costs one ``data_received``
and one ``write``, and a fixed latency is a timer (``call_later``), not a sleeping thread. The
stdlib server needs a thread switch and header parsing in Python per request and could not keep
up with the exporter (see RESULTS.md for the figures).

Both run under ``multiprocessing`` (spawn) and are driven over a pipe: ``stats``, ``reset`` and
``stop``; their memory and CPU are not the exporter's.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import threading
import time
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["LettaProcess", "ReceiverProcess"]

_READY_TIMEOUT = 600.0
_STATUS_TEXT = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 422: b"Unprocessable Entity"}


# ------------------------------------------------------------------------------- fake Letta
class _Stats:
    """Counters of the fake server (read by the control thread; ints, so no lock is needed)."""

    def __init__(self) -> None:
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.by_route: dict[str, int] = {}

    def as_dict(self) -> dict[str, Any]:
        times = os.times()
        return {
            "requests": self.requests,
            "max_in_flight": self.max_in_flight,
            "by_route": dict(self.by_route),
            "cpu_seconds": times.user + times.system,
        }


def _route_name(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    # /v1/steps/<id>/trace -> steps/*/trace
    return "/".join("*" if i % 2 == 1 else p for i, p in enumerate(parts[1:]))


class _LettaProtocol(asyncio.Protocol):
    """One keep-alive connection: parse GET requests, answer each from the fake's routes."""

    def __init__(self, fake: Any, stats: _Stats, latency: float) -> None:
        from testkit.fake_letta import _Query

        self._fake = fake
        self._query = _Query
        self._stats = stats
        self._latency = latency
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            self._request(head)

    def _request(self, head: bytes) -> None:
        line, _, headers = head.partition(b"\r\n")
        try:
            method, target, _version = line.decode("latin-1").split(" ", 2)
        except ValueError:
            self._reply(400, b'{"detail":"bad request line"}', close=True)
            return
        close = b"connection: close" in headers.lower()
        stats = self._stats
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        split = urlsplit(target)
        name = _route_name(split.path)
        stats.by_route[name] = stats.by_route.get(name, 0) + 1
        if method != "GET":
            answer: tuple[int, bytes, dict[str, str]] = (405, b'{"detail":"GET only"}', {})
        else:
            query = {k: tuple(v) for k, v in parse_qs(split.query, keep_blank_values=True).items()}
            answer = self._fake._route(split.path, self._query(query))
        if self._latency > 0:
            self._loop.call_later(self._latency, self._finish, answer, close)
        else:
            self._finish(answer, close)

    def _finish(self, answer: tuple[int, bytes, dict[str, str]], close: bool) -> None:
        self._stats.in_flight -= 1
        status, body, extra = answer
        self._reply(status, body, close=close, extra=extra)

    def _reply(
        self, status: int, body: bytes, *, close: bool, extra: dict[str, str] | None = None
    ) -> None:
        transport = self._transport
        if transport is None:
            return
        lines = [
            b"HTTP/1.1 %d %s" % (status, _STATUS_TEXT.get(status, b"Status")),
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
        ]
        lines.extend(f"{k}: {v}".encode("latin-1") for k, v in (extra or {}).items())
        if close:
            lines.append(b"Connection: close")
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        if close:
            transport.close()


def _serve_letta(conn: Connection, spec: Any, flavour: str, latency_ms: float) -> None:
    """The fake Letta process: build the store, serve, answer control messages."""
    from bench.backlog import build_store
    from testkit import FakeLetta

    started = time.monotonic()
    store, backlog = build_store(spec)
    build_seconds = time.monotonic() - started
    fake = FakeLetta(store, flavour=flavour)  # never started: only its routing is used
    stats = _Stats()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _LettaProtocol(fake, stats, latency_ms / 1000.0),
            "127.0.0.1",
            0,
            backlog=1024,
        )
        port = server.sockets[0].getsockname()[1]
        done = asyncio.Event()

        def control() -> None:
            conn.send(("ready", f"http://127.0.0.1:{port}", build_seconds, backlog))
            while True:
                try:
                    command = conn.recv()
                except EOFError:
                    command = "stop"
                if command == "stats":
                    conn.send(stats.as_dict())
                elif command == "reset":
                    stats.requests = 0
                    stats.max_in_flight = stats.in_flight
                    stats.by_route.clear()
                    conn.send("ok")
                else:
                    loop.call_soon_threadsafe(done.set)
                    return

        threading.Thread(target=control, daemon=True).start()
        await done.wait()
        server.close()

    asyncio.run(main())


class LettaProcess:
    """The fake Letta in its own process, serving a generated backlog.

    Args:
        spec: the backlog to generate (a :class:`bench.backlog.BacklogSpec`).
        flavour: ``cloud`` (``/v1/steps/`` works) or ``0.16.8`` (discovery through runs).
        latency_ms: added to every answer.
    """

    def __init__(self, spec: Any, *, flavour: str = "cloud", latency_ms: float = 0.0) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve_letta, args=(child, spec, flavour, latency_ms), daemon=True
        )
        self.url = ""
        self.build_seconds = 0.0
        self.backlog: Any = None

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def __enter__(self) -> LettaProcess:
        self._process.start()
        if not self._conn.poll(_READY_TIMEOUT):
            self._process.kill()
            raise RuntimeError("the fake Letta did not start")
        _, self.url, self.build_seconds, self.backlog = self._conn.recv()
        return self

    def stats(self) -> dict[str, Any]:
        self._conn.send("stats")
        result: dict[str, Any] = self._conn.recv()
        return result

    def reset(self) -> None:
        self._conn.send("reset")
        self._conn.recv()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


# ------------------------------------------------------------------------------- receiver
def _serve_receiver(conn: Connection, workers: int) -> None:
    from testkit import OtlpReceiver

    with OtlpReceiver(count_only=True, max_workers=workers) as receiver:
        conn.send(("ready", receiver.grpc_endpoint, receiver.http_base_endpoint))
        while True:
            try:
                command = conn.recv()
            except EOFError:
                return
            if command == "ids":
                times = os.times()
                conn.send(
                    {
                        "span_count": receiver.span_count,
                        "unique": receiver.unique_span_count,
                        "duplicates": receiver.duplicate_count,
                        "requests": receiver.request_count,
                        "ids": receiver._state.ids.copy(),
                        "cpu_seconds": times.user + times.system,
                    }
                )
            elif command == "clear":
                receiver.clear()
                conn.send("ok")
            else:
                return


class ReceiverProcess:
    """A counting OTLP receiver (gRPC and HTTP) in its own process."""

    def __init__(self, *, workers: int = 4) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve_receiver, args=(child, workers), daemon=True)
        self.grpc_endpoint = ""
        self.http_endpoint = ""

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def __enter__(self) -> ReceiverProcess:
        self._process.start()
        if not self._conn.poll(60):
            self._process.kill()
            raise RuntimeError("the OTLP receiver did not start")
        _, self.grpc_endpoint, self.http_endpoint = self._conn.recv()
        return self

    def endpoint(self, protocol: str) -> str:
        """The base endpoint for ``grpc`` or ``http``."""
        return self.grpc_endpoint if protocol == "grpc" else self.http_endpoint

    def received(self) -> dict[str, Any]:
        """Counts, duplicates and the set of ``(trace_id, span_id)`` pairs received."""
        self._conn.send("ids")
        result: dict[str, Any] = self._conn.recv()
        return result

    def clear(self) -> None:
        self._conn.send("clear")
        self._conn.recv()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
