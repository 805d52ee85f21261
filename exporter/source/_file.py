"""The file source: ProviderTraces saved as JSON or JSON lines (``-`` reads stdin).

Accepted shapes, detected from the content (not the file name):

* one JSON object, or a JSON array of them (read whole: a JSON document cannot be streamed);
* JSON lines, one record per line, blank lines ignored (streamed: one line in memory at a time).

Each record is a ProviderTrace as ``GET /v1/steps/{id}/trace`` returns it, or a recorded fixture
``{"step": ..., "trace": ..., "metrics": ...}`` whose ``trace`` is used. A fixture whose trace
is ``null`` (Letta wrote none) yields nothing; such records are counted and logged, not hidden.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Annotated, BinaryIO, Final

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ..errors import RecordInvalidError, SourceError
from ..models import (
    NESTED_TOO_DEEPLY,
    Agent,
    ProviderTrace,
    Run,
    Step,
    StepMetrics,
    load_json,
    parse_record,
)
from ._contract import CaughtUp, Event, Found, Unreadable

__all__ = ["FileSource", "TraceFileReader", "TraceRecord", "read_trace_file"]

_logger = logging.getLogger(__name__)

_BOM: Final = b"\xef\xbb\xbf"
_STDIN: Final = "-"
#: The tokens that matter for splitting a JSON array into its items: whole strings (so brackets
#: and commas inside them are skipped) and the structural characters.
_TOKENS: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]', re.DOTALL)


class _Recorded(BaseModel):
    """A recorded fixture: the step, its trace (possibly null) and its metrics, with the agent
    and the run when they were recorded too."""

    model_config = ConfigDict(extra="allow", frozen=True)

    trace: ProviderTrace | None
    step: Step | None = None
    metrics: StepMetrics | None = None
    agent: Agent | None = None
    run: Run | None = None


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """A trace with what the file recorded beside it (``{"step", "trace", "metrics", "agent",
    "run"}``); a plain ProviderTrace line has the trace alone."""

    trace: ProviderTrace
    step: Step | None = None
    metrics: StepMetrics | None = None
    agent: Agent | None = None
    run: Run | None = None


# A plain trace is tried first: it is the common case and the cheaper miss.
_Entry = Annotated[ProviderTrace | _Recorded, Field(union_mode="left_to_right")]
_ENTRY: Final[TypeAdapter[ProviderTrace | _Recorded]] = TypeAdapter(_Entry)
_ENTRIES: Final[TypeAdapter[list[ProviderTrace | _Recorded]]] = TypeAdapter(list[_Entry])


def read_trace_file(
    path: Path | str, *, on_invalid: Callable[[RecordInvalidError], None] | None = None
) -> TraceFileReader:
    """Read ProviderTraces from a JSON or JSON lines file, or stdin for ``-``.

    Args:
        path: the file, or ``-`` for standard input.
        on_invalid: called with each record that is not a ProviderTrace, which is then skipped
            (a dump with one damaged line still exports the rest); without it such a record
            ends the iteration with the error.

    Returns:
        An iterator of the traces, in file order. It also counts what it read
        (``records``, ``null_traces``).

    Raises:
        SourceError: the file cannot be opened (raised here, before iterating).
        RecordInvalidError: (while iterating) a record is not valid JSON or not a
            ProviderTrace; the message names the line (JSON lines) or item (array).
    """
    return TraceFileReader(path, on_invalid=on_invalid)


class TraceFileReader(Iterator[ProviderTrace]):
    """Iterates over the traces of one file; see :func:`read_trace_file`.

    Attributes:
        name: the file name (``<stdin>`` for ``-``).
        records: records read so far (with or without a trace).
        null_traces: recorded fixtures whose trace was ``null``, skipped.
    """

    def __init__(
        self, path: Path | str, *, on_invalid: Callable[[RecordInvalidError], None] | None = None
    ) -> None:
        self.name = "<stdin>" if str(path) == _STDIN else str(path)
        self.records = 0
        self.null_traces = 0
        self.invalid = 0
        self._on_invalid = on_invalid
        self._owned = str(path) != _STDIN
        if self._owned:
            try:
                self._stream: BinaryIO = Path(path).open("rb")  # noqa: SIM115 - closed by close()
            except OSError as exc:
                raise SourceError(f"cannot read {self.name}: {exc.strerror or exc}") from exc
        else:
            self._stream = sys.stdin.buffer
        self._peeked = b""
        self._traces = self._read()

    def __iter__(self) -> TraceFileReader:
        return self

    def __next__(self) -> ProviderTrace:
        return next(self._traces).trace

    def with_context(self) -> Iterator[TraceRecord]:
        """The same records with the step, metrics, agent and run recorded beside each trace
        (iterate one or the other: they share the file position)."""
        return self._traces

    def close(self) -> None:
        """Close the file (not stdin); iterating to the end does it too."""
        self._traces.close()
        if self._owned:
            self._stream.close()

    def __enter__(self) -> TraceFileReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------
    def _read(self) -> Generator[TraceRecord, None, None]:
        try:
            yield from self._read_stream()
        finally:
            if self._owned:
                self._stream.close()
        if self.null_traces:
            _logger.info(
                "%s: %d of %d records had no trace (null) and were skipped",
                self.name,
                self.null_traces,
                self.records,
            )

    def _read_stream(self) -> Iterator[TraceRecord]:
        lines = iter(self._stream)
        number = 0
        first = b""
        for line in lines:
            number += 1
            if number == 1 and line.startswith(_BOM):
                line = line[len(_BOM) :]
            if line.strip():
                first = line
                break
        if not first:
            return
        if first.lstrip().startswith(b"["):
            yield from self._document(first + self._stream.read())
            return
        try:
            entry = _ENTRY.validate_json(first)
        except ValidationError as exc:
            if exc.errors(include_url=False)[0].get("type") != "json_invalid":
                self._invalid(_explain(first, f"line {number} of {self.name}"), exc)
                entry = None
            elif self._second_line_is_record(lines):
                # A damaged first line of a JSON lines file.
                self._invalid(_explain(first, f"line {number} of {self.name}"), exc)
                entry = None
            else:
                # Not one complete JSON value on the line: a pretty-printed document.
                yield from self._document(first + self._peeked + self._stream.read())
                return
        if entry is not None:
            yield from self._take(entry)
        if self._peeked:
            lines = itertools.chain([self._peeked], lines)
        for line in lines:
            number += 1
            if not line.strip():
                continue
            try:
                entry = _ENTRY.validate_json(line)
            except ValidationError as exc:
                self._invalid(_explain(line, f"line {number} of {self.name}"), exc)
                continue
            yield from self._take(entry)

    def _second_line_is_record(self, lines: Iterator[bytes]) -> bool:
        """After a first line that is not JSON: is the next one a complete JSON object?"""
        self._peeked = next(lines, b"")
        text = self._peeked.strip()
        return text.startswith(b"{") and text.endswith(b"}") and _is_json(text)

    def _invalid(self, error: RecordInvalidError, cause: Exception) -> None:
        self.invalid += 1
        if self._on_invalid is None:
            raise error from cause
        self._on_invalid(error)

    def _document(self, raw: bytes) -> Iterator[TraceRecord]:
        if raw.lstrip().startswith(b"["):
            try:
                entries = _ENTRIES.validate_json(raw)
            except ValidationError as exc:
                if self._on_invalid is None:
                    raise self._explain_item(raw, exc) from exc
                # Error path: item by item, reporting the bad ones. The items are split without
                # parsing the array, so one unreadable item (truncated, not UTF-8, nested too
                # deeply) does not take the others with it.
                items, rest = _array_items(raw)
                for index, text in enumerate(items):
                    try:
                        entry = _ENTRY.validate_json(text)
                    except ValidationError as item_exc:
                        self._invalid(_explain(text, f"item {index + 1} of {self.name}"), item_exc)
                        continue
                    yield from self._take(entry)
                if rest:
                    where = f"{self.name} after item {len(items)}"
                    self._invalid(_explain(rest, where), exc)
                return
            for entry in entries:
                yield from self._take(entry)
            return
        try:
            entry = _ENTRY.validate_json(raw)
        except ValidationError as exc:
            # A file of one record: that record is reported like any other bad one.
            self._invalid(_explain(raw, self.name), exc)
            return
        yield from self._take(entry)

    def _take(self, entry: ProviderTrace | _Recorded) -> Iterator[TraceRecord]:
        self.records += 1
        if isinstance(entry, ProviderTrace):
            yield TraceRecord(entry)
        elif entry.trace is not None:
            yield TraceRecord(entry.trace, entry.step, entry.metrics, entry.agent, entry.run)
        else:
            self.null_traces += 1
            _logger.debug("%s: record %d has a null trace, skipped", self.name, self.records)

    def _explain_item(self, raw: bytes, exc: ValidationError) -> RecordInvalidError:
        loc = exc.errors(include_url=False)[0].get("loc", ())
        items, _ = _array_items(raw)
        if loc and isinstance(loc[0], int) and loc[0] < len(items):
            return _explain(items[loc[0]], f"item {loc[0] + 1} of {self.name}")
        return _explain(raw, self.name)


def _array_items(raw: bytes) -> tuple[list[bytes], bytes]:
    """Split a JSON array into its items' bytes without parsing them (so without recursion).

    Returns:
        The complete items, and what is left that is not one (an unterminated last item, or
        anything after the closing bracket), empty when the array is well formed.
    """
    items: list[bytes] = []
    depth = 0
    start = raw.index(b"[") + 1
    for match in _TOKENS.finditer(raw, start - 1):
        token = match.group()
        if token.startswith(b'"'):
            continue
        if token in (b"[", b"{"):
            depth += 1
        elif token in (b"]", b"}"):
            depth -= 1
            if depth == 0:
                if last := raw[start : match.start()].strip():
                    items.append(last)
                return items, raw[match.end() :].strip()
        elif depth == 1:  # a comma between two items
            items.append(raw[start : match.start()].strip())
            start = match.end()
    return items, raw[start:].strip()


def _loads(raw: bytes) -> object:
    try:
        return load_json(raw)
    except ValueError:
        return None


def _is_json(text: bytes) -> bool:
    return _loads(text) is not None


def _explain(raw: bytes, where: str) -> RecordInvalidError:
    """Say why a record failed (error path only: parsing it again is fine here)."""
    try:
        data = load_json(raw)
    except ValueError as exc:
        reason = NESTED_TOO_DEEPLY if str(exc) == NESTED_TOO_DEEPLY else f"not valid JSON ({exc})"
        return RecordInvalidError("ProviderTrace", None, None, f"{reason} in {where}")
    prefix = ""
    if isinstance(data, dict) and "trace" in data and "request_json" not in data:
        # A recorded fixture: the trace inside it is what failed.
        try:
            prefix, raw = "trace.", json.dumps(data["trace"]).encode()
        except RecursionError:
            return RecordInvalidError(
                "ProviderTrace", None, "trace", f"{NESTED_TOO_DEEPLY} in {where}"
            )
    elif not isinstance(data, dict):
        return RecordInvalidError(
            "ProviderTrace", None, None, f"expected an object, got {type(data).__name__} in {where}"
        )
    try:
        parse_record(ProviderTrace, raw)
    except RecordInvalidError as inner:
        field = f"{prefix}{inner.field}" if inner.field else (prefix.rstrip(".") or None)
        return RecordInvalidError(inner.kind, inner.record_id, field, f"{inner.message} in {where}")
    return RecordInvalidError("ProviderTrace", None, None, f"unreadable record in {where}")


class FileSource:
    """A file of ProviderTraces as a :class:`~exporter.source.Source`.

    Every trace is a :class:`Found` (with the step, metrics, run and agent recorded beside it, if
    any),
    every damaged record an :class:`Unreadable` (reason ``invalid``), in file order, then
    :class:`CaughtUp`. The position is the number of records handled, so ``resume`` skips that
    many. A file does not grow while it is read: ``follow`` ends at :class:`CaughtUp` too. The
    file is read on the event loop (it is local and read ahead by the OS).

    Args:
        path: the file, or ``-`` for standard input.
    """

    name = "file"

    def __init__(self, path: Path | str) -> None:
        self._path = path
        self._reader: TraceFileReader | None = None

    def stream_key(self) -> str:
        return f"file:{self._path}"

    async def read(self, *, resume: str | None, follow: bool) -> AsyncIterator[Event]:
        """Events in file order, after the first ``resume`` records.

        Raises:
            SourceError: the file cannot be opened or read.
        """
        skip = int(resume) if resume else 0
        errors: deque[RecordInvalidError] = deque()
        reader = TraceFileReader(self._path, on_invalid=errors.append)
        self._reader = reader
        handled = 0
        try:
            for record in reader.with_context():
                while errors:
                    handled += 1
                    if handled > skip:
                        yield self._unreadable(errors.popleft(), handled)
                    else:
                        errors.popleft()
                handled += 1
                if handled > skip:
                    yield Found(
                        trace=record.trace,
                        step=record.step,
                        metrics=record.metrics,
                        run=record.run,
                        agent=record.agent,
                        position=str(handled),
                        origin=self.name,
                    )
            while errors:
                handled += 1
                error = errors.popleft()
                if handled > skip:
                    yield self._unreadable(error, handled)
        finally:
            reader.close()
        yield CaughtUp(position=str(handled))

    @staticmethod
    def _unreadable(error: RecordInvalidError, handled: int) -> Unreadable:
        return Unreadable(
            record_id=error.record_id,
            reason="invalid",
            detail=str(error),
            position=str(handled),
        )

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.close()
