"""OTLP JSON lines (the Collector file exporter format) and the console sink."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from exporter.sink import (
    ConsoleExporter,
    Delivery,
    OtlpJsonFileExporter,
    format_span,
    otlp_json_to_request,
    spans_to_otlp_json,
)
from testkit.otlp_receiver import OtlpReceiver, decode_attributes

from ._sink_spans import BASE_NS, ids, make_batch, make_span, span_id, trace_id

# The OTLP/JSON example of the specification's shape, as the Collector's file exporter writes
# it (hex ids, integer enums, int64 as strings), with a field this version does not know.
COLLECTOR_LINE = json.dumps(
    {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "my.library", "version": "1.0.0"},
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "parentSpanId": "eee19b7ec3c1b173",
                                "name": "I'm a server span",
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": "1544712661000000000",
                                "kind": 2,
                                "attributes": [
                                    {"key": "my.span.attr", "value": {"intValue": "42"}}
                                ],
                                "status": {"code": 1},
                                "aFieldFromTheFuture": {"x": 1},
                            }
                        ],
                    }
                ],
            }
        ]
    }
)


# --- the JSON encoding ---------------------------------------------------------------------------
def test_line_follows_otlp_json() -> None:
    line = spans_to_otlp_json(make_batch(3))

    assert "\n" not in line
    data = json.loads(line)
    (resource_spans,) = data["resourceSpans"]
    (scope_spans,) = resource_spans["scopeSpans"]
    root, child, _ = scope_spans["spans"]
    assert root["traceId"] == f"{trace_id(0):032x}"  # hex, not base64
    assert root["spanId"] == f"{span_id(0):016x}"
    assert "parentSpanId" not in root
    assert child["parentSpanId"] == f"{span_id(0):016x}"
    assert root["links"][0]["traceId"] == f"{trace_id(999):032x}"
    assert root["links"][0]["spanId"] == f"{span_id(999):016x}"
    assert root["kind"] == 3  # SPAN_KIND_CLIENT, as an integer
    assert root["status"] == {"code": 1}  # STATUS_CODE_OK
    assert root["startTimeUnixNano"] == str(BASE_NS)  # int64 as a decimal string
    attributes = {a["key"]: a["value"] for a in root["attributes"]}
    assert attributes["gen_ai.usage.input_tokens"] == {"intValue": "100"}
    assert attributes["gen_ai.request.temperature"] == {"doubleValue": 0.25}
    assert attributes["gen_ai.request.stream"] == {"boolValue": False}
    assert attributes["gen_ai.response.finish_reasons"] == {
        "arrayValue": {"values": [{"stringValue": "stop"}, {"stringValue": "tool_calls"}]}
    }
    assert scope_spans["scope"]["name"] == "letta-otel-exporter"
    resource = {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}
    assert resource["service.name"] == {"stringValue": "letta"}


def test_round_trip_through_the_proto_json_parser() -> None:
    spans = [*make_batch(4), make_span(9, error=True)]

    request = otlp_json_to_request(spans_to_otlp_json(spans))

    # Exactly what the SDK encoder makes for OTLP/protobuf: ids, times, attributes, all of it.
    assert request == encode_spans(spans)
    span = request.resource_spans[0].scope_spans[0].spans[1]
    assert span.trace_id.hex() == f"{trace_id(0):032x}"
    assert span.parent_span_id.hex() == f"{span_id(0):016x}"
    assert span.end_time_unix_nano == BASE_NS + 1_000_000_000 + 1_234_567_890
    assert decode_attributes(span.attributes)["letta.step.flags"] == [True, False]


def test_reads_the_collector_file_exporter_format() -> None:
    request = otlp_json_to_request(COLLECTOR_LINE)

    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == bytes.fromhex("5b8efff798038103d269b633813fc60c")
    assert span.span_id == bytes.fromhex("eee19b7ec3c1b174")
    assert span.parent_span_id == bytes.fromhex("eee19b7ec3c1b173")
    assert span.start_time_unix_nano == 1544712660000000000
    assert decode_attributes(span.attributes) == {"my.span.attr": 42}
    # And writes it back the same way (the unknown field aside).
    again = json.loads(json_format.MessageToJson(request, use_integers_for_enums=True))
    assert again["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["kind"] == 2


@pytest.mark.parametrize(
    "line",
    ["not json", "[1, 2]", '{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}'],
)
def test_unreadable_lines_raise_value_error(line: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - json, protobuf and id errors alike
        otlp_json_to_request(line)


# --- the file sink -----------------------------------------------------------------------------
def test_appends_one_synced_line_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "spans.jsonl"
    path.write_text(COLLECTOR_LINE + "\n")  # an existing file is appended to
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    exporter = OtlpJsonFileExporter(path)

    first, second = make_batch(3), make_batch(2, first=20)
    assert exporter.deliver(first) == Delivery(delivered=True)
    assert exporter.deliver(second) == Delivery(delivered=True)
    assert exporter.deliver([]) == Delivery(delivered=True)  # nothing to write
    exporter.shutdown()

    lines = path.read_text().splitlines()
    assert len(lines) == 3
    assert len(synced) == 2  # on disk before deliver() answered
    assert otlp_json_to_request(lines[1]) == encode_spans(first)
    assert otlp_json_to_request(lines[2]) == encode_spans(second)
    assert exporter.stats.exported_spans == 5


def test_failed_write_leaves_no_half_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = OtlpJsonFileExporter(path)
    assert exporter.deliver(make_batch(1)).delivered
    before = path.read_bytes()

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    result = exporter.deliver(make_batch(3, first=10))
    monkeypatch.undo()

    assert (result.delivered, result.permanent) == (False, False)
    assert result.message == f"{path}: write failed: No space left on device"
    assert path.read_bytes() == before
    assert exporter.deliver(make_batch(2, first=30)).delivered  # the re-send lands whole
    exporter.shutdown()
    lines = path.read_text().splitlines()
    assert [len(otlp_json_to_request(x).resource_spans[0].scope_spans[0].spans) for x in lines] == [
        1,
        2,
    ]


def test_dash_is_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    exporter = OtlpJsonFileExporter("-")

    assert exporter.target == "stdout"
    assert exporter.deliver(make_batch(2)).delivered

    out = capsys.readouterr().out
    assert out.endswith("\n")
    assert otlp_json_to_request(out) == encode_spans(make_batch(2))


@pytest.mark.e2e
@pytest.mark.parametrize("gzipped", [False, True])
def test_receiver_takes_the_json_lines(gzipped: bool) -> None:
    spans = make_batch(3)
    body = spans_to_otlp_json(spans).encode()
    headers = {"Content-Type": "application/json"}
    if gzipped:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    with OtlpReceiver(enable_grpc=False) as receiver:
        response = httpx.post(receiver.http_endpoint, content=body, headers=headers)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert receiver.span_ids() == ids(spans)
        assert json.loads(response.content) == {}


# --- the console -------------------------------------------------------------------------------
def test_console_one_line_per_span() -> None:
    stream = io.StringIO()
    exporter = ConsoleExporter(stream=stream)

    assert exporter.deliver([make_span(0), make_span(1, error=True)]).delivered

    lines = stream.getvalue().splitlines()
    assert lines == [
        "2026-01-01T00:00:00.000Z  1234.6ms  "
        f"trace={trace_id(0):032x} span={span_id(0):016x}  chat gpt-4o-mini  "
        "provider=openai model=gpt-4o-mini-2024-07-18 in=100 out=7 finish=stop,tool_calls  "
        "status=OK",
        "2026-01-01T00:00:01.000Z  1234.6ms  "
        f"trace={trace_id(1):032x} span={span_id(1):016x}  chat gpt-4o-mini  "
        "provider=openai model=gpt-4o-mini-2024-07-18 in=101 out=7 finish=stop,tool_calls  "
        "status=ERROR: rate limited",
    ]


def test_console_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert ConsoleExporter().deliver([make_span(3)]).delivered

    assert capsys.readouterr().out == format_span(make_span(3)) + "\n"


def test_console_closed_stream_is_a_failed_delivery() -> None:
    stream = io.StringIO()
    stream.close()

    result = ConsoleExporter(stream=stream).deliver([make_span(0)])

    assert (result.delivered, result.permanent) == (False, False)
    assert "write failed" in result.message
