"""The counted-once ledger: which delivered spans the GenAI metrics have already counted.

Metrics are recorded when the collector accepts a span batch, so a re-send inside one run counts
nothing twice. Across runs a re-export can deliver the same spans again (a second ``export`` over
the same window, the API poll re-shipping what the socket shipped): the ledger remembers the span
keys already counted so that those add nothing.

File format: one key per line, ``{trace_id:032x}{span_id:016x}`` (48 hex digits), appended in
delivery order with one ``write`` and an ``fsync`` per batch. A line torn by a kill is not 48 hex
digits and is skipped on load. The ledger keeps the newest ``capacity`` keys: when the file holds
twice that, it is rewritten with the newest ``capacity`` (temporary file, fsync, rename). A span
older than the newest ``capacity`` counted ones is counted again if it is re-exported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Final

__all__ = ["CountedLedger", "span_key"]

_logger = logging.getLogger(__name__)

DEFAULT_CAPACITY: Final = 100_000
_KEY_LENGTH: Final = 48
_KEY: Final = re.compile(r"^[0-9a-f]{48}$")


def span_key(trace_id: int, span_id: int) -> str:
    """The ledger key of a span: its trace id and span id in hex."""
    return f"{trace_id:032x}{span_id:016x}"


class CountedLedger:
    """A bounded, ordered set of counted span keys, persisted to an append-only file.

    Args:
        path: the file (``None``: in memory only, for one run).
        capacity: how many keys to keep, newest first.

    Raises:
        OSError: the file exists and cannot be read.
    """

    def __init__(self, path: Path | str | None = None, *, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._path = Path(path) if path is not None else None
        self._capacity = capacity
        # Keys as 192-bit ints (trace id, span id): a third of the memory of their hex strings.
        self._keys: set[int] = set()
        self._order: deque[int] = deque()
        self._lines_in_file = 0
        self._write_failed = False
        self._torn_tail = False  # the file ends inside a line (a kill during an append)
        if self._path is not None and self._path.exists():
            self._load(self._path)

    @property
    def path(self) -> Path | None:
        """The ledger file."""
        return self._path

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and _KEY.match(key) is not None and int(key, 16) in self._keys

    def contains(self, trace_id: int, span_id: int) -> bool:
        """Whether the span was counted (no string built: the hot path)."""
        return (trace_id << 64 | span_id) in self._keys

    def _load(self, path: Path) -> None:
        text = path.read_bytes().decode("ascii", "replace")
        lines = text.split("\n")
        self._torn_tail = lines[-1] != ""  # the file ends inside a line (a kill during an append)
        if not self._torn_tail:
            lines.pop()
        self._lines_in_file = len(lines)
        for line in lines:
            if len(line) == _KEY_LENGTH and _KEY.match(line):
                self._remember(line)

    def _remember(self, key: str) -> None:
        value = int(key, 16)
        if value not in self._keys:
            self._keep(value)

    def _keep(self, value: int) -> None:
        self._keys.add(value)
        self._order.append(value)
        while len(self._order) > self._capacity:
            self._keys.discard(self._order.popleft())

    def add(self, keys: Iterable[str]) -> None:
        """Remember ``keys`` (see :func:`span_key`) as counted and persist them before returning.

        A file that cannot be written is logged once (the keys stay remembered for this run);
        the metrics never stop the traces.
        """
        new: list[str] = []
        for key in keys:
            value = int(key, 16)
            if value not in self._keys:
                self._keep(value)
                new.append(key)
        if self._path is None or not new:
            return
        try:
            if self._lines_in_file + len(new) > 2 * self._capacity:
                self._rewrite(self._path)
            else:
                self._append(self._path, new)
        except OSError as exc:
            if not self._write_failed:
                _logger.warning(
                    "cannot write the metrics ledger %s (%s): a re-export after a restart may "
                    "count these calls again",
                    self._path,
                    exc.strerror or exc,
                )
            self._write_failed = True
            return
        self._write_failed = False

    def _append(self, path: Path, keys: list[str]) -> None:
        data = ("\n" if self._torn_tail else "") + "".join(f"{key}\n" for key in keys)
        with path.open("ab") as file:
            file.write(data.encode("ascii"))
            file.flush()
            os.fsync(file.fileno())
        self._torn_tail = False
        self._lines_in_file += len(keys)

    def _rewrite(self, path: Path) -> None:
        temporary = path.with_name(f".{path.name}.tmp")
        data = "".join(f"{key:048x}\n" for key in self._order).encode("ascii")
        try:
            with temporary.open("wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        self._lines_in_file = len(self._keys)
        self._torn_tail = False
