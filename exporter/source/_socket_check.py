"""What the socket source counts (:class:`SocketStats`) and reports to ``check``
(:class:`SocketCheck`, :func:`check_socket`): whether the socket answers and when a record last
arrived, also from another process than the one serving it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..journal import Journal

__all__ = ["SocketCheck", "SocketStats", "check_socket"]


@dataclass(slots=True)
class SocketStats:
    """What the socket source counts (subclass it, or read it, to feed Prometheus).

    Attributes:
        received: records (lines) journaled.
        received_bytes: their bytes.
        invalid: lines that could not be read, by reason (counted when read back).
        refused: records refused because the journal was full.
        refused_bytes: their bytes.
        last_received: wall-clock time (epoch seconds) of the latest line, or ``None``.
    """

    received: int = 0
    received_bytes: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    refused_bytes: int = 0
    last_received: float | None = None

    def on_received(self, size: int) -> None:
        """A line was appended to the journal."""
        self.received += 1
        self.received_bytes += size
        self.last_received = time.time()

    def on_refused(self, size: int) -> None:
        """A line was refused: the journal is full."""
        self.refused += 1
        self.refused_bytes += size
        self.last_received = time.time()

    def on_invalid(self, reason: str) -> None:
        """A journaled line turned out not to be a record."""
        self.invalid[reason] = self.invalid.get(reason, 0) + 1


@dataclass(frozen=True, slots=True)
class SocketCheck:
    """What ``check`` reports about the listener.

    Attributes:
        path: the socket path.
        listening: this process serves it.
        is_socket: the path exists and is a socket.
        connectable: a connection to it was accepted.
        last_received: when the latest record arrived (``None``: none since start).
        received: records received since start.
        journal_depth: records journaled and not yet acknowledged.
    """

    path: str
    listening: bool
    is_socket: bool
    connectable: bool
    last_received: datetime | None
    received: int
    journal_depth: int

    def describe(self) -> str:
        """One line for ``check``."""
        if not self.connectable:
            state = "not accepting connections" if self.is_socket else "no socket there"
            return f"socket {self.path}: {state}"
        if self.last_received is None:
            seen = "no record yet (is Letta's socket backend on and pointed here?)"
        else:
            seen = f"latest record at {self.last_received.isoformat()}"
        depth = f"; {self.journal_depth} records journaled" if self.listening else ""
        return f"socket {self.path}: accepting connections; {seen}{depth}"


async def check_socket(
    path: Path,
    journal_dir: Path,
    stats: SocketStats,
    *,
    listening: bool,
    journal: Journal | None,
) -> SocketCheck:
    """Whether the socket at ``path`` is up and when a record last arrived.

    ``journal`` is ``None`` when this process does not serve the socket (the ``check``
    command while the sidecar runs): the latest arrival is then read from ``journal_dir``.
    """
    where = str(path)
    try:
        is_socket = stat.S_ISSOCK(os.stat(where).st_mode)
    except OSError:
        is_socket = False
    connectable = is_socket and await asyncio.to_thread(_can_connect, where)
    last = stats.last_received
    if last is None and journal is None:
        # Another process (the running sidecar) serves the socket: its journal's newest
        # segment was last written when its latest record was committed.
        last = await asyncio.to_thread(_journal_written_at, journal_dir)
    return SocketCheck(
        path=where,
        listening=listening,
        is_socket=is_socket,
        connectable=connectable,
        last_received=datetime.fromtimestamp(last, UTC) if last is not None else None,
        received=stats.received,
        journal_depth=journal.depth_records if journal else 0,
    )


def _journal_written_at(directory: Path) -> float | None:
    try:
        times = [p.stat().st_mtime for p in directory.glob("*.seg") if p.stat().st_size]
    except OSError:
        return None
    return max(times) if times else None


def _can_connect(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True
