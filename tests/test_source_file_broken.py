"""Broken records in input files: each is that record's error, the rest are read and exported.

Truncated JSON, bytes that are not UTF-8, garbage and JSON nested 1000 deep, alone in a file or
among good records, as JSON lines or in an array; through the reader and through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.errors import RecordInvalidError
from exporter.models import NESTED_TOO_DEEPLY, load_json
from exporter.source import read_trace_file
from testkit import DEEP_LEVELS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "provider-traces.jsonl"
# Plain ProviderTrace lines (the sample's records carry the step and metrics beside the trace).
GOOD = [
    json.dumps(json.loads(line).get("trace") or json.loads(line))
    for line in EXAMPLE.read_text().splitlines()[:2]
]
DEEP = (
    '{"request_json": {"messages": ' + "[" * DEEP_LEVELS + "]" * DEEP_LEVELS + "}, "
    '"response_json": {}}'
)

#: One broken record per file, and the words its error must contain.
SINGLE: dict[str, tuple[bytes, str]] = {
    "truncated": (GOOD[0][: len(GOOD[0]) // 2].encode(), "not valid JSON"),
    "garbage": (b"{not json\n", "not valid JSON"),
    "invalid_utf8": (GOOD[0].encode().replace(b'"model"', b'"mo\xff\xfedel"', 1), "not valid JSON"),
    "deep": (DEEP.encode(), NESTED_TOO_DEEPLY),
    "pretty_truncated": (json.dumps(json.loads(GOOD[0]), indent=2)[:300].encode(), "not valid"),
    "array_truncated": (("[" + GOOD[0][:200]).encode(), "not valid JSON"),
}


def _read(path: Path) -> tuple[list[str], list[RecordInvalidError]]:
    errors: list[RecordInvalidError] = []
    with read_trace_file(path, on_invalid=errors.append) as traces:
        ids = [t.id or "" for t in traces]
    return ids, errors


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_a_file_of_one_broken_record_reports_it(tmp_path: Path, name: str) -> None:
    body, words = SINGLE[name]
    path = tmp_path / "one.json"
    path.write_bytes(body)
    ids, errors = _read(path)
    assert ids == []
    (error,) = errors
    assert words in str(error)
    assert str(path) in str(error)
    # Without a handler the error is raised, still a RecordInvalidError (never RecursionError).
    with pytest.raises(RecordInvalidError, match=words), read_trace_file(path) as traces:
        list(traces)


def test_json_lines_around_a_deep_record(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_text("\n".join([GOOD[0], DEEP, "{not json", GOOD[1]]) + "\n")
    ids, errors = _read(path)
    assert ids == [json.loads(line)["id"] for line in GOOD]
    assert [str(e).split(" in ")[-1] for e in errors] == [f"line 2 of {path}", f"line 3 of {path}"]
    assert NESTED_TOO_DEEPLY in str(errors[0])


def test_a_deep_first_line_of_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_text("\n".join([DEEP, GOOD[0], GOOD[1]]) + "\n")
    ids, errors = _read(path)
    assert ids == [json.loads(line)["id"] for line in GOOD]
    assert len(errors) == 1
    assert NESTED_TOO_DEEPLY in str(errors[0])


def test_an_array_around_a_deep_item_and_a_truncated_tail(tmp_path: Path) -> None:
    path = tmp_path / "traces.json"
    # A string holding brackets and commas must not confuse the item split.
    tricky = json.loads(GOOD[1])
    tricky["agent_tags"] = ['a "quoted", [bracketed] {tag}\\']
    items = [GOOD[0], DEEP, json.dumps(tricky), '{"trace": ' + DEEP + "}"]
    path.write_text("[" + ",\n".join(items) + ",\n" + GOOD[0][:100])
    ids, errors = _read(path)
    assert ids == [json.loads(GOOD[0])["id"], tricky["id"]]
    where = [str(e).split(" in ")[-1] for e in errors]
    assert where == [f"item 2 of {path}", f"item 4 of {path}", f"{path} after item 4"]
    assert NESTED_TOO_DEEPLY in str(errors[0])
    assert NESTED_TOO_DEEPLY in str(errors[1])


def test_load_json_gives_a_value_error_at_any_depth() -> None:
    assert load_json("[" * 10 + "]" * 10) == [[[[[[[[[[]]]]]]]]]]
    for depth in (5 * DEEP_LEVELS, 100_000):
        with pytest.raises(ValueError, match=NESTED_TOO_DEEPLY):
            load_json("[" * depth + "]" * depth)
    with pytest.raises(ValueError, match="Expecting"):
        load_json("{x")


# ------------------------------------------------------------------------------- the CLI
def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "OTEL_"))}
    env.update(
        LETTA_EXPORTER_STATE_PATH=str(tmp_path / "state.json"),
        LETTA_EXPORTER_DEAD_LETTER_PATH=str(tmp_path / "dead.jsonl"),
    )
    return env


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", *args],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize("name", ["truncated", "garbage", "invalid_utf8", "deep"])
def test_export_of_one_broken_record_dead_letters_it(tmp_path: Path, name: str) -> None:
    path = tmp_path / "one.json"
    path.write_bytes(SINGLE[name][0])
    result = _cli(tmp_path, "export", "--source", "file", "--input", str(path), "--json")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{\n") :])
    assert (summary["exported"], summary["invalid"]) == (0, 1)
    (dead,) = [json.loads(x) for x in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert dead["reason"] == "invalid"
    assert SINGLE[name][1] in dead["error"]


def test_export_and_convert_around_a_deep_record(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_text("\n".join([GOOD[0], DEEP, GOOD[1]]) + "\n")
    result = _cli(
        tmp_path, "export", "--source", "file", "--input", str(path), "--json", "--sink", "console"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{\n") :])
    assert (summary["exported"], summary["invalid"]) == (2, 1)
    (dead,) = [json.loads(x) for x in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert NESTED_TOO_DEEPLY in dead["error"]
    assert "line 2" in dead["error"]
    converted = _cli(tmp_path, "convert", str(path), "--no-parents")
    assert converted.returncode == 1
    assert "Traceback" not in converted.stderr
    assert "line 2" in converted.stderr
    assert NESTED_TOO_DEEPLY in converted.stderr
    assert "converted 2 traces" in converted.stderr
