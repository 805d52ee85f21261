"""The converter's fast paths give exactly what its general path gives.

Two shortcuts skip per-value work on the hot path: flattened mappings of scalars are remembered
by content (:func:`exporter.convert._attributes._flat_key`), and a span whose strings are all
short ASCII skips fitting them one by one (:func:`exporter.convert._attributes._all_plain`).
Each test converts the same records with the shortcuts and with them switched off, and compares
the attributes (order included) and the OTLP bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan

from exporter.convert import ConvertOptions, _attributes, build_resource, convert_trace
from exporter.convert._attributes import SpanAttributes
from exporter.convert._sanitize import Cleaner
from exporter.models import ProviderTrace
from tests.test_sink_encoder import CONTENTS, converted, sdk_bytes

RESOURCE = build_resource()


@pytest.fixture
def general_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    """A switch: ``True`` turns both shortcuts off, ``False`` back on (with a cold cache)."""

    def switch(off: bool) -> None:
        _attributes._FLAT_CACHE.clear()
        if off:
            monkeypatch.setattr(_attributes, "_flat_key", lambda prefix, value: None)
            monkeypatch.setattr(_attributes, "_all_plain", lambda values, quarter: False)
        else:
            monkeypatch.undo()

    yield switch
    monkeypatch.undo()
    _attributes._FLAT_CACHE.clear()


def _same(fast: list[ReadableSpan], general: list[ReadableSpan]) -> None:
    assert len(fast) == len(general)
    for a, b in zip(fast, general, strict=True):
        assert list((a.attributes or {}).items()) == list((b.attributes or {}).items()), a.name
    assert sdk_bytes(fast) == sdk_bytes(general)


@pytest.mark.parametrize("content", CONTENTS)
def test_every_fixture_converts_the_same_with_and_without_shortcuts(
    content: str, general_path: Callable[[bool], None]
) -> None:
    general_path(True)
    general = converted(content)
    general_path(False)
    cold = converted(content)
    warm = converted(content)  # the flattened mappings now come from the cache
    assert _attributes._FLAT_CACHE, "the fixtures' llm_config should have been remembered"
    _same(cold, general)
    _same(warm, general)


def _trace(llm_config: dict[str, Any], **fields: Any) -> ProviderTrace:
    # Constructed, not validated: the odd values must reach the converter as they are.
    return ProviderTrace.model_construct(
        id="provider_trace-0123abcd-fast-path",
        request_json={"model": "gpt-4.1", "messages": []},
        response_json={"choices": [], "model": "gpt-4.1"},
        llm_config=llm_config,
        **fields,
    )


ODD_CONFIGS: list[dict[str, Any]] = [
    {"temperature": 0.0, "top_p": 1.0},
    {"temperature": -0.0, "top_p": 1.0},
    {"flag": 1, "other": "x"},
    {"flag": True, "other": "x"},
    {"flag": 1.0, "other": "x"},
    {"big": 2**70, "nan": float("nan"), "inf": float("inf")},
    {"api_key": "sk-secret", "model": "m"},
    {"endpoint": "https://user:pw@example.com/v1", "mail": "a@b.c"},
    {"blob": '{"api_key": "sk-1", "x": 1}'},
    {"name": "caf\u00e9", "long": "x" * 40_000},
    {"surrogate": "a\ud800b"},
    {f"k{i}": i for i in range(300)},  # past the flattening budget: a warning
]


@pytest.mark.parametrize("content", ["none", "full"])
@pytest.mark.parametrize("redact", [(), (r"sk-[A-Za-z0-9]+",)])
def test_odd_mappings_convert_the_same(
    content: str, redact: tuple[str, ...], general_path: Callable[[bool], None]
) -> None:
    options = ConvertOptions(content=content, redact_patterns=redact, content_max_bytes=4096)  # type: ignore[arg-type]

    def spans() -> list[ReadableSpan]:
        # Each config twice, and after each other: a cached one must never stand for another.
        return [
            convert_trace(_trace(c), options=options, resource=RESOURCE)
            for c in ODD_CONFIGS + ODD_CONFIGS
        ]

    general_path(True)
    general = spans()
    general_path(False)
    _same(spans(), general)
    _same(spans(), general)


def test_negative_zero_is_never_served_for_zero() -> None:
    _attributes._FLAT_CACHE.clear()
    options = ConvertOptions(content="none")
    zero = convert_trace(_trace({"temperature": 0.0}), options=options, resource=RESOURCE)
    negative = convert_trace(_trace({"temperature": -0.0}), options=options, resource=RESOURCE)
    assert sdk_bytes([zero]) != sdk_bytes([negative])


def test_a_clipped_mapping_still_marks_the_cleaner_from_the_cache() -> None:
    deep: Any = "leaf"
    for _ in range(40):
        deep = [deep]
    config = {"blob": '{"api_key": ' + json.dumps(deep) + "}"}
    for _ in range(2):
        out = SpanAttributes((), 4096)
        cleaner = Cleaner()
        out.flatten("letta.llm_config", config, cleaner)
        general = SpanAttributes((), 4096)
        general_cleaner = Cleaner()
        general._flatten("letta.llm_config", config, general_cleaner, 0, [1000])
        assert out.values == general.values
        assert cleaner.clipped == general_cleaner.clipped


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["http://u:p@h/x", "sk-abc", '{"token": "t"}', "a@b", "\ud800"]),
)
configs = st.dictionaries(
    st.one_of(st.text(max_size=12), st.sampled_from(["api_key", "password", "model"])),
    scalars,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(configs, min_size=1, max_size=4))
def test_random_mappings_convert_the_same(batch: list[dict[str, Any]]) -> None:
    options = ConvertOptions(content="none")

    def spans() -> list[ReadableSpan]:
        return [convert_trace(_trace(c), options=options, resource=RESOURCE) for c in batch * 2]

    _attributes._FLAT_CACHE.clear()
    fast = spans()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_attributes, "_flat_key", lambda prefix, value: None)
        patch.setattr(_attributes, "_all_plain", lambda values, quarter: False)
        general = spans()
    _same(fast, general)
