"""OTLP JSON lines: the format the Collector's ``file`` exporter writes and ``otlpjsonfile`` reads.

One ``ExportTraceServiceRequest`` per line, in the protobuf JSON mapping with the OTLP/JSON
exceptions: field names in lowerCamelCase, enums as integers, 64-bit integers as decimal
strings, and ``traceId`` / ``spanId`` / ``parentSpanId`` as hex strings (the generic mapping
would write base64 for bytes; OTLP/JSON says hex for these ids and base64 for everything else).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from io import FileIO
from pathlib import Path
from typing import Any, Final

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan

from ..errors import SinkError
from ._base import DEFAULT_LOG_INTERVAL, DeliveringExporter, Delivery
from ._encode import encode_request

__all__ = ["OtlpJsonFileExporter", "otlp_json_to_request", "spans_to_otlp_json"]

#: The bytes fields OTLP/JSON writes as hex: in a span and in each of its links.
_SPAN_ID_FIELDS: Final = ("traceId", "spanId", "parentSpanId")
_LINK_ID_FIELDS: Final = ("traceId", "spanId")
STDOUT: Final = "-"


def _convert_ids(request: dict[str, Any], convert: Callable[[str], str]) -> None:
    for resource_spans in request.get("resourceSpans") or ():
        for scope_spans in resource_spans.get("scopeSpans") or ():
            for span in scope_spans.get("spans") or ():
                for key in _SPAN_ID_FIELDS:
                    if span.get(key):
                        span[key] = convert(span[key])
                for link in span.get("links") or ():
                    for key in _LINK_ID_FIELDS:
                        if link.get(key):
                            link[key] = convert(link[key])


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _hex_to_b64(value: str) -> str:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a hex trace or span id") from None
    return base64.b64encode(raw).decode("ascii")


def request_to_otlp_json(request: ExportTraceServiceRequest) -> str:
    """One ``ExportTraceServiceRequest`` as one OTLP JSON line (without the newline)."""
    data = json_format.MessageToDict(request, use_integers_for_enums=True)
    _convert_ids(data, _b64_to_hex)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def spans_to_otlp_json(spans: Sequence[ReadableSpan]) -> str:
    """Encode a batch as one OTLP JSON line (without the newline), as the Collector writes it.

    Args:
        spans: the batch.

    Returns:
        The JSON of one ``ExportTraceServiceRequest``.
    """
    # The fast encoder's bytes parsed back (upb, in C) are the message ``encode_spans`` builds,
    # at a fraction of its cost; the JSON mapping below is the same either way.
    return request_to_otlp_json(ExportTraceServiceRequest.FromString(encode_request(spans)))


def otlp_json_to_request(line: str | bytes) -> ExportTraceServiceRequest:
    """Parse one OTLP JSON line back into an ``ExportTraceServiceRequest``.

    The reverse of :func:`spans_to_otlp_json`, and it reads the Collector's file exporter output
    too. Unknown fields are ignored, as OTLP/JSON receivers must.

    Raises:
        ValueError: the line is not JSON, not an object, has an id that is not hex, or does not
            fit the message (``google.protobuf.json_format.ParseError`` is a ``ValueError``).
    """
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("an OTLP JSON line must be an object with resourceSpans")
    _convert_ids(data, _hex_to_b64)
    request = ExportTraceServiceRequest()
    json_format.ParseDict(data, request, ignore_unknown_fields=True)
    return request


class OtlpJsonFileExporter(DeliveringExporter):
    """Appends one OTLP JSON line per batch to a file (or stdout), durably.

    Each batch is written, flushed and fsynced before :meth:`deliver` says delivered, so the
    checkpoint never moves past spans that are not on disk. A failed write is cut back off the
    file, so a full disk never leaves half a line for readers to choke on.

    Args:
        path: the file (created if missing, appended to otherwise), or ``-`` for stdout.
        log_interval: seconds during which an identical failure is logged once.

    Raises:
        SinkError: the file cannot be opened for appending.
    """

    def __init__(self, path: Path | str, *, log_interval: float = DEFAULT_LOG_INTERVAL) -> None:
        self._path = str(path)
        super().__init__(
            target="stdout" if self._path == STDOUT else self._path, log_interval=log_interval
        )
        self._lock = threading.Lock()
        self._stdout = self._path == STDOUT
        self._file: FileIO | None = None
        if not self._stdout:
            try:
                # Unbuffered: a failed write must leave nothing behind in a buffer that a later
                # flush would append after the cut (see _undo).
                self._file = FileIO(self._path, "ab")
            except OSError as exc:
                raise SinkError(self._path, f"cannot open for appending: {exc.strerror}") from None
        self._regular = self._file is not None and stat.S_ISREG(
            os.fstat(self._file.fileno()).st_mode
        )

    @property
    def path(self) -> str:
        """The file path, or ``-`` for stdout."""
        return self._path

    def _deliver(self, spans: Sequence[ReadableSpan]) -> Delivery:
        data = (spans_to_otlp_json(spans) + "\n").encode("utf-8")
        with self._lock:
            if self._stdout:
                return self._write_stdout(data)
            if self._file is None:
                return Delivery(delivered=False, message=f"{self.target}: file is closed")
            return self._write_file(self._file, data)

    def _write_file(self, file: FileIO, data: bytes) -> Delivery:
        if not self._regular:
            return self._write_device(file, data)
        try:
            start: int | None = file.seek(0, os.SEEK_END)
        except OSError:
            start = None
        try:
            view = memoryview(data)
            while view:
                written = file.write(view)
                if not written:
                    raise OSError(errno.EIO, "the file took no bytes")
                view = view[written:]
            os.fsync(file.fileno())
        except OSError as exc:
            self._undo(file, start)
            return Delivery(
                delivered=False, message=f"{self.target}: write failed: {exc.strerror or exc}"
            )
        return Delivery(delivered=True)

    def _write_device(self, file: FileIO, data: bytes) -> Delivery:
        # /dev/null, a FIFO, a terminal: nothing to fsync or cut back, only bytes to write.
        try:
            view = memoryview(data)
            while view:
                written = file.write(view)
                if not written:
                    raise OSError(errno.EIO, "the device took no bytes")
                view = view[written:]
        except OSError as exc:
            return Delivery(
                delivered=False, message=f"{self.target}: write failed: {exc.strerror or exc}"
            )
        return Delivery(delivered=True)

    @staticmethod
    def _undo(file: FileIO, start: int | None) -> None:
        # Cut what the failed write left on disk: half a line would break every reader of the
        # file, and the worker will send the batch again.
        if start is None:
            return
        with contextlib.suppress(OSError):
            file.truncate(start)

    def _write_stdout(self, data: bytes) -> Delivery:
        # Looked up at each write: sys.stdout may be replaced (tests, redirection).
        stream = sys.stdout
        try:
            buffer = getattr(stream, "buffer", None)
            if buffer is not None:
                stream.flush()
                buffer.write(data)
                buffer.flush()
            else:
                stream.write(data.decode("utf-8"))
                stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: stdout closed
            return Delivery(delivered=False, message=f"stdout: write failed: {exc}")
        return Delivery(delivered=True)

    def _close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
