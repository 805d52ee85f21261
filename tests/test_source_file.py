"""The file source: JSON, JSON arrays, JSON lines, stdin, recorded fixtures, and bad records."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from exporter.errors import RecordInvalidError, SourceError
from exporter.source import read_trace_file
from tests.conftest import CLOUD, LETTA

TRACE_FILES = sorted(p for p in (LETTA / "traces").glob("*.json") if "database" not in p.name)
STEP_FILES = sorted((LETTA / "steps").glob("*.json"))
NULL_STEP = LETTA / "steps" / "step-0926f9bd-777f-4b1a-a0f2-d59219f2b880.json"


def trace_ids(paths) -> list[str]:
    return [json.loads(p.read_bytes())["id"] for p in paths]


def compact(path) -> str:
    return json.dumps(json.loads(path.read_bytes()))


def test_one_pretty_printed_trace(tmp_path):
    assert [t.id for t in read_trace_file(TRACE_FILES[0])] == trace_ids(TRACE_FILES[:1])
    assert [t.latency_ms for t in read_trace_file(CLOUD / "nonstreaming_trace_cloud.json")] != [
        None
    ]
    one_line = tmp_path / "one.json"
    one_line.write_text(compact(TRACE_FILES[1]))
    assert [t.id for t in read_trace_file(str(one_line))] == trace_ids(TRACE_FILES[1:2])


def test_array_of_traces_and_recorded_fixtures(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="exporter.source")
    items = [json.loads(p.read_bytes()) for p in TRACE_FILES[:3]]
    items += [json.loads(p.read_bytes()) for p in (NULL_STEP, STEP_FILES[1])]
    path = tmp_path / "all.json"
    path.write_text(json.dumps(items, indent=2))
    reader = read_trace_file(path)
    traces = list(reader)
    expected = [*trace_ids(TRACE_FILES[:3]), json.loads(STEP_FILES[1].read_bytes())["trace"]["id"]]
    assert [t.id for t in traces] == expected
    assert reader.records == 5
    assert reader.null_traces == 1
    assert any("1 of 5 records had no trace" in r.getMessage() for r in caplog.records)


def test_recorded_fixture_with_null_trace_yields_nothing_but_is_counted():
    reader = read_trace_file(NULL_STEP)
    assert list(reader) == []
    assert reader.records == 1
    assert reader.null_traces == 1


def test_json_lines_with_blank_lines_and_fixture_lines(tmp_path):
    lines = [compact(p) for p in TRACE_FILES] + ["", "   "] + [compact(p) for p in STEP_FILES]
    path = tmp_path / "traces.jsonl"
    path.write_text("\n".join(lines) + "\n")
    reader = read_trace_file(path)
    traces = list(reader)
    step_traces = [json.loads(p.read_bytes())["trace"] for p in STEP_FILES]
    assert [t.id for t in traces] == trace_ids(TRACE_FILES) + [t["id"] for t in step_traces if t]
    assert reader.null_traces == 1
    assert reader.records == len(TRACE_FILES) + len(STEP_FILES)


def test_json_lines_are_streamed_line_by_line(tmp_path):
    path = tmp_path / "traces.jsonl"
    path.write_text(compact(TRACE_FILES[0]) + "\n" + compact(TRACE_FILES[1]) + "\n{broken\n")
    reader = read_trace_file(path)
    assert next(reader).id == trace_ids(TRACE_FILES[:1])[0]
    assert next(reader).id == trace_ids(TRACE_FILES[1:2])[0]  # read before the bad line
    with pytest.raises(RecordInvalidError, match=r"not valid JSON .* line 3 of .*traces\.jsonl"):
        next(reader)


def test_stdin(monkeypatch):
    data = "\n".join(compact(p) for p in TRACE_FILES[:2]) + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.encode())))
    reader = read_trace_file("-")
    assert [t.id for t in reader] == trace_ids(TRACE_FILES[:2])
    assert reader.name == "<stdin>"


def test_stdin_pretty_printed_document(monkeypatch):
    data = TRACE_FILES[0].read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\n" + data)))
    assert [t.id for t in read_trace_file("-")] == trace_ids(TRACE_FILES[:1])


def test_bad_record_names_the_line_id_and_field(tmp_path):
    bad = json.loads(TRACE_FILES[0].read_bytes())
    bad["response_json"] = ["not", "an", "object"]
    path = tmp_path / "traces.jsonl"
    path.write_text(compact(TRACE_FILES[1]) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordInvalidError) as raised:
        list(read_trace_file(path))
    assert raised.value.record_id == bad["id"]
    assert raised.value.field == "response_json"
    assert "line 3 of" in str(raised.value)


def test_bad_trace_inside_a_fixture_record(tmp_path):
    record = json.loads(STEP_FILES[1].read_bytes())
    record["trace"]["request_json"] = "oops"
    path = tmp_path / "fixtures.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(RecordInvalidError) as raised:
        list(read_trace_file(path))
    assert raised.value.field == "trace.request_json"
    assert raised.value.record_id == record["trace"]["id"]


def test_bad_item_in_an_array(tmp_path):
    path = tmp_path / "all.json"
    path.write_text(json.dumps([json.loads(TRACE_FILES[0].read_bytes()), {"id": "x"}, 3]))
    with pytest.raises(RecordInvalidError, match=r"item 2 of .*all\.json"):
        list(read_trace_file(path))


def test_not_json_at_all(tmp_path):
    path = tmp_path / "nope.json"
    path.write_text("{\n  this is not json\n")
    with pytest.raises(RecordInvalidError, match="not valid JSON"):
        list(read_trace_file(path))


def test_empty_file_yields_nothing(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    assert list(read_trace_file(path)) == []


def test_missing_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match=r"cannot read .*missing\.json"):
        read_trace_file(tmp_path / "missing.json")


def test_reader_closes_its_file(tmp_path):
    path = tmp_path / "traces.jsonl"
    path.write_text(compact(TRACE_FILES[0]) + "\n" + compact(TRACE_FILES[1]) + "\n")
    with read_trace_file(path) as reader:
        next(reader)
    assert reader._stream.closed
