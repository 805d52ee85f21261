"""OTLP ``ExportTraceServiceRequest`` bytes written directly: the SDK encoder's output, faster.

Why: the SDK's ``encode_spans`` builds one Python protobuf object per span, per attribute and
per value (~2.7 µs an attribute; our spans carry ~70), and it runs in the export thread holding
the GIL, so the event loop stalls for a whole batch. The OTLP protobuf is stable, so this module
writes the wire format itself, and the attributes that repeat from span to span (the
``llm_config.*`` values, org, user and agent ids, model names) are encoded once and then cost a
dict lookup.

The contract is the SDK's bytes: :func:`encode_request` returns exactly
``encode_spans(spans).SerializeToString()`` (upb writes fields in field-number order, and so do
we), tested on every recorded fixture and on random attributes. That includes the SDK's choices,
even where OTLP would allow others: spans grouped by resource then scope (dict equality, first
seen first), ``flags`` with only the ``HAS_IS_REMOTE`` / ``IS_REMOTE`` bits, no link
``trace_state``, a ``status`` always present, ``None`` as an empty ``AnyValue``.

What this path does not handle (a value of another type, an integer outside int64, text that is
not valid UTF-8, a malformed span...) makes the whole batch go through ``encode_spans`` instead,
so an odd batch is slower, never different: the SDK's drop-and-log of a bad attribute, and its
exceptions, happen exactly as before.

Field numbers and wire types come from :data:`FIELDS`, which ``tests/test_sink_encoder.py``
checks against the generated ``*_pb2`` descriptors.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind

__all__ = ["FIELDS", "SpanEncoder", "encode_request"]

_logger = logging.getLogger(__name__)

# Wire types (protobuf encoding spec).
VARINT: Final = 0
I64: Final = 1
LEN: Final = 2
I32: Final = 5

_TRACE: Final = "opentelemetry.proto.trace.v1."
_COMMON: Final = "opentelemetry.proto.common.v1."

#: Every field this module writes: (message full name, field name) -> (number, wire type).
FIELDS: Final[Mapping[tuple[str, str], tuple[int, int]]] = {
    ("opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest", "resource_spans"): (
        1,
        LEN,
    ),
    (_TRACE + "ResourceSpans", "resource"): (1, LEN),
    (_TRACE + "ResourceSpans", "scope_spans"): (2, LEN),
    (_TRACE + "ResourceSpans", "schema_url"): (3, LEN),
    ("opentelemetry.proto.resource.v1.Resource", "attributes"): (1, LEN),
    (_TRACE + "ScopeSpans", "scope"): (1, LEN),
    (_TRACE + "ScopeSpans", "spans"): (2, LEN),
    (_TRACE + "ScopeSpans", "schema_url"): (3, LEN),
    (_COMMON + "InstrumentationScope", "name"): (1, LEN),
    (_COMMON + "InstrumentationScope", "version"): (2, LEN),
    (_COMMON + "InstrumentationScope", "attributes"): (3, LEN),
    (_TRACE + "Span", "trace_id"): (1, LEN),
    (_TRACE + "Span", "span_id"): (2, LEN),
    (_TRACE + "Span", "trace_state"): (3, LEN),
    (_TRACE + "Span", "parent_span_id"): (4, LEN),
    (_TRACE + "Span", "name"): (5, LEN),
    (_TRACE + "Span", "kind"): (6, VARINT),
    (_TRACE + "Span", "start_time_unix_nano"): (7, I64),
    (_TRACE + "Span", "end_time_unix_nano"): (8, I64),
    (_TRACE + "Span", "attributes"): (9, LEN),
    (_TRACE + "Span", "dropped_attributes_count"): (10, VARINT),
    (_TRACE + "Span", "events"): (11, LEN),
    (_TRACE + "Span", "dropped_events_count"): (12, VARINT),
    (_TRACE + "Span", "links"): (13, LEN),
    (_TRACE + "Span", "dropped_links_count"): (14, VARINT),
    (_TRACE + "Span", "status"): (15, LEN),
    (_TRACE + "Span", "flags"): (16, I32),
    (_TRACE + "Span.Event", "time_unix_nano"): (1, I64),
    (_TRACE + "Span.Event", "name"): (2, LEN),
    (_TRACE + "Span.Event", "attributes"): (3, LEN),
    (_TRACE + "Span.Event", "dropped_attributes_count"): (4, VARINT),
    (_TRACE + "Span.Link", "trace_id"): (1, LEN),
    (_TRACE + "Span.Link", "span_id"): (2, LEN),
    (_TRACE + "Span.Link", "attributes"): (4, LEN),
    (_TRACE + "Span.Link", "dropped_attributes_count"): (5, VARINT),
    (_TRACE + "Span.Link", "flags"): (6, I32),
    (_TRACE + "Status", "message"): (2, LEN),
    (_TRACE + "Status", "code"): (3, VARINT),
    (_COMMON + "KeyValue", "key"): (1, LEN),
    (_COMMON + "KeyValue", "value"): (2, LEN),
    (_COMMON + "AnyValue", "string_value"): (1, LEN),
    (_COMMON + "AnyValue", "bool_value"): (2, VARINT),
    (_COMMON + "AnyValue", "int_value"): (3, VARINT),
    (_COMMON + "AnyValue", "double_value"): (4, I64),
    (_COMMON + "AnyValue", "array_value"): (5, LEN),
    (_COMMON + "AnyValue", "kvlist_value"): (6, LEN),
    (_COMMON + "AnyValue", "bytes_value"): (7, LEN),
    (_COMMON + "ArrayValue", "values"): (1, LEN),
    (_COMMON + "KeyValueList", "values"): (1, LEN),
}


def _tag(message: str, field: str) -> bytes:
    number, wire_type = FIELDS[(message, field)]
    return _varint((number << 3) | wire_type)


_SMALL_VARINTS: Final = tuple(bytes((n,)) for n in range(0x80))


def _varint(value: int) -> bytes:
    """A non-negative integer as a protobuf varint (callers map negatives to 64 bits first)."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_REQUEST_RESOURCE_SPANS: Final = _tag(
    "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest", "resource_spans"
)
_RS_RESOURCE: Final = _tag(_TRACE + "ResourceSpans", "resource")
_RS_SCOPE_SPANS: Final = _tag(_TRACE + "ResourceSpans", "scope_spans")
_RS_SCHEMA_URL: Final = _tag(_TRACE + "ResourceSpans", "schema_url")
_RESOURCE_ATTRIBUTES: Final = _tag("opentelemetry.proto.resource.v1.Resource", "attributes")
_SS_SCOPE: Final = _tag(_TRACE + "ScopeSpans", "scope")
_SS_SPANS: Final = _tag(_TRACE + "ScopeSpans", "spans")
_SS_SCHEMA_URL: Final = _tag(_TRACE + "ScopeSpans", "schema_url")
_SCOPE_NAME: Final = _tag(_COMMON + "InstrumentationScope", "name")
_SCOPE_VERSION: Final = _tag(_COMMON + "InstrumentationScope", "version")
_SCOPE_ATTRIBUTES: Final = _tag(_COMMON + "InstrumentationScope", "attributes")
_SPAN_TRACE_ID: Final = _tag(_TRACE + "Span", "trace_id") + _varint(16)
_SPAN_SPAN_ID: Final = _tag(_TRACE + "Span", "span_id") + _varint(8)
_SPAN_TRACE_STATE: Final = _tag(_TRACE + "Span", "trace_state")
_SPAN_PARENT_SPAN_ID: Final = _tag(_TRACE + "Span", "parent_span_id") + _varint(8)
_SPAN_NAME: Final = _tag(_TRACE + "Span", "name")
_SPAN_KIND: Final = _tag(_TRACE + "Span", "kind")
_SPAN_START: Final = _tag(_TRACE + "Span", "start_time_unix_nano")
_SPAN_END: Final = _tag(_TRACE + "Span", "end_time_unix_nano")
_SPAN_ATTRIBUTES: Final = _tag(_TRACE + "Span", "attributes")
_SPAN_DROPPED_ATTRIBUTES: Final = _tag(_TRACE + "Span", "dropped_attributes_count")
_SPAN_EVENTS: Final = _tag(_TRACE + "Span", "events")
_SPAN_DROPPED_EVENTS: Final = _tag(_TRACE + "Span", "dropped_events_count")
_SPAN_LINKS: Final = _tag(_TRACE + "Span", "links")
_SPAN_DROPPED_LINKS: Final = _tag(_TRACE + "Span", "dropped_links_count")
_SPAN_STATUS: Final = _tag(_TRACE + "Span", "status")
_SPAN_FLAGS: Final = _tag(_TRACE + "Span", "flags")
_EVENT_TIME: Final = _tag(_TRACE + "Span.Event", "time_unix_nano")
_EVENT_NAME: Final = _tag(_TRACE + "Span.Event", "name")
_EVENT_ATTRIBUTES: Final = _tag(_TRACE + "Span.Event", "attributes")
_EVENT_DROPPED_ATTRIBUTES: Final = _tag(_TRACE + "Span.Event", "dropped_attributes_count")
_LINK_TRACE_ID: Final = _tag(_TRACE + "Span.Link", "trace_id") + _varint(16)
_LINK_SPAN_ID: Final = _tag(_TRACE + "Span.Link", "span_id") + _varint(8)
_LINK_ATTRIBUTES: Final = _tag(_TRACE + "Span.Link", "attributes")
_LINK_DROPPED_ATTRIBUTES: Final = _tag(_TRACE + "Span.Link", "dropped_attributes_count")
_LINK_FLAGS: Final = _tag(_TRACE + "Span.Link", "flags")
_STATUS_MESSAGE: Final = _tag(_TRACE + "Status", "message")
_STATUS_CODE: Final = _tag(_TRACE + "Status", "code")
_KV_KEY: Final = _tag(_COMMON + "KeyValue", "key")
_KV_VALUE: Final = _tag(_COMMON + "KeyValue", "value")
_ANY_STRING: Final = _tag(_COMMON + "AnyValue", "string_value")
_ANY_BOOL: Final = _tag(_COMMON + "AnyValue", "bool_value")
_ANY_INT: Final = _tag(_COMMON + "AnyValue", "int_value")
_ANY_DOUBLE: Final = _tag(_COMMON + "AnyValue", "double_value")
_ANY_ARRAY: Final = _tag(_COMMON + "AnyValue", "array_value")
_ANY_KVLIST: Final = _tag(_COMMON + "AnyValue", "kvlist_value")
_ANY_BYTES: Final = _tag(_COMMON + "AnyValue", "bytes_value")
_ARRAY_VALUES: Final = _tag(_COMMON + "ArrayValue", "values")
_KVLIST_VALUES: Final = _tag(_COMMON + "KeyValueList", "values")

#: ``Span.SpanKind`` numbers (the SDK's ``_SPAN_KIND_MAP``), with the field tag in front.
_KIND_FIELD: Final[Mapping[SpanKind, bytes]] = {
    SpanKind.INTERNAL: _SPAN_KIND + _varint(1),
    SpanKind.SERVER: _SPAN_KIND + _varint(2),
    SpanKind.CLIENT: _SPAN_KIND + _varint(3),
    SpanKind.PRODUCER: _SPAN_KIND + _varint(4),
    SpanKind.CONSUMER: _SPAN_KIND + _varint(5),
}
#: ``SpanFlags``: the SDK always says whether the parent is remote, and nothing else.
_FLAGS_HAS_IS_REMOTE: Final = 0x100
_FLAGS_IS_REMOTE: Final = 0x200
_FLAGS_LOCAL: Final = _SPAN_FLAGS + struct.pack("<I", _FLAGS_HAS_IS_REMOTE)
_FLAGS_REMOTE: Final = _SPAN_FLAGS + struct.pack("<I", _FLAGS_HAS_IS_REMOTE | _FLAGS_IS_REMOTE)
_LINK_FLAGS_LOCAL: Final = _LINK_FLAGS + struct.pack("<I", _FLAGS_HAS_IS_REMOTE)
_LINK_FLAGS_REMOTE: Final = _LINK_FLAGS + struct.pack("<I", _FLAGS_HAS_IS_REMOTE | _FLAGS_IS_REMOTE)

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT32_MAX: Final = 2**32 - 1
_TWO_TO_64: Final = 2**64
_BOOL_TRUE: Final = _ANY_BOOL + b"\x01"
_BOOL_FALSE: Final = _ANY_BOOL + b"\x00"
_JUST_STR: Final = frozenset({str})
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack

#: Default bound of an encoder's cache of encoded attributes (entries).
DEFAULT_CACHE_SIZE: Final = 8192
#: String attributes longer than this (encoded) are encoded every time: they are content
#: (prompts, JSON), rarely repeat, and would make the cache's memory depend on the content size.
_CACHEABLE_BYTES: Final = 320


class _UnsupportedError(Exception):
    """Something the fast path does not encode; the batch goes through ``encode_spans``."""


def _any_value(value: Any) -> bytes:
    """An ``AnyValue`` body, as the SDK's ``_encode_value`` builds it (exact types only)."""
    kind = type(value)
    if kind is str:
        data: bytes = value.encode()
        return _ANY_STRING + _varint(len(data)) + data
    if kind is bool:
        return _BOOL_TRUE if value else _BOOL_FALSE
    if kind is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _UnsupportedError("int outside int64")
        return _ANY_INT + _varint(value if value >= 0 else value + _TWO_TO_64)
    if kind is float:
        return _ANY_DOUBLE + _pack_double(value)
    if kind is tuple or kind is list:
        parts = [_ANY_ARRAY, b""]
        size = 0
        for item in value:
            body = _any_value(item)
            piece = _ARRAY_VALUES + _varint(len(body)) + body
            size += len(piece)
            parts.append(piece)
        parts[1] = _varint(size)
        return b"".join(parts)
    if kind is bytes:
        raw: bytes = value
        return _ANY_BYTES + _varint(len(raw)) + raw
    if value is None:
        return b""
    if kind is dict:
        parts = [_ANY_KVLIST, b""]
        size = 0
        for key, item in value.items():
            body = _key_value(str(key), item)
            piece = _KVLIST_VALUES + _varint(len(body)) + body
            size += len(piece)
            parts.append(piece)
        parts[1] = _varint(size)
        return b"".join(parts)
    raise _UnsupportedError(f"attribute value of type {kind.__name__}")


def _key_head(key: str) -> bytes:
    """A ``KeyValue``'s key field (absent when empty, as proto3 writes it) and the value's tag."""
    if type(key) is not str:
        raise _UnsupportedError("attribute key that is not a str")
    data = key.encode()
    return (_KV_KEY + _varint(len(data)) + data if data else b"") + _KV_VALUE


def _key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue`` body (without its own tag and length)."""
    body = _any_value(value)
    return _key_head(key) + _varint(len(body)) + body


def _length_prefixed(body: bytes) -> bytes:
    return _varint(len(body)) + body


def _text_field(tag: bytes, text: str | None) -> bytes:
    """A proto3 string field: absent when empty or ``None``, as the SDK's message would be."""
    if not text:
        return b""
    data = text.encode()
    return tag + _varint(len(data)) + data


def _uint32_field(tag: bytes, value: int) -> bytes:
    if not value:
        return b""
    if not 0 <= value <= _UINT32_MAX:
        raise _UnsupportedError("count outside uint32")
    return tag + _varint(value)


class SpanEncoder:
    """Encodes span batches into ``ExportTraceServiceRequest`` bytes; keeps a bounded cache.

    The cache maps ``(key, value)`` of str, int, bool, float and tuple-of-str attributes (short
    ones only) to the length-prefixed ``KeyValue`` bytes, so the attributes that repeat from span
    to span cost one dict lookup each; the keys' own bytes are cached too. There is one dict per
    value type, since ``1 == True == 1.0`` as dict keys, and no float that compares equal to a
    float of other bits (``0.0``, ``-0.0``, NaN) is ever cached. When the entries reach
    ``cache_size`` everything is dropped: the values that repeat come back within a few spans,
    the ones that never repeat (ids, timestamps) cannot pile up, and a hit needs none of an LRU's
    bookkeeping.

    Safe to share between threads: concurrent calls may both encode an entry (same bytes), lose
    one to a clear, or overshoot the bound by an entry or two until the next clear; none of it
    changes the output.

    Args:
        cache_size: most entries kept (0 disables the cache).

    Attributes:
        fallbacks: batches handed to ``encode_spans`` because the fast path could not take them.
    """

    def __init__(self, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._cache = _AttributeCache(cache_size)
        self._attributes = self._cache.encode
        self.fallbacks = 0

    @property
    def cache_entries(self) -> int:
        """Entries in the attribute cache now (at most ``cache_size`` in single-threaded use)."""
        return self._cache.entries

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The serialized request: ``encode_spans(spans).SerializeToString()``, byte for byte.

        Args:
            spans: the batch.

        Returns:
            The request bytes (empty for an empty batch).

        Raises:
            Exception: whatever ``encode_spans`` raises for a batch it cannot encode.
        """
        try:
            return self.encode_fast(spans)
        except Exception as exc:  # noqa: BLE001 - the SDK decides what an odd batch becomes
            self.fallbacks += 1
            _logger.debug("span batch encoded by the SDK encoder (%s: %s)", type(exc).__name__, exc)
            return encode_spans(spans).SerializeToString()

    def encode_fast(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The fast path alone: raises on anything it does not handle (tests call it directly).

        Raises:
            Exception: ``_UnsupportedError`` or the error of a malformed span.
        """
        # Grouped as encode_spans does: dicts keyed by Resource and scope equality, first seen
        # first. The identity check before the dict lookup only skips Resource.__hash__ (a JSON
        # dump of its attributes) for the next span of the same resource object; a dict lookup
        # would find the same group, since it tries identity before equality too.
        groups: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
        last_resource: Resource | None = None
        last_scope: InstrumentationScope | None = None
        last_group: list[bytes] | None = None
        for span in spans:
            resource = span.resource
            scope = span.instrumentation_scope or None
            if last_group is None or resource is not last_resource or scope is not last_scope:
                scopes = groups.get(resource)
                if scopes is None:
                    scopes = groups[resource] = {}
                group = scopes.get(scope)
                if group is None:
                    group = scopes[scope] = []
                last_resource, last_scope, last_group = resource, scope, group
            body = self._span(span)
            last_group.append(_SS_SPANS + _varint(len(body)) + body)

        out: list[bytes] = []
        for resource, scopes in groups.items():
            resource_body = self._attributes(_RESOURCE_ATTRIBUTES, resource.attributes)
            head = [_RS_RESOURCE + _length_prefixed(resource_body)]
            size = len(head[0])
            pieces: list[bytes] = []
            for scope, encoded in scopes.items():
                scope_head = _SS_SCOPE + _length_prefixed(self._scope(scope))
                scope_tail = _text_field(_SS_SCHEMA_URL, scope.schema_url if scope else None)
                scope_size = len(scope_head) + sum(map(len, encoded)) + len(scope_tail)
                header = _RS_SCOPE_SPANS + _varint(scope_size)
                pieces.append(header)
                pieces.append(scope_head)
                pieces.extend(encoded)
                pieces.append(scope_tail)
                size += len(header) + scope_size
            tail = _text_field(_RS_SCHEMA_URL, resource.schema_url)
            size += len(tail)
            out.append(_REQUEST_RESOURCE_SPANS + _varint(size))
            out.extend(head)
            out.extend(pieces)
            out.append(tail)
        return b"".join(out)

    # --- messages ------------------------------------------------------------------------------
    def _span(self, span: ReadableSpan) -> bytes:
        context = span.get_span_context()
        if context is None:
            raise _UnsupportedError("span without a context")
        parts = [
            _SPAN_TRACE_ID,
            context.trace_id.to_bytes(16, "big"),
            _SPAN_SPAN_ID,
            context.span_id.to_bytes(8, "big"),
        ]
        trace_state = context.trace_state
        if trace_state is not None:
            parts.append(
                _text_field(_SPAN_TRACE_STATE, ",".join(f"{k}={v}" for k, v in trace_state.items()))
            )
        parent = span.parent
        if parent:
            parts.append(_SPAN_PARENT_SPAN_ID)
            parts.append(parent.span_id.to_bytes(8, "big"))
        name = span.name
        if name:
            if type(name) is not str:
                raise _UnsupportedError("span name that is not a str")
            parts.append(_text_field(_SPAN_NAME, name))
        parts.append(_KIND_FIELD[span.kind])
        start = span.start_time
        if start:
            parts.append(_SPAN_START + _pack_fixed64(start))
        end = span.end_time
        if end:
            parts.append(_SPAN_END + _pack_fixed64(end))
        attributes = span.attributes
        if attributes:
            parts.append(self._attributes(_SPAN_ATTRIBUTES, attributes))
        parts.append(_uint32_field(_SPAN_DROPPED_ATTRIBUTES, span.dropped_attributes))
        for event in span.events:
            body = b"".join(
                (
                    _EVENT_TIME + _pack_fixed64(event.timestamp) if event.timestamp else b"",
                    _text_field(_EVENT_NAME, event.name),
                    self._attributes(_EVENT_ATTRIBUTES, event.attributes),
                    _uint32_field(_EVENT_DROPPED_ATTRIBUTES, event.dropped_attributes),
                )
            )
            parts.append(_SPAN_EVENTS + _length_prefixed(body))
        parts.append(_uint32_field(_SPAN_DROPPED_EVENTS, span.dropped_events))
        for link in span.links:
            linked = link.context
            body = b"".join(
                (
                    _LINK_TRACE_ID,
                    linked.trace_id.to_bytes(16, "big"),
                    _LINK_SPAN_ID,
                    linked.span_id.to_bytes(8, "big"),
                    self._attributes(_LINK_ATTRIBUTES, link.attributes),
                    _uint32_field(_LINK_DROPPED_ATTRIBUTES, link.dropped_attributes),
                    _LINK_FLAGS_REMOTE if linked and linked.is_remote else _LINK_FLAGS_LOCAL,
                )
            )
            parts.append(_SPAN_LINKS + _length_prefixed(body))
        parts.append(_uint32_field(_SPAN_DROPPED_LINKS, span.dropped_links))
        status = span.status
        if status is not None:
            code = status.status_code.value
            body = _text_field(_STATUS_MESSAGE, status.description) + (
                _STATUS_CODE + _varint(code) if code else b""
            )
            parts.append(_SPAN_STATUS + _length_prefixed(body))
        parts.append(_FLAGS_REMOTE if parent and parent.is_remote else _FLAGS_LOCAL)
        return b"".join(parts)

    def _scope(self, scope: InstrumentationScope | None) -> bytes:
        if scope is None:
            return b""
        return b"".join(
            (
                _text_field(_SCOPE_NAME, scope.name),
                _text_field(_SCOPE_VERSION, scope.version),
                self._attributes(_SCOPE_ATTRIBUTES, scope.attributes),
            )
        )


class _AttributeCache:
    """The ``KeyValue`` pieces of :class:`SpanEncoder`, cached by ``(key, value)`` (see its
    docstring for what is cached, the one dict per value type and the bound)."""

    def __init__(self, cache_size: int) -> None:
        self._cache_size = max(cache_size, 0)
        # One dict per value type: (k, 1), (k, True) and (k, 1.0) are equal as dict keys.
        self._text: dict[tuple[str, Any], bytes] = {}
        self._ints: dict[tuple[str, Any], bytes] = {}
        self._bools: dict[tuple[str, Any], bytes] = {}
        self._tuples: dict[tuple[str, Any], bytes] = {}
        self._floats: dict[tuple[str, Any], bytes] = {}
        self._heads: dict[str, bytes] = {}
        self._entries = 0

    @property
    def entries(self) -> int:
        caches = (self._text, self._ints, self._bools, self._tuples, self._floats, self._heads)
        return sum(len(cache) for cache in caches)

    def encode(self, tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
        """Repeated ``KeyValue`` fields with ``tag``, in the mapping's order.

        Each piece is a length-prefixed ``KeyValue``; ``tag.join`` puts the field tag between
        them, so the cached pieces serve every message that has attributes.
        """
        if not attributes:
            return b""
        pieces: list[bytes] = []
        append = pieces.append
        text_get = self._text.get
        int_get = self._ints.get
        bool_get = self._bools.get
        tuple_get = self._tuples.get
        float_get = self._floats.get
        for key, value in attributes.items():
            if type(key) is not str:
                # A str subclass may define its own equality: it must not hit a cached key.
                raise _UnsupportedError("attribute key that is not a str")
            kind = type(value)
            if kind is str:
                piece = text_get((key, value))
                if piece is None:
                    piece = self._piece(key, value)
                    if len(piece) <= _CACHEABLE_BYTES:
                        self._remember(self._text, (key, value), piece)
            elif kind is int:
                piece = int_get((key, value))
                if piece is None:
                    piece = self._piece(key, value)
                    self._remember(self._ints, (key, value), piece)
            elif kind is bool:
                piece = bool_get((key, value))
                if piece is None:
                    piece = self._piece(key, value)
                    self._remember(self._bools, (key, value), piece)
            elif kind is tuple and set(map(type, value)) <= _JUST_STR:
                # Only tuples of plain str: (1,) == (True,) == (1.0,) as dict keys.
                piece = tuple_get((key, value))
                if piece is None:
                    piece = self._piece(key, value)
                    if len(piece) <= _CACHEABLE_BYTES:
                        self._remember(self._tuples, (key, value), piece)
            elif kind is float:
                piece = float_get((key, value))
                if piece is None:
                    piece = self._piece(key, value)
                    if value == value and value != 0.0:
                        # Equal floats have equal bits except 0.0 / -0.0 and NaN: never cached.
                        self._remember(self._floats, (key, value), piece)
            else:
                piece = self._piece(key, value)
            append(piece)
        return tag + tag.join(pieces)

    def _piece(self, key: str, value: Any) -> bytes:
        """A length-prefixed ``KeyValue``; the key's own bytes are cached."""
        head = self._heads.get(key)
        if head is None:
            head = _key_head(key)
            self._remember(self._heads, key, head)
        body = _any_value(value)
        message = head + _varint(len(body)) + body
        return _varint(len(message)) + message

    def _remember(self, cache: dict[Any, bytes], key: Any, piece: bytes) -> None:
        if self._entries >= self._cache_size:
            if self._cache_size == 0:
                return
            self._text.clear()
            self._ints.clear()
            self._bools.clear()
            self._tuples.clear()
            self._floats.clear()
            self._heads.clear()
            self._entries = 0
        cache[key] = piece
        self._entries += 1


_DEFAULT_ENCODER: Final = SpanEncoder()


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """``encode_spans(spans).SerializeToString()``, byte for byte, with a shared encoder.

    Args:
        spans: the batch.

    Returns:
        The serialized ``ExportTraceServiceRequest``.
    """
    return _DEFAULT_ENCODER.encode(spans)
