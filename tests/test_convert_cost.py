"""The price of each call: hand-computed from list prices, the user's table, and no guessing.

List prices used by hand (USD per million tokens, as published by the providers):
gpt-4o-mini: input 0.15, cached input 0.075, output 0.60.
claude-sonnet-4-5 (under 200k input tokens): input 3.00, cache read 0.30, cache write (5 min)
3.75, output 15.00.
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime

import pytest

from exporter.convert import (
    ConvertOptions,
    TraceContext,
    build_resource,
    convert_trace,
    parse_prices,
    price_of,
)
from exporter.convert._prices import _library_model
from exporter.models import ProviderTrace, Step, StepMetrics, parse_record, parse_trace_body
from tests.conftest import LETTA

RESOURCE = build_resource()
WHEN = datetime(2026, 11, 21, tzinfo=UTC)
COST_KEYS = ("gen_ai.usage.cost", "llm.cost.total", "llm.cost.prompt", "llm.cost.completion")


def step_span(name: str, options: ConvertOptions | None = None):
    data = json.loads((LETTA / "steps" / f"{name}.json").read_bytes())
    trace = parse_trace_body(json.dumps(data["trace"]))
    context = TraceContext(
        step=parse_record(Step, json.dumps(data["step"])),
        metrics=parse_record(StepMetrics, json.dumps(data["metrics"])),
    )
    return convert_trace(trace, context, options=options or ConvertOptions(), resource=RESOURCE)


def per_million(*pairs: tuple[int, float]) -> float:
    return sum(tokens * price for tokens, price in pairs) / 1_000_000


def test_openai_call_with_cached_input():
    a = step_span("step-34cc935d-18dd-4162-8a34-92d3293bbadb").attributes
    # 2357 input tokens of which 1152 cached, 56 output.
    prompt = per_million((2357 - 1152, 0.15), (1152, 0.075))
    completion = per_million((56, 0.60))
    assert a["gen_ai.usage.cost"] == pytest.approx(prompt + completion, rel=1e-12)
    assert a["gen_ai.usage.cost"] == pytest.approx(0.00030075, rel=1e-12)
    assert a["llm.cost.total"] == a["gen_ai.usage.cost"]
    assert a["llm.cost.prompt"] == pytest.approx(prompt, rel=1e-12)
    assert a["llm.cost.completion"] == pytest.approx(completion, rel=1e-12)
    assert a["letta.cost.source"] == "genai-prices"


def test_anthropic_call_with_cache_read():
    a = step_span("step-67beedd0-50b6-4d44-b5e3-184a82938123").attributes
    # Anthropic's input_tokens 1224 (uncached) + cache read 1152 + cache creation 0; 15 output.
    assert a["gen_ai.usage.input_tokens"] == 2376
    expected = per_million((1224, 3.00), (1152, 0.30), (15, 15.00))
    assert a["gen_ai.usage.cost"] == pytest.approx(expected, rel=1e-12)
    assert a["gen_ai.usage.cost"] == pytest.approx(0.0042426, rel=1e-12)


def test_anthropic_call_with_cache_write():
    trace = ProviderTrace(
        request_json={"model": "claude-sonnet-4-5-20250929", "messages": []},
        response_json={
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [],
            "usage": {
                "input_tokens": 1000,
                "cache_read_input_tokens": 2000,
                "cache_creation_input_tokens": 500,
                "output_tokens": 100,
            },
        },
        llm_config={"model_endpoint_type": "anthropic"},
        created_at=WHEN,
    )
    a = convert_trace(trace, resource=RESOURCE).attributes
    expected = per_million((1000, 3.00), (2000, 0.30), (500, 3.75), (100, 15.00))
    assert expected == pytest.approx(0.006975, rel=1e-12)
    assert a["gen_ai.usage.cost"] == pytest.approx(expected, rel=1e-12)


def test_reasoning_tokens_are_part_of_output_not_billed_twice():
    base = dict(models=("gpt-4o-mini",), provider="openai", input_tokens=100, output_tokens=50)
    plain = price_of(**base, when=WHEN)
    with_reasoning = price_of(**base, reasoning_tokens=30, when=WHEN)
    assert plain is not None
    assert with_reasoning is not None
    assert with_reasoning.total == plain.total == pytest.approx(per_million((100, 0.15), (50, 0.6)))


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("no-such-model-xyz", "openai"),
        ("gpt-4o-mini", "vllm"),  # self-hosted: no list price
        ("gpt-4o-mini", None),
    ],
)
def test_unknown_model_or_provider_gets_no_cost(model, provider):
    assert price_of(models=(model,), provider=provider, input_tokens=10, output_tokens=10) is None


def test_unknown_model_span_has_no_cost_attribute():
    trace = ProviderTrace(
        request_json={"model": "in-house-7b", "messages": []},
        response_json={"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2}},
        llm_config={"model_endpoint_type": "openai"},
        created_at=WHEN,
    )
    a = convert_trace(trace, resource=RESOURCE).attributes
    assert a["gen_ai.usage.input_tokens"] == 10
    for key in (*COST_KEYS, "letta.cost.source"):
        assert key not in a


def test_no_usage_no_cost():
    assert price_of(models=("gpt-4o-mini",), provider="openai", input_tokens=None,
                    output_tokens=None) is None  # fmt: skip
    a = step_span("step-379dfb33-c522-46bb-82e3-9486defbc0bb").attributes  # a failed call
    assert "gen_ai.usage.cost" not in a


# --- the user's price table ------------------------------------------------------------------
TABLE = """
# USD per million tokens
[models."gpt-4o-mini"]
input = 1.0
output = 2.0
cache_read = 0.5

[models."in-house-7b"]
input = 0.1
output = 0.2
reasoning = 1.0
provider = "openai"
"""


def test_user_prices_override_the_library():
    options = ConvertOptions(prices=parse_prices(TABLE))
    a = step_span("step-34cc935d-18dd-4162-8a34-92d3293bbadb", options).attributes
    expected = per_million((2357 - 1152, 1.0), (1152, 0.5), (56, 2.0))
    assert a["gen_ai.usage.cost"] == pytest.approx(expected, rel=1e-12)
    assert a["letta.cost.source"] == "user"


def test_user_prices_extend_the_library_for_their_provider_only():
    table = parse_prices(TABLE)
    cost = price_of(
        models=("in-house-7b",),
        provider="openai",
        input_tokens=1000,
        output_tokens=500,
        reasoning_tokens=100,
        table=table,
    )
    assert cost is not None
    assert cost.total == pytest.approx(per_million((1000, 0.1), (400, 0.2), (100, 1.0)))
    assert cost.source == "user"
    other = price_of(models=("in-house-7b",), provider="vllm", input_tokens=1, output_tokens=1,
                     table=table)  # fmt: skip
    assert other is None


def test_price_table_in_json_and_matching_ignores_case():
    table = parse_prices('{"models": {"My-Model": {"input": 2, "output": "4"}}}')
    cost = price_of(models=("my-model",), provider=None, input_tokens=10**6, output_tokens=10**6,
                    table=table)  # fmt: skip
    assert cost is not None
    assert cost.total == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models", "not valid TOML or JSON"),
        ("x = 1", "expected a [models] table"),
        ('[models."m"]\ninput = 1', "models.m: output is required"),
        ('[models."m"]\ninput = -1\noutput = 1', "models.m.input: expected a non-negative number"),
        ('[models."m"]\ninput = 1\noutput = 1\nprice = 2', "models.m: unknown keys ['price']"),
        ('[models."m"]\ninput = true\noutput = 1', "models.m.input: expected a number, got bool"),
        ('[models."m"]\ninput = "x"\noutput = 1', "models.m.input: not a number"),
    ],
)
def test_bad_price_tables_are_refused_with_the_entry_named(text, message):
    with pytest.raises(ValueError, match=r"price table|models") as info:
        parse_prices(text)
    assert message in str(info.value)


def test_prices_come_from_the_bundled_snapshot_without_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access while pricing")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    _library_model.cache_clear()
    cost = price_of(
        models=("claude-sonnet-4-5",), provider="anthropic", input_tokens=1, output_tokens=1
    )
    assert cost is not None
    assert cost.total == pytest.approx(per_million((1, 3.0), (1, 15.0)))


def test_price_file_reader(tmp_path):
    from exporter.errors import ConfigError
    from exporter.prices import load_price_table

    good = tmp_path / "prices.toml"
    good.write_text(TABLE)
    assert load_price_table(good).find("GPT-4o-mini", "openai") is not None
    bad = tmp_path / "bad.toml"
    bad.write_text('[models."m"]\ninput = 1')
    with pytest.raises(ConfigError, match="output is required"):
        load_price_table(bad, setting="LETTA_EXPORTER_PRICES_FILE")
    with pytest.raises(ConfigError, match="cannot read"):
        load_price_table(tmp_path / "missing.toml")


def test_the_direct_arithmetic_agrees_with_the_library_over_the_whole_snapshot():
    from genai_prices import Usage
    from genai_prices.data_snapshot import get_snapshot

    from exporter.convert._prices import _plain_cost

    usages = [
        {"input_tokens": 2357, "output_tokens": 56, "cache_read_tokens": 1152},
        {
            "input_tokens": 3500,
            "output_tokens": 100,
            "cache_read_tokens": 2000,
            "cache_write_tokens": 500,
        },
        {"input_tokens": 10, "output_tokens": 0},
        # past the long-context tiers (200k, 272k ...): every token at the tier's price
        {
            "input_tokens": 300_000,
            "output_tokens": 1000,
            "cache_read_tokens": 100_000,
            "cache_write_tokens": 20_000,
        },
    ]
    checked = 0
    for provider in get_snapshot().providers:
        for model in provider.models:
            try:
                model_price = model.get_prices(WHEN)
            except (ValueError, LookupError):
                continue
            for usage in usages:
                fast = _plain_cost(
                    model_price,
                    usage["input_tokens"],
                    usage["output_tokens"],
                    usage.get("cache_read_tokens"),
                    usage.get("cache_write_tokens"),
                )
                if fast is None:
                    continue
                slow = model_price.calc_price(Usage(**usage))
                assert fast.total == pytest.approx(float(slow["total_price"]), rel=1e-12, abs=0)
                assert fast.input == pytest.approx(float(slow["input_price"]), rel=1e-12, abs=0)
                assert fast.output == pytest.approx(float(slow["output_price"]), rel=1e-12, abs=0)
                checked += 1
    assert checked > 2000
