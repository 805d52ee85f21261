"""The CLI's flags for the socket, the database, GenAI metrics and prices: usage errors first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from exporter.cli import app
from exporter.sink import otlp_json_to_request

_URL = "postgresql://reader:pg-SECRET-pw@127.0.0.1:1/letta"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("LETTA_", "OTEL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LETTA_EXPORTER_STATE_PATH", str(tmp_path / "state.json"))


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_socket_is_not_an_export_flag() -> None:
    code, out = invoke("export", "--socket", "/tmp/x.sock")
    assert code == 2
    assert "No such option '--socket'" in out


def test_input_does_not_go_with_the_database() -> None:
    code, out = invoke("export", "--input", "x.jsonl", "--source", "postgres")
    assert code == 2
    assert "--input reads a file: it goes with --source file, not postgres" in out
    code, out = invoke("export", "--input", "x.jsonl", "--database-url", _URL)
    assert code == 2
    assert "SECRET" not in out


def test_database_url_does_not_go_with_another_source() -> None:
    code, out = invoke("export", "--source", "letta", "--database-url", _URL)
    assert code == 2
    assert "--database-url reads Letta's database: it goes with --source postgres" in out
    assert "SECRET" not in out


def test_run_does_not_take_a_file_source() -> None:
    code, out = invoke("run", "--source", "file")
    assert code == 2
    assert "'file' is not one of 'letta', 'postgres'" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "--socket-mode", "0999"), "socket_mode (flag --socket-mode): expected"),
        (("run", "--journal-max-bytes", "huge"), "journal_max_bytes (flag --journal-max-bytes)"),
        (("export", "--metrics", "--sink", "file"), "metrics=true needs the OTLP sink"),
        (("export", "--metrics-temporality", "often"), "'often' is not one of"),
        (("check", "--prices-file", "/nonexistent/prices.toml"), "prices_file (flag"),
        (("convert", "--prices-file", "/nonexistent/prices.toml", "-"), "prices_file (flag"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    code, out = invoke(*args)
    assert code == 2, out
    assert message in out
    assert "Traceback" not in out


def test_a_price_file_prices_what_convert_makes(tmp_path: Path) -> None:
    # One dollar per input token: no library price looks like that.
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."gpt-4o-mini"]\ninput = 1000000\noutput = 0\n', encoding="utf-8")
    sample = Path(__file__).resolve().parent.parent / "examples" / "provider-traces.jsonl"
    out = tmp_path / "spans.jsonl"
    result = CliRunner().invoke(
        app, ["convert", str(sample), "-o", str(out), "--prices-file", str(prices)]
    )
    assert result.exit_code == 0, result.output
    spans = [
        span
        for line in out.read_text().splitlines()
        for rs in otlp_json_to_request(line).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    priced = {}
    for span in spans:
        attributes = {a.key: a.value for a in span.attributes}
        if "gen_ai.usage.cost" in attributes:
            priced[span.span_id] = (
                attributes["letta.cost.source"].string_value,
                attributes["gen_ai.usage.cost"].double_value,
                attributes["gen_ai.usage.input_tokens"].int_value,
                attributes["gen_ai.request.model"].string_value,
            )
    mini = [p for p in priced.values() if p[3] == "gpt-4o-mini"]
    assert mini
    for source, cost, tokens, _ in mini:
        assert source == "user"
        assert cost == pytest.approx(tokens)
    assert {p[0] for p in priced.values() if p[3] != "gpt-4o-mini"} <= {"genai-prices"}
