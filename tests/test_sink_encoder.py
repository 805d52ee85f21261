"""The fast OTLP encoder writes exactly the SDK's ``encode_spans(...).SerializeToString()``.

The SDK encoder is the reference throughout: every recorded fixture converted under every
content policy, hand-built spans with every attribute type and every span field, random
attributes (hypothesis), several resources and scopes in one batch. Equality is checked on the
bytes (upb writes fields in field-number order, so byte equality is the strongest form) and, for
good measure, as parsed messages. The field numbers are checked against the generated
descriptors, so they do not depend on anyone reading the ``.proto`` files right.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from collections.abc import Iterator, Sequence
from concurrent import futures
from enum import IntEnum
from typing import Any, Literal

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util.types import Attributes

from exporter.convert import (
    ConvertOptions,
    TraceContext,
    build_resource,
    convert_run,
    convert_trace,
)
from exporter.models import ProviderTrace, Run, Step, StepMetrics, parse_record, parse_trace_body
from exporter.sink import OtlpGrpcExporter, OtlpHttpExporter, spans_to_otlp_json
from exporter.sink._encode import FIELDS, I32, I64, LEN, VARINT, SpanEncoder, encode_request
from exporter.sink._jsonfile import request_to_otlp_json
from tests.conftest import LETTA

from ._sink_spans import make_batch

RESOURCE = build_resource(attributes={"deployment.environment.name": "test"})
CONTENTS = ("none", "full", "raw")


def sdk_bytes(spans: Sequence[ReadableSpan]) -> bytes:
    return encode_spans(spans).SerializeToString()


def assert_same(spans: Sequence[ReadableSpan], encoder: SpanEncoder | None = None) -> bytes:
    """The fast path (no fallback allowed) writes the SDK's bytes and message."""
    fast = (encoder or SpanEncoder()).encode_fast(spans)
    reference = encode_spans(spans)
    assert fast == reference.SerializeToString()
    assert ExportTraceServiceRequest.FromString(fast) == reference
    return fast


# --- field numbers -------------------------------------------------------------------------------
_WIRE_TYPES = {
    FieldDescriptor.TYPE_STRING: LEN,
    FieldDescriptor.TYPE_BYTES: LEN,
    FieldDescriptor.TYPE_MESSAGE: LEN,
    FieldDescriptor.TYPE_FIXED64: I64,
    FieldDescriptor.TYPE_DOUBLE: I64,
    FieldDescriptor.TYPE_FIXED32: I32,
    FieldDescriptor.TYPE_INT64: VARINT,
    FieldDescriptor.TYPE_UINT32: VARINT,
    FieldDescriptor.TYPE_ENUM: VARINT,
    FieldDescriptor.TYPE_BOOL: VARINT,
}
#: Fields of the messages we write that ``encode_spans`` never sets, so neither do we.
_NOT_WRITTEN = {
    ("opentelemetry.proto.trace.v1.Span.Link", "trace_state"),
    ("opentelemetry.proto.resource.v1.Resource", "dropped_attributes_count"),
    ("opentelemetry.proto.resource.v1.Resource", "entity_refs"),
    ("opentelemetry.proto.common.v1.InstrumentationScope", "dropped_attributes_count"),
    ("opentelemetry.proto.common.v1.KeyValue", "key_strindex"),
    ("opentelemetry.proto.common.v1.AnyValue", "string_value_strindex"),
}
_MODULES = (trace_service_pb2, trace_pb2, common_pb2, resource_pb2)  # fill the default pool


def test_field_numbers_and_wire_types_are_the_descriptors() -> None:
    pool = descriptor_pool.Default()
    assert _MODULES
    for (message, name), (number, wire_type) in FIELDS.items():
        field = pool.FindMessageTypeByName(message).fields_by_name[name]
        assert (field.number, _WIRE_TYPES[field.type]) == (number, wire_type), (message, name)


def test_every_field_of_the_written_messages_is_accounted_for() -> None:
    # A new field in a future opentelemetry-proto shows up here, not as a silent difference.
    pool = descriptor_pool.Default()
    for message in {m for m, _ in FIELDS}:
        for field in pool.FindMessageTypeByName(message).fields:
            key = (message, field.name)
            assert key in FIELDS or key in _NOT_WRITTEN, key
    assert not _NOT_WRITTEN & set(FIELDS)


# --- the recorded fixtures, converted ------------------------------------------------------------
def _step_spans(options: ConvertOptions, *, joined: bool) -> list[ReadableSpan]:
    spans: list[ReadableSpan] = []
    for path in sorted((LETTA / "steps").glob("*.json")):
        data = json.loads(path.read_bytes())
        if data["trace"] is None:
            continue
        trace = parse_trace_body(json.dumps(data["trace"]))
        assert trace is not None
        step = parse_record(Step, json.dumps(data["step"]))
        if joined:  # the server's own trace id: a root span linked to its run span
            step = step.model_copy(update={"trace_id": f"{abs(hash(step.id)) % 2**127:032x}"})
        metrics = parse_record(StepMetrics, json.dumps(data["metrics"]))
        context = TraceContext(step=step, metrics=metrics)
        spans.append(convert_trace(trace, context, options=options, resource=RESOURCE))
    return spans


def _trace_spans(options: ConvertOptions) -> list[ReadableSpan]:
    spans: list[ReadableSpan] = []
    for path in sorted((LETTA / "traces").glob("*.json")):
        data = json.loads(path.read_bytes())
        if isinstance(data, dict) and "rows" in data:
            traces = [parse_record(ProviderTrace, json.dumps(row)) for row in data["rows"]]
        else:
            parsed = parse_trace_body(path.read_bytes())
            assert parsed is not None
            traces = [parsed]
        spans.extend(convert_trace(t, options=options, resource=RESOURCE) for t in traces)
    return spans


def _run_spans(options: ConvertOptions) -> list[ReadableSpan]:
    runs_dir = LETTA / "runs"
    records: list[Any] = []
    for name in ("runs_list_page1.json", "runs_list_page2.json"):
        records.extend(json.loads((runs_dir / name).read_bytes()))
    records.append(json.loads((runs_dir / "run_retrieve_example.json").read_bytes()))
    spans: list[ReadableSpan] = []
    for index, record in enumerate(records):
        run = parse_record(Run, json.dumps(record))
        spans.append(convert_run(run, step_count=index, options=options, resource=RESOURCE))
    return spans


def converted(content: str, *, joined: bool = False) -> list[ReadableSpan]:
    options = ConvertOptions(
        content=content,  # type: ignore[arg-type]
        join_letta_traces=joined,
        redact_patterns=(r"sk-[A-Za-z0-9]+",) if content == "raw" else (),
    )
    return _step_spans(options, joined=joined) + _trace_spans(options) + _run_spans(options)


@pytest.mark.parametrize("content", CONTENTS)
def test_every_converted_fixture_encodes_as_the_sdk_does(content: str) -> None:
    spans = converted(content)
    assert len(spans) > 50
    assert sum(len(s.attributes or {}) for s in spans) / len(spans) > 40  # the real shape
    encoder = SpanEncoder()
    assert_same(spans, encoder)
    for span in spans:  # one span per batch too: a difference names its span
        assert_same([span], encoder)
    assert_same(spans, encoder)  # again with a warm cache
    assert encoder.fallbacks == 0


def test_joined_spans_with_links_encode_as_the_sdk_does() -> None:
    spans = converted("none", joined=True)
    assert any(span.links for span in spans)
    assert_same(spans)


def test_json_lines_are_what_the_sdk_request_gives() -> None:
    spans = converted("full")
    assert spans_to_otlp_json(spans) == request_to_otlp_json(encode_spans(spans))


# --- hand-built spans: every field, every value type ---------------------------------------------
SCOPE_A = InstrumentationScope(
    "letta-otel-exporter", "1.2.3", "https://opentelemetry.io/schemas/1.37.0"
)
SCOPE_B = InstrumentationScope("other", None, None, {"scope.attr": "x", "n": 3})
RESOURCE_A = Resource({"service.name": "letta", "n": 1}, schema_url="https://example.com/schema")
RESOURCE_B = Resource({"service.name": "other", "tags": ("a", "b")})

EVERY_TYPE: dict[str, Any] = {
    "str": "gpt-4o-mini",
    "empty.str": "",
    "": "an empty key",
    "unicode": "héllo wörld ✓ 日本語 🦙 \u0301 \x00 nul",
    "unicode.key.日本": 1,
    "bool.true": True,
    "bool.false": False,
    "int.zero": 0,
    "int.one": 1,
    "int.negative": -1,
    "int.min": -(2**63),
    "int.max": 2**63 - 1,
    "int.big": 2**40 + 7,
    "float": 0.25,
    "float.zero": 0.0,
    "float.negative.zero": -0.0,
    "float.nan": math.nan,
    "float.inf": math.inf,
    "float.-inf": -math.inf,
    "float.tiny": 5e-324,
    "bytes": b"\x00\x01\xff",
    "bytes.empty": b"",
    "none": None,
    "array.str": ("stop", "tool_calls"),
    "array.int": (1, -2, 2**63 - 1),
    "array.float": (0.5, -0.0, math.nan),
    "array.bool": (True, False),
    "array.empty": (),
    "array.list": ["a", "b"],
    "array.mixed": ("a", 1, 2.5, True, None, b"x"),
    "array.nested": (("a",), (), [1, [2]]),
    "array.long": tuple(f"item {n}" for n in range(300)),
    "dict": {"a": 1, "b": ("x", "y"), 3: {"nested": None}},
    "dict.empty": {},
    "long.text": "x" * 70_000,
}


def span(
    n: int,
    *,
    attributes: Attributes = None,
    parent: SpanContext | None = None,
    resource: Resource = RESOURCE_A,
    scope: InstrumentationScope | None = SCOPE_A,
    kind: SpanKind = SpanKind.CLIENT,
    status: Status | None = None,
    events: Sequence[Event] = (),
    links: Sequence[Link] = (),
    name: str = "chat gpt-4o-mini",
    trace_state: TraceState | None = None,
    start: int | None = 1_767_225_600_000_000_000,
    end: int | None = 1_767_225_601_234_567_890,
) -> ReadableSpan:
    context = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C + n,
        0xB7AD6B7169203331 + n,
        is_remote=False,
        trace_flags=TraceFlags(1),
        trace_state=trace_state,
    )
    return ReadableSpan(
        name=name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        events=events,
        links=links,
        kind=kind,
        status=status if status is not None else Status(StatusCode.UNSET),
        start_time=start,
        end_time=end,
        instrumentation_scope=scope,
    )


def test_every_attribute_type() -> None:
    assert_same([span(0, attributes=EVERY_TYPE)])


def test_every_attribute_type_from_a_warm_cache() -> None:
    encoder = SpanEncoder()
    for n in range(3):
        assert_same([span(n, attributes=EVERY_TYPE), span(n + 1, attributes=EVERY_TYPE)], encoder)


def test_equal_values_of_other_types_are_not_confused() -> None:
    # 1 == True == 1.0 and 0.0 == -0.0 as dict keys: one cache must not answer for another.
    encoder = SpanEncoder()
    values: list[Any] = [1, True, 1.0, 0, False, 0.0, -0.0, "1", (1,), (True,), (1.0,), ("1",)]
    for value in values + values[::-1]:
        assert_same([span(0, attributes={"k": value})], encoder)


def test_span_fields() -> None:
    remote = SpanContext(0xAA, 0xBB, is_remote=True, trace_flags=TraceFlags(1))
    local = SpanContext(0xAA, 0xCC, is_remote=False)
    spans = [
        span(1, parent=None),
        span(2, parent=remote, kind=SpanKind.SERVER),
        span(3, parent=local, kind=SpanKind.INTERNAL),
        span(4, kind=SpanKind.PRODUCER, status=Status(StatusCode.OK)),
        span(5, kind=SpanKind.CONSUMER, status=Status(StatusCode.ERROR, "rate limited: 429 ✗")),
        span(6, status=Status(StatusCode.ERROR)),
        span(7, name="", start=None, end=None),
        span(8, start=0, end=2**64 - 1),
        span(9, trace_state=TraceState([("vendor", "value"), ("other", "x=y")])),
        span(10, trace_state=TraceState()),
        span(
            11,
            events=(
                Event("gen_ai.choice", {"index": 0, "finish": ("stop",)}, timestamp=5),
                Event("", None, timestamp=0),
                Event("exception", {"exception.message": "boom"}, timestamp=2**63),
            ),
            links=(
                Link(remote, {"letta.link.kind": "run"}),
                Link(local),
                Link(SpanContext(0, 0, is_remote=False), {}),
            ),
        ),
    ]
    assert_same(spans)


def test_dropped_counts() -> None:
    from opentelemetry.attributes import BoundedAttributes

    attributes = BoundedAttributes(maxlen=2, attributes={"a": 1, "b": 2, "c": 3, "d": 4})
    event_attributes = BoundedAttributes(maxlen=1, attributes={"a": 1, "b": 2})
    events = BoundedList.from_seq(1, [Event("one", event_attributes, 1), Event("two", None, 2)])
    links = BoundedList.from_seq(
        1, [Link(SpanContext(1, 2, False), {"x": 1}), Link(SpanContext(3, 4, False))]
    )
    one = ReadableSpan(
        name="dropped",
        context=SpanContext(1, 2, is_remote=False),
        resource=RESOURCE_A,
        attributes=attributes,
        events=events,
        links=links,
        instrumentation_scope=SCOPE_A,
    )
    assert (one.dropped_attributes, one.dropped_events, one.dropped_links) == (2, 1, 1)
    assert_same([one])


def test_resources_and_scopes_grouped_as_the_sdk_does() -> None:
    # Interleaved: the SDK groups by resource, then scope, first seen first (dict equality).
    equal_to_a = Resource(
        {"service.name": "letta", "n": 1}, schema_url="https://example.com/schema"
    )
    same_scope_other_attributes = InstrumentationScope(
        "letta-otel-exporter", "1.2.3", "https://opentelemetry.io/schemas/1.37.0", {"x": 1}
    )
    spans = [
        span(1, resource=RESOURCE_A, scope=SCOPE_A),
        span(2, resource=RESOURCE_B, scope=SCOPE_B),
        span(3, resource=RESOURCE_A, scope=SCOPE_B),
        span(4, resource=equal_to_a, scope=None),
        span(5, resource=RESOURCE_B, scope=SCOPE_A),
        span(6, resource=RESOURCE_A, scope=same_scope_other_attributes),
        span(7, resource=Resource({}), scope=SCOPE_A),
        span(8, resource=equal_to_a, scope=SCOPE_A),
        span(9, resource=RESOURCE_B, scope=InstrumentationScope("")),
    ]
    fast = assert_same(spans)
    request = ExportTraceServiceRequest.FromString(fast)
    assert len(request.resource_spans) == 3  # RESOURCE_A (and its equal), RESOURCE_B, empty
    assert len(request.resource_spans[0].scope_spans) == 4  # scope equality counts attributes


def test_empty_batch_and_the_shared_encoder() -> None:
    assert SpanEncoder().encode([]) == b"" == sdk_bytes([])
    batch = make_batch(5)
    assert encode_request(batch) == sdk_bytes(batch)


def test_sink_test_batches() -> None:
    assert_same(make_batch(20))


# --- what the fast path hands to encode_spans ----------------------------------------------------
class Level(IntEnum):
    HIGH = 3


class Text(str):
    """A str subclass, as an attribute key or value."""


@pytest.mark.parametrize(
    "attributes",
    [
        {"too.big": 2**63},
        {"too.small": -(2**63) - 1},
        {"in.array": (1, 2**64)},
        {"surrogate": "\udc80"},
        {"enum": Level.HIGH},
        {"set": {1, 2}},
        {"bytearray": bytearray(b"ab")},
        {"object": object()},
        {Text("subclass.key"): "value"},
        {"subclass.value": Text("value")},
        {"range": range(3)},
    ],
    ids=lambda a: next(iter(a)),
)
def test_unusual_values_fall_back_to_the_sdk(
    attributes: dict[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    batch = [span(0, attributes={"before": 1, **attributes, "after": "x"}), span(1)]
    encoder = SpanEncoder()
    with pytest.raises(Exception):  # noqa: B017,PT011 - whatever the fast path stops on
        encoder.encode_fast(batch)
    with caplog.at_level(logging.CRITICAL):  # the SDK logs an attribute it drops
        assert encoder.encode(batch) == sdk_bytes(batch)
    assert encoder.fallbacks == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"start": -1},
        {"end": 2**64},
        {"name": "\udc80"},
        {"status": Status(StatusCode.ERROR, "\udc80")},
    ],
    ids=lambda b: next(iter(b)),
)
def test_a_span_the_sdk_cannot_encode_raises_as_it_does(bad: dict[str, Any]) -> None:
    batch = [span(0, **bad)]
    with pytest.raises(Exception) as expected:  # noqa: PT011 - whatever the SDK raises
        sdk_bytes(batch)
    with pytest.raises(type(expected.value)):
        SpanEncoder().encode(batch)


# --- the cache -----------------------------------------------------------------------------------
def test_the_cache_is_bounded() -> None:
    encoder = SpanEncoder(cache_size=100)
    for n in range(50):
        attributes: dict[str, Any] = {f"key.{n % 7}.{i}": f"value {n} {i}" for i in range(30)}
        attributes.update({"count": n, "flag": n % 2 == 0, "tags": (str(n),), "t": n + 0.5})
        assert_same([span(n, attributes=attributes)], encoder)
        assert encoder.cache_entries <= 100
    assert encoder.cache_entries > 0


def test_no_cache() -> None:
    encoder = SpanEncoder(cache_size=0)
    assert_same([span(0, attributes=EVERY_TYPE)] * 2, encoder)
    assert encoder.cache_entries == 0


def test_long_text_is_not_cached() -> None:
    encoder = SpanEncoder()
    attributes = {"content": "x" * 1000, "model": "gpt"}
    encoder.encode_fast([span(0, attributes=attributes, resource=Resource({}), scope=None)])
    assert encoder.cache_entries == 3  # ("model", "gpt") and both keys' own bytes


# --- random attributes (hypothesis) --------------------------------------------------------------
_KEYS = st.one_of(st.sampled_from(["a", "b", "gen_ai.request.model", ""]), st.text(max_size=12))
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 127, 128, 16383, 16384]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, math.nan]),
    st.text(max_size=40),
    st.sampled_from(["a", "1", "", "gpt-4o-mini"]),
    st.binary(max_size=20),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5).map(tuple),
        st.lists(inner, max_size=5),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
    ),
    max_leaves=12,
)
_ATTRIBUTES = st.dictionaries(_KEYS, _VALUES, max_size=12)
# Beyond what the fast path takes: out-of-range ints and lone surrogates.
_ODD_VALUES = st.one_of(
    _VALUES,
    st.integers(min_value=-(2**80), max_value=2**80),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1),
)

_SHARED = SpanEncoder(cache_size=64)  # small: clears happen between examples


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ATTRIBUTES, min_size=1, max_size=4))
def test_random_attributes_encode_as_the_sdk_does(batch: list[dict[str, Any]]) -> None:
    spans = [
        span(n, attributes=a, resource=RESOURCE_A if n % 2 else RESOURCE_B)
        for n, a in enumerate(batch)
    ]
    fallbacks = _SHARED.fallbacks
    assert _SHARED.encode(spans) == sdk_bytes(spans)
    assert _SHARED.fallbacks == fallbacks  # all of these are the fast path's
    assert _SHARED.cache_entries <= 64


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_KEYS, _ODD_VALUES, max_size=6))
def test_random_odd_attributes_still_encode_as_the_sdk_does(attributes: dict[str, Any]) -> None:
    spans = [span(0, attributes=attributes)]
    logging.disable(logging.CRITICAL)  # the SDK logs every attribute it drops
    try:
        assert SpanEncoder().encode(spans) == sdk_bytes(spans)
    finally:
        logging.disable(logging.NOTSET)


# --- on the wire ---------------------------------------------------------------------------------
@pytest.fixture
def grpc_capture() -> Iterator[tuple[str, list[bytes], list[Any]]]:
    """A gRPC server that keeps the raw request bytes and metadata of ``TraceService/Export``."""
    received: list[bytes] = []
    metadata: list[Any] = []

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        received.append(request)
        metadata.append(dict(context.invocation_metadata()))
        return ExportTraceServiceResponse().SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},  # bytes in, bytes out
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received, metadata
    finally:
        server.stop(None)


@pytest.mark.e2e
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_grpc_sends_the_sdk_bytes(
    grpc_capture: tuple[str, list[bytes], list[Any]], compression: Literal["none", "gzip"]
) -> None:
    endpoint, received, metadata = grpc_capture
    batch = converted("none")
    exporter = OtlpGrpcExporter(
        endpoint=endpoint,
        headers={"X-Tenant": "acme"},
        compression=compression,
        timeout=5,
    )
    try:
        assert exporter.deliver(batch).delivered
        assert exporter.deliver([]).delivered
    finally:
        exporter.shutdown()
    assert received == [sdk_bytes(batch), b""]
    assert metadata[0]["x-tenant"] == "acme"


def test_http_posts_the_sdk_bytes() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        bodies.append(gzip.decompress(body) if request.headers.get("content-encoding") else body)
        return httpx.Response(200, content=ExportTraceServiceResponse().SerializeToString())

    batch = converted("full")
    compressions: tuple[Literal["none", "gzip"], ...] = ("none", "gzip")
    for compression in compressions:
        exporter = OtlpHttpExporter(
            endpoint="http://collector:4318/v1/traces",
            compression=compression,
            transport=httpx.MockTransport(handler),
        )
        try:
            assert exporter.deliver(batch).delivered
        finally:
            exporter.shutdown()
    assert bodies == [sdk_bytes(batch)] * 2
