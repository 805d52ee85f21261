"""A lean HTTP/1.1 keep-alive transport for the Letta client (an ``httpx`` transport).

Why: the exporter makes one GET per trace, so the per-request cost of the HTTP stack bounds its
throughput. httpx's default transport (httpcore over anyio) spends several times the CPU of
this one per request: every request walks the whole pool and asks each idle connection whether
it expired through anyio's typed attributes, plus lock and cancel-shield set-up (the figures are
in ``bench/RESULTS.md``, measured with ``python -m bench.transport``). Letta calls are plain
GETs with small headers, so this transport keeps only what they need: asyncio streams and a
LIFO pool of idle connections bounded by ``max_keepalive``.

The HTTP/1.1 framing itself is h11's (the state machine httpcore uses): informational ``1xx``
answers, ``Content-Length`` and chunked bodies, bodies delimited by the connection's end,
``HEAD``, ``204``/``304``, ``Connection: close`` and HTTP/1.0 are all its business, and a
connection goes back to the pool only when h11 says both sides are done with the exchange.
What this module adds:

* a cap on the body size (:class:`BodyTooLargeError`), so a runaway answer cannot exhaust
  memory;
* the read timeout applies to each read (as in httpcore), not to the whole answer, and the
  write timeout to each wait for the socket's buffer to drain (back-pressure on writes);
* a request sent on a reused keep-alive connection that the server had already closed (nothing
  at all came back) is sent once more on a fresh connection, only for ``GET`` and ``HEAD``:
  resending anything else could repeat its effect.

``httpx.AsyncClient`` stays the interface (base URL, headers, params, timeouts, response
decoding), so the rest of the source is unchanged and tests can still pass
``httpx.MockTransport``. Errors are httpx's own (``ConnectError``, ``ReadTimeout``,
``RemoteProtocolError``...), so the retry policy sees what it always saw. No proxies and no
HTTP/2: with a proxy in the environment :func:`lean_transport_applies` answers False and the
client keeps httpx's default transport.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from typing import Final

import h11
import httpx

__all__ = ["DEFAULT_MAX_BODY", "BodyTooLargeError", "LeanTransport", "lean_transport_applies"]

#: Largest response head read (status line and headers).
_MAX_HEAD: Final = 64 * 1024
#: Largest response body read by default: far above any provider trace Letta stores.
DEFAULT_MAX_BODY: Final = 256 * 1024 * 1024
_READ_SIZE: Final = 256 * 1024
#: Methods safe to send twice (RFC 9110 9.2.2): only these are resent on a fresh connection.
_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD"})

HeaderList = list[tuple[bytes, bytes]]
Key = tuple[str, str, int]


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


class BodyTooLargeError(httpx.RemoteProtocolError):
    """The server's answer has a body larger than the transport reads.

    Args:
        limit: the cap, in bytes.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"response body larger than {limit} bytes")
        self.limit = limit


class _StaleConnectionError(Exception):
    """The server closed a reused connection before sending a byte of the response."""


class _Connection:
    __slots__ = ("reader", "state", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.state = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)

    def usable(self) -> bool:
        return (
            self.state.our_state is h11.IDLE
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        self.writer.close()


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive on asyncio streams, framed by h11.

    Args:
        max_keepalive: idle connections kept for reuse (the client's concurrency).
        ssl_context: for ``https`` URLs (default: httpx's, certifi and ``SSL_CERT_FILE``).
        max_body: the largest response body read; a larger one is a
            :class:`BodyTooLargeError`.
    """

    def __init__(
        self,
        *,
        max_keepalive: int = 8,
        ssl_context: ssl.SSLContext | None = None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self._max_keepalive = max_keepalive
        self._ssl = ssl_context
        self._max_body = max_body
        self._idle: dict[Key, list[_Connection]] = {}
        self._closed = False

    @property
    def max_body(self) -> int:
        """The largest response body read, in bytes."""
        return self._max_body

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        headers = list(request.headers.raw)
        body = request.content
        if body and not any(name.lower() == b"content-length" for name, _ in headers):
            headers.append((b"Content-Length", b"%d" % len(body)))
        status, reason, response_headers, content = await self._send(
            key,
            request.method.encode("ascii"),
            url.raw_path,
            headers,
            body,
            request.extensions.get("timeout") or {},
            request,
        )
        return httpx.Response(
            status,
            headers=response_headers,
            stream=httpx.ByteStream(content),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    async def get_raw(
        self, key: Key, target: bytes, headers: HeaderList, timeouts: dict[str, float | None]
    ) -> tuple[int, HeaderList, bytes]:
        """One GET without ``httpx.Request``/``Response`` objects: ``(status, headers, body)``.

        The exporter's hot path (one GET per trace). ``headers`` must include ``Host``. Errors
        are the same httpx exceptions as :meth:`handle_async_request` raises (without a request
        attached). The body is returned as sent: any ``Content-Encoding`` is the caller's.
        """
        status, _, response_headers, content = await self._send(
            key, b"GET", target, headers, b"", timeouts, None
        )
        return status, response_headers, content

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    # ------------------------------------------------------------------ internals
    async def _send(
        self,
        key: Key,
        method: bytes,
        target: bytes,
        headers: HeaderList,
        body: bytes,
        timeouts: dict[str, float | None],
        request: httpx.Request | None,
    ) -> tuple[int, bytes, HeaderList, bytes]:
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        try:
            event = h11.Request(method=method, target=target, headers=headers)
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        connection = self._take(key)
        if connection is not None:
            try:
                return await self._exchange(
                    connection, key, event, body, timeouts, request, reused=True
                )
            except _StaleConnectionError:
                if method not in _IDEMPOTENT:
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response.", request=request
                    ) from None
        connection = await self._connect(key, request, timeouts.get("connect"))
        try:
            return await self._exchange(
                connection, key, event, body, timeouts, request, reused=False
            )
        except _StaleConnectionError:  # pragma: no cover - raised for reused connections only
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from None

    def _take(self, key: Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()  # LIFO: the most recently used is the least likely stale
            if connection.usable():
                return connection
            connection.close()
        return None

    def _give_back(self, key: Key, connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or len(idle) >= self._max_keepalive or not connection.usable():
            connection.close()
        else:
            idle.append(connection)

    async def _connect(
        self, key: Key, request: httpx.Request | None, connect_timeout: float | None
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
                    host, port, ssl=context, limit=_READ_SIZE
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"connecting to {host}:{port} timed out", request=request
            ) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        return _Connection(reader, writer)

    async def _exchange(
        self,
        connection: _Connection,
        key: Key,
        event: h11.Request,
        body: bytes,
        timeouts: dict[str, float | None],
        request: httpx.Request | None,
        *,
        reused: bool,
    ) -> tuple[int, bytes, HeaderList, bytes]:
        done = False
        try:
            result = await self._converse(connection, event, body, timeouts, request, reused)
            done = True
        finally:
            if not done:
                connection.close()
        state = connection.state
        if state.our_state is h11.DONE and state.their_state is h11.DONE:
            state.start_next_cycle()
            self._give_back(key, connection)
        else:
            # MUST_CLOSE (Connection: close, HTTP/1.0, a body ended by the connection's end).
            connection.close()
        return result

    async def _converse(
        self,
        connection: _Connection,
        event: h11.Request,
        body: bytes,
        timeouts: dict[str, float | None],
        request: httpx.Request | None,
        reused: bool,
    ) -> tuple[int, bytes, HeaderList, bytes]:
        state, reader, writer = connection.state, connection.reader, connection.writer
        loop = asyncio.get_running_loop()
        read_timeout = timeouts.get("read")
        received = False
        writing = True
        try:
            # One timeout context, moved before each wait: a deadline per read (or drain), not
            # one over the whole answer, without a new timer object per read.
            async with asyncio.timeout(None) as deadline:
                payload = state.send(event) or b""
                if body:
                    payload += state.send(h11.Data(data=body)) or b""
                payload += state.send(h11.EndOfMessage()) or b""
                writer.write(payload)
                if writer.transport.get_write_buffer_size() > 0:
                    # More than the socket took at once: wait for it to drain (back-pressure).
                    deadline.reschedule(_when(loop, timeouts.get("write")))
                    await writer.drain()
                writing = False
                status, reason, size = 0, b"", 0
                headers: HeaderList = []
                parts: list[bytes] = []
                while True:
                    item = state.next_event()
                    if item is h11.NEED_DATA:
                        deadline.reschedule(_when(loop, read_timeout))
                        data = await reader.read(_READ_SIZE)
                        if not data and not received and reused:
                            raise _StaleConnectionError
                        received = True
                        state.receive_data(data)
                    elif isinstance(item, h11.Response):
                        status, reason = item.status_code, item.reason
                        headers = list(item.headers.raw_items())
                    elif isinstance(item, h11.Data):
                        size += len(item.data)
                        if size > self._max_body:
                            raise BodyTooLargeError(self._max_body)
                        parts.append(item.data)
                    elif isinstance(item, h11.EndOfMessage):
                        break
                    elif isinstance(item, h11.ConnectionClosed):
                        raise httpx.RemoteProtocolError(
                            "Server disconnected without sending a response.", request=request
                        )
                    # else h11.InformationalResponse (100, 103...): not the answer; read on.
        except TimeoutError as exc:
            if writing:
                raise httpx.WriteTimeout("timed out sending the request", request=request) from exc
            raise httpx.ReadTimeout("timed out reading the response", request=request) from exc
        except (ConnectionResetError, BrokenPipeError) as exc:
            if not received and reused:
                raise _StaleConnectionError from None
            raise httpx.ReadError("the server reset the connection", request=request) from exc
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        return status, reason, headers, b"".join(parts)


def _when(loop: asyncio.AbstractEventLoop, timeout: float | None) -> float | None:
    return None if timeout is None else loop.time() + timeout
