"""A Unix stream socket that takes JSON lines the way Letta's socket backend sends them.

Letta 0.16.8 (``provider_trace_backends/socket.py``) opens one connection per provider trace from
a background thread, sends ``json.dumps(record, default=str) + "\\n"`` and closes, never reading
an answer. So the listener only frames: it splits each connection's bytes at newlines and hands
every line to ``on_line`` as it is complete; it parses nothing (the journal keeps the bytes as they
came, and the reader parses them). What cannot be a record is handed to ``on_reject`` with a
reason (``too_large``, ``timeout``, ``truncated``) and the first bytes, and the connection (or
the next line on it) goes on.

The path: its directory is created; a stale socket file (no one answers a connection on it) is
replaced; a regular file, a directory, or a socket some process still serves is refused with
:class:`~exporter.errors.SocketPathError` / :class:`~exporter.errors.SocketInUseError`. The
socket is bound, given its mode, and only then listens, so no connection is accepted before
the mode is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..errors import SocketInUseError, SocketPathError

__all__ = ["ListenerOptions", "SocketListener"]

_logger = logging.getLogger(__name__)

#: Letta's protocol v3 allows records up to 128 MB (its receiver's buffer).
MAX_RECORD_BYTES: Final = 128 * 1024 * 1024
#: The longest path an AF_UNIX address holds on Linux (108 bytes with the terminating NUL).
_MAX_PATH_BYTES: Final = 107
#: Bytes asked of one ``recv`` (a 20 KB record comes in one).
_RECV_BYTES: Final = 256 * 1024
#: Connections accepted per wake-up before other work gets a turn.
_ACCEPT_BATCH: Final = 64
_ACCEPT_BACKOFF: Final = 0.1
_REPORT_INTERVAL: Final = 10.0
#: How much of a rejected line is kept for the dead-letter file.
RAW_KEEP_BYTES: Final = 64 * 1024

#: ``on_line(line)``: a complete line. It may return an awaitable: reading on that connection
#: pauses until it is done (the journal's backpressure).
LineHandler = Callable[[bytes], Awaitable[None] | None]
#: ``on_reject(reason, detail, raw_head)``.
RejectHandler = Callable[[str, str, bytes], None]


@dataclass(frozen=True, slots=True)
class ListenerOptions:
    """How the socket is made and how long a connection may take.

    Args:
        mode: the socket file's permission bits (0660: only the owner and its group may write).
        max_record_bytes: the longest line taken (without its newline); longer is ``too_large``.
        idle_timeout: seconds a connection may go without sending; an unfinished line is then
            rejected as ``timeout``. Letta's sender gives itself 60 s for a large payload.
        backlog: pending connections the kernel queues (capped by net.core.somaxconn). Letta
            connects with a timeout, so a full backlog fails its connect at once: a lost record.
    """

    mode: int = 0o660
    max_record_bytes: int = MAX_RECORD_BYTES
    idle_timeout: float = 60.0
    backlog: int = 4096


class _Connection:
    """One sender's connection: reads it without a transport, frames lines, tracks activity.

    Why not an ``asyncio.Protocol``: Letta opens a connection per record, so the per-connection
    cost is the listener's cost. A record has usually arrived whole (and the sender closed) by
    the time it is accepted, so it is read at once, without registering with the selector or
    building a transport; only a connection that has not sent everything yet is watched.
    """

    __slots__ = (
        "_buffer",
        "_discarding",
        "_head",
        "_listener",
        "_size",
        "closed",
        "last_active",
        "paused",
        "sock",
        "watched",
    )

    def __init__(self, listener: SocketListener, sock: socket.socket) -> None:
        self._listener = listener
        self._buffer: list[bytes] = []
        self._size = 0
        self._discarding = False
        self._head = b""
        self.last_active = time.monotonic()
        self.sock = sock
        self.watched = False
        self.paused = False
        self.closed = False

    def on_readable(self) -> None:
        """Read what there is; at the end of the stream, finish the last line and close."""
        while not self.paused and not self.closed:
            try:
                data = self.sock.recv(_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                if not self.watched:
                    self._listener.loop.add_reader(self.sock.fileno(), self.on_readable)
                    self.watched = True
                return
            except OSError:
                self._finish()  # a reset mid-line: what came is still judged, not dropped
                return
            if not data:
                self._finish()
                return
            self.data_received(data)

    def _finish(self) -> None:
        if self._size or self._discarding:
            line = b"".join(self._buffer)
            self._buffer = []
            if self._discarding:
                self._reject_oversized()
            else:
                # Letta always ends its line; a sender that closes without one may still have
                # sent a whole record, so it is kept and the reader judges it.
                self._size = 0
                self._line(line)
        self.close()

    def pause(self) -> None:
        """Stop reading until :meth:`resume` (the journal's backpressure)."""
        self.paused = True
        self._unwatch()

    def resume(self) -> None:
        """Read again."""
        self.paused = False
        if not self.closed:
            self.on_readable()

    def _unwatch(self) -> None:
        if self.watched:
            self._listener.loop.remove_reader(self.sock.fileno())
            self.watched = False

    def close(self) -> None:
        """Forget the connection and close its socket."""
        if self.closed:
            return
        self._unwatch()
        self.closed = True
        self._listener.connections.discard(self)
        self.sock.close()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        start = 0
        cap = self._listener.options.max_record_bytes
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            if self._discarding:
                self._size += newline - start
                self._reject_oversized()
            elif self._size + newline - start > cap:
                self._size += newline - start
                self._head = self._head_of(data[start:newline])
                self._reject_oversized()
            elif self._buffer:
                self._buffer.append(data[start:newline])
                line = b"".join(self._buffer)
                self._buffer = []
                self._size = 0
                self._line(line)
            else:
                self._line(data[start:newline])
            start = newline + 1
        if start < len(data):
            rest = data[start:] if start else data
            self._size += len(rest)
            if self._discarding:
                return
            if self._size > cap:
                self._head = self._head_of(rest)
                self._buffer = []
                self._discarding = True
            else:
                self._buffer.append(rest)

    def _head_of(self, last: bytes) -> bytes:
        joined = b"".join(self._buffer)
        return (joined + last[: max(0, RAW_KEEP_BYTES - len(joined))])[:RAW_KEEP_BYTES]

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        waiter = self._listener.on_line(line)
        if waiter is not None and not self.closed:
            self.pause()

            async def resume() -> None:
                try:
                    await waiter
                finally:
                    self.resume()

            self._listener.spawn(resume())

    def _reject_oversized(self) -> None:
        size, head = self._size, self._head
        self._buffer, self._size, self._discarding, self._head = [], 0, False, b""
        cap = self._listener.options.max_record_bytes
        self._listener.on_reject(
            "too_large", f"a line of {size} bytes, more than the {cap} allowed", head
        )

    def expire(self) -> None:
        """The connection went quiet past the timeout: reject what it started, close it."""
        if self._size or self._discarding:
            head = self._head if self._discarding else b"".join(self._buffer)[:RAW_KEEP_BYTES]
            size = self._size
            self._buffer, self._size, self._discarding, self._head = [], 0, False, b""
            timeout = self._listener.options.idle_timeout
            self._listener.on_reject(
                "timeout",
                f"the connection sent {size} bytes and no end of line within {timeout:g} s",
                head,
            )
        self.close()


class SocketListener:
    """Listens on a Unix stream socket and hands each complete line to ``on_line``.

    Args:
        path: the socket path.
        on_line: gets each complete line (see :data:`LineHandler`).
        on_reject: gets what could not be a line (see :data:`RejectHandler`).
        options: mode, size cap, timeout.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        on_line: LineHandler,
        on_reject: RejectHandler,
        options: ListenerOptions | None = None,
    ) -> None:
        self.path = Path(path)
        self.on_line = on_line
        self.on_reject = on_reject
        self.options = options or ListenerOptions()
        self.connections: set[_Connection] = set()
        self._sock: socket.socket | None = None
        self._accepting = False
        self._accept_failed_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._inode: int | None = None

    @property
    def listening(self) -> bool:
        """Whether the socket is bound and accepting (for /readyz)."""
        return self._sock is not None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the listener runs on (after :meth:`start`)."""
        if self._loop is None:
            raise RuntimeError("SocketListener.start() was not called")
        return self._loop

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run a small task tied to the listener (kept referenced until done)."""

        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Bind and listen (see the module docstring for what happens to an existing path).

        Raises:
            SocketPathError: the path is not usable (a file, a directory, too long, no access).
            SocketInUseError: another listener answers on the path.
        """
        sock = await asyncio.to_thread(self._bind)
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._watch_accept()
        self._sweeper = self._loop.create_task(self._sweep())
        _logger.info(
            "listening for Letta's provider traces on %s (mode %s)",
            self.path,
            oct(self.options.mode),
        )

    def _watch_accept(self) -> None:
        if self._sock is not None and not self._accepting:
            self.loop.add_reader(self._sock.fileno(), self._accept)
            self._accepting = True

    def _accept(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of file descriptors or buffers: pause accepting a moment (the kernel keeps
                # the backlog) instead of spinning on a socket that stays readable.
                now = time.monotonic()
                if now - self._accept_failed_at > _REPORT_INTERVAL:
                    self._accept_failed_at = now
                    _logger.error("socket %s: cannot accept (%s)", self.path, exc.strerror)
                self.loop.remove_reader(sock.fileno())
                self._accepting = False
                self.loop.call_later(_ACCEPT_BACKOFF, self._watch_accept)
                return
            conn.setblocking(False)
            connection = _Connection(self, conn)
            self.connections.add(connection)
            connection.on_readable()

    def _bind(self) -> socket.socket:
        path = str(self.path)
        if len(os.fsencode(path)) > _MAX_PATH_BYTES:
            raise SocketPathError(
                path, f"longer than the {_MAX_PATH_BYTES} bytes a Unix socket address holds"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SocketPathError(path, f"cannot create its directory: {exc.strerror}") from exc
        _clear_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, self.options.mode)
            self._inode = os.stat(path).st_ino
            sock.listen(self.options.backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise SocketPathError(path, exc.strerror or str(exc)) from exc
        return sock

    async def _sweep(self) -> None:
        timeout = self.options.idle_timeout
        interval = max(0.05, min(1.0, timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for connection in [c for c in self.connections if now - c.last_active > timeout]:
                connection.expire()

    async def aclose(self) -> None:
        """Stop accepting, end the open connections, remove the socket file if it is ours."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._sock is not None:
            if self._accepting:
                self.loop.remove_reader(self._sock.fileno())
                self._accepting = False
            self._sock.close()
            self._sock = None
            for connection in list(self.connections):
                connection.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        self._inode = None


def _clear_stale(path: str) -> None:
    """Remove a socket file no one serves; refuse anything else that is in the way."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SocketPathError(path, exc.strerror or str(exc)) from exc
    if not stat.S_ISSOCK(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a socket"
        raise SocketPathError(path, f"{kind}; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # stale: left by a process that died without removing it
    except OSError as exc:
        raise SocketPathError(path, f"cannot check the existing socket: {exc.strerror}") from exc
    else:
        raise SocketInUseError(path)
    finally:
        probe.close()
    _logger.info("replacing the stale socket %s (no listener answered)", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
