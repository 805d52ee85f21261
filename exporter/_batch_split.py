"""Cutting a batch of spans so each request fits the collector: under ``max_bytes`` before it
is sent, and in halves when the collector still says it is too large.

With a sink that sends OTLP requests the batch is encoded once, here, and those bytes are what
is sent: measuring costs nothing more. With any other sink the size is first bounded without
encoding (most batches are far under the limit), and only a batch over that bound is encoded
to be measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from opentelemetry.sdk.trace import ReadableSpan

from .sink._encode import SpanEncoder

__all__ = ["BatchSplitter", "Part", "halves"]

#: A part of a batch: its spans and the ids of the records in it.
Part = tuple[list[ReadableSpan], list[str]]

#: A part ready to send: its spans, ids and, when the sink sends OTLP requests, that request.
EncodedPart = tuple[list[ReadableSpan], list[str], bytes | None]

#: The request a sink would send for some spans, or None (see ``DeliveringExporter``).
RequestEncoder = Callable[[Sequence[ReadableSpan]], bytes | None]

#: Bytes of protobuf framing a span, an attribute or an event can take beyond its own text.
_SPAN_FRAMING: Final = 160
_FIELD_FRAMING: Final = 16


class BatchSplitter:
    """Keeps requests under ``max_bytes`` (None: no limit); a single span over it goes alone.

    Args:
        max_bytes: the encoded request size a batch is cut under.
        dry_run: nothing is sent, so nothing is cut.
        request: the sink's own request encoder (``DeliveringExporter.request_bytes``); None
            for a sink that sends something else.
    """

    def __init__(
        self, *, max_bytes: int | None, dry_run: bool, request: RequestEncoder | None = None
    ) -> None:
        self._max_bytes = max_bytes
        self._dry_run = dry_run
        self._request = request
        self._encoder = SpanEncoder()

    def encoded_parts(self, spans: list[ReadableSpan], ids: list[str]) -> list[EncodedPart]:
        """The batch in parts under ``max_bytes``, each with the request to send when the sink
        encodes one (so it is encoded once); CPU work: the shipper runs it in a thread."""
        if self._dry_run:
            return [(spans, ids, None)]
        body = self._request(spans) if self._request is not None else None
        if body is None:
            return [(s, i, None) for s, i in self.under_max_bytes(spans, ids)]
        if self._max_bytes is None or len(spans) < 2 or len(body) <= self._max_bytes:
            return [(spans, ids, body)]
        (left, left_ids), (right, right_ids) = halves(spans, ids)
        return self.encoded_parts(left, left_ids) + self.encoded_parts(right, right_ids)

    def under_max_bytes(self, spans: list[ReadableSpan], ids: list[str]) -> list[Part]:
        """The batch cut in halves until each encoded request is under ``max_bytes``."""
        if self._max_bytes is None or len(spans) < 2 or self._dry_run:
            return [(spans, ids)]
        # The cheap bound first: most batches are far under the limit and need no encoding.
        if _size_ceiling(spans) <= self._max_bytes:
            return [(spans, ids)]
        if len(self._encoder.encode(spans)) <= self._max_bytes:
            return [(spans, ids)]
        (left, left_ids), (right, right_ids) = halves(spans, ids)
        return self.under_max_bytes(left, left_ids) + self.under_max_bytes(right, right_ids)

    def encoded_size(self, spans: Sequence[ReadableSpan]) -> int:
        """The bytes of the request these spans make (for the dead-letter line of a span the
        collector refuses as too large)."""
        return len(self._encoder.encode(spans))


def halves(spans: list[ReadableSpan], ids: list[str]) -> tuple[Part, Part]:
    """Two halves of a batch; the ids are cut alike when there is one per span."""
    middle = len(spans) // 2
    if len(ids) == len(spans):
        return (spans[:middle], ids[:middle]), (spans[middle:], ids[middle:])
    return (spans[:middle], ids), (spans[middle:], ids)


def _size_ceiling(spans: Sequence[ReadableSpan]) -> int:
    """More than the encoded request can be (text counted at 4 bytes a character unless it is
    ASCII), found without encoding: a batch under the limit by this bound needs no check."""
    total = 0
    resources: set[int] = set()
    for span in spans:
        total += _SPAN_FRAMING + _text_size(span.name) + _attributes_size(span.attributes)
        total += _text_size(span.status.description or "")
        if id(span.resource) not in resources:
            resources.add(id(span.resource))
            total += _SPAN_FRAMING + _attributes_size(getattr(span.resource, "attributes", None))
        for event in span.events:
            total += _SPAN_FRAMING + _text_size(event.name) + _attributes_size(event.attributes)
        for link in span.links:
            total += _SPAN_FRAMING + _attributes_size(link.attributes)
    return total


def _attributes_size(attributes: Any) -> int:
    if not attributes:
        return 0
    return sum(
        _FIELD_FRAMING + _text_size(key) + _value_size(value) for key, value in attributes.items()
    )


def _value_size(value: Any) -> int:
    if isinstance(value, str):
        return _text_size(value)
    if isinstance(value, (bool, int, float)):
        return _FIELD_FRAMING
    if isinstance(value, (bytes, bytearray)):
        return len(value) + _FIELD_FRAMING
    if isinstance(value, (tuple, list)):
        return sum(_FIELD_FRAMING + _value_size(item) for item in value)
    return _text_size(str(value)) + _FIELD_FRAMING


def _text_size(text: str) -> int:
    return len(text) if text.isascii() else 4 * len(text)
