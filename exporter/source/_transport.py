"""A lean HTTP/1.1 keep-alive transport for the Letta client (an ``httpx`` transport).

Why: the exporter makes one GET per trace, so the per-request cost of the HTTP stack bounds its
throughput. httpx's default transport (httpcore over anyio) spends ~1 ms of CPU per request on
this machine: every request walks the whole pool and asks each idle connection whether it
expired through anyio's typed attributes (a dict of lambdas and a ``getpeername`` syscall per
connection), plus lock and cancel-shield set-up. Letta calls are plain GETs with small headers,
so this transport does only what they need on asyncio streams: one write per request, a
``readuntil`` for the head, ``readexactly`` (or chunked decoding) for the body, and a LIFO pool
of idle connections bounded by ``max_keepalive``. ``httpx.AsyncClient`` stays the interface
(base URL, headers, params, timeouts, response decoding), so the rest of the source is unchanged
and tests can still pass ``httpx.MockTransport``.

Errors are httpx's own (``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError``...), so the
retry policy sees what it always saw. A reused keep-alive connection that turns out closed by the
server before answering is retried once on a fresh one (GETs are idempotent), as httpcore does.
No proxies and no HTTP/2: with a proxy in the environment :func:`lean_transport_applies` answers
False and the client keeps httpx's default transport.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator
from typing import Final

import httpx

__all__ = ["LeanTransport", "lean_transport_applies"]

_MAX_HEAD: Final = 64 * 1024
_NO_BODY_STATUSES: Final = frozenset({204, 304})


def lean_transport_applies(base_url: str) -> bool:
    """Whether the lean transport can serve ``base_url``: http(s), and no proxy in the environment.

    With a proxy configured (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``...) httpx's own
    transport is kept, since it knows how to go through one.
    """
    scheme = httpx.URL(base_url).scheme
    if scheme not in ("http", "https"):
        return False
    proxies = urllib.request.getproxies()
    return not any(key in proxies for key in (scheme, "all"))


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive for one server, on asyncio streams.

    Args:
        max_keepalive: idle connections kept for reuse (the client's concurrency).
        ssl_context: for ``https`` URLs (default: httpx's, certifi and ``SSL_CERT_FILE``).
    """

    def __init__(
        self, *, max_keepalive: int = 8, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._max_keepalive = max_keepalive
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        url = request.url
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeout = request.extensions.get("timeout") or {}
        head = self._head(request)
        body = request.content if request.method not in ("GET", "HEAD") else b""
        status, headers, content = await self._send_payload(
            key, request, head + body, timeout, head_only=request.method == "HEAD"
        )
        return httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(content),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def get_raw(
        self, key: tuple[str, str, int], head: bytes, timeouts: dict[str, float | None]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One GET whose request head is already built: ``(status, headers, body)``.

        The exporter's hot path (one GET per trace) skips building ``httpx.Request`` and
        ``httpx.Response`` objects. Errors are the same httpx exceptions as
        :meth:`handle_async_request` raises (without a request attached).
        """
        if self._closed:
            raise httpx.ConnectError("the transport is closed")
        return await self._send_payload(key, None, head, timeouts)

    async def _send_payload(
        self,
        key: tuple[str, str, int],
        request: httpx.Request | None,
        payload: bytes,
        timeouts: dict[str, float | None],
        *,
        head_only: bool = False,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        connection, reused = self._take(key), True
        if connection is None:
            connection, reused = await self._connect(key, request, timeouts.get("connect")), False
        try:
            try:
                return await self._exchange(
                    connection, key, request, payload, timeouts, head_only=head_only
                )
            except _StaleConnectionError:
                if not reused:
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response.", request=request
                    ) from None
            connection = await self._connect(key, request, timeouts.get("connect"))
            try:
                return await self._exchange(
                    connection, key, request, payload, timeouts, head_only=head_only
                )
            except _StaleConnectionError:
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                ) from None
        except TimeoutError as exc:
            raise httpx.ReadTimeout("timed out reading the response", request=request) from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _head(request: httpx.Request) -> bytes:
        url = request.url
        target = url.raw_path  # path and query, already encoded
        lines = [b"%s %s HTTP/1.1" % (request.method.encode(), target)]
        lines.extend(b"%s: %s" % (name, value) for name, value in request.headers.raw)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()  # LIFO: the most recently used is the least likely stale
            if connection.usable():
                return connection
            connection.close()
        return None

    def _give_back(self, key: tuple[str, str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or len(idle) >= self._max_keepalive or not connection.usable():
            connection.close()
        else:
            idle.append(connection)

    async def _connect(
        self,
        key: tuple[str, str, int],
        request: httpx.Request | None,
        connect_timeout: float | None,
    ) -> _Connection:
        scheme, host, port = key
        context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            context = self._ssl
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, limit=_MAX_HEAD
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return _Connection(reader, writer)

    async def _exchange(
        self,
        connection: _Connection,
        key: tuple[str, str, int],
        request: httpx.Request | None,
        payload: bytes,
        timeouts: dict[str, float | None],
        *,
        head_only: bool = False,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        reader, writer = connection.reader, connection.writer
        done = False
        try:
            writer.write(payload)
            async with asyncio.timeout(timeouts.get("read")):
                try:
                    raw_head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial:
                        raise _StaleConnectionError from None
                    raise httpx.RemoteProtocolError(
                        "Server disconnected in the middle of the response head.", request=request
                    ) from None
                except asyncio.LimitOverrunError as exc:
                    raise httpx.RemoteProtocolError(
                        "Response head too large.", request=request
                    ) from exc
                status, headers, keep_alive, length, chunked = _parse_head(raw_head, request)
                if head_only or status in _NO_BODY_STATUSES or status < 200:
                    content = b""
                elif chunked:
                    content = b"".join([part async for part in _chunks(reader, request)])
                elif length is not None:
                    content = await reader.readexactly(length)
                else:
                    content = await reader.read()
                    keep_alive = False
            done = True
        except asyncio.IncompleteReadError as exc:
            raise httpx.RemoteProtocolError(
                "Server disconnected in the middle of the response body.", request=request
            ) from exc
        finally:
            if not done:
                connection.close()
        if keep_alive:
            self._give_back(key, connection)
        else:
            connection.close()
        return status, headers, content


class _StaleConnectionError(Exception):
    """The server closed the connection before sending a byte of the response."""


def _parse_head(
    raw: bytes, request: httpx.Request | None
) -> tuple[int, list[tuple[bytes, bytes]], bool, int | None, bool]:
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}", request=request)
    status = int(parts[1])
    keep_alive = parts[0] == b"HTTP/1.1"
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise httpx.RemoteProtocolError("malformed header line", request=request)
        name = name.strip()
        value = value.strip()
        headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            if not value.isdigit():
                raise httpx.RemoteProtocolError("bad Content-Length", request=request)
            length = int(value)
        elif lower == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif lower == b"connection":
            token = value.lower()
            if b"close" in token:
                keep_alive = False
            elif b"keep-alive" in token:
                keep_alive = True
    return status, headers, keep_alive, length, chunked


async def _chunks(
    reader: asyncio.StreamReader, request: httpx.Request | None
) -> AsyncIterator[bytes]:
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise httpx.RemoteProtocolError("bad chunk size", request=request) from None
        if size == 0:
            # Trailers, if any, end with an empty line.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return
        yield await reader.readexactly(size)
        await reader.readexactly(2)
