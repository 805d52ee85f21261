"""The price of an LLM call in USD, from its model, provider and token counts.

Prices come from ``genai-prices`` (pydantic's price library, its bundled snapshot: the library
fetches newer prices only when asked to with ``UpdatePrices``, which nothing here does), or from
the user's own price table, which is consulted first so it can both override and extend the
library. A model neither knows gets no price at all: never a guess from a similar name.

Token counts are the conventions' (``gen_ai.usage.*``): the input count includes cached input
(read and written), the output count includes reasoning. The price is computed for the time of
the call (the trace's ``created_at``), so a later price change does not rewrite history.

User price table (TOML, or the same structure in JSON), prices in USD per million tokens::

    [models."my-finetune"]
    input = 0.30          # uncached input
    output = 1.20
    cache_read = 0.03     # optional: cached input read (default: the input price)
    cache_write = 0.375   # optional: cached input written (default: the input price)
    reasoning = 1.20      # optional: reasoning output (default: the output price)
    provider = "openai"   # optional: only for calls to this gen_ai.provider.name
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final

from ._semconv import COST_SOURCE_LIBRARY, COST_SOURCE_USER

__all__ = ["Cost", "ModelPrices", "PriceTable", "parse_prices", "price_of"]

_MILLION: Final = Decimal(1_000_000)
# With no call time, the newest prices the library has.
_LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)
_PRICE_KEYS: Final = ("input", "output", "cache_read", "cache_write", "reasoning")

# gen_ai.provider.name -> genai-prices provider id. Others (ollama, vllm, custom endpoints)
# are not priced: a self-hosted or unknown provider has no list price.
_PROVIDER_IDS: Final = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "azure.ai.openai": "azure",
    "aws.bedrock": "aws",
    "groq": "groq",
    "mistral_ai": "mistral",
    "deepseek": "deepseek",
    "x_ai": "x-ai",
    "cohere": "cohere",
    "perplexity": "perplexity",
    "moonshot_ai": "moonshotai",
    "together": "together",
}


@dataclass(frozen=True, slots=True)
class Cost:
    """A call's price in USD, split as the viewers show it."""

    total: float
    input: float
    output: float
    source: str  # letta.cost.source: "genai-prices" or "user"


@dataclass(frozen=True, slots=True)
class ModelPrices:
    """One model's prices in USD per million tokens (``None``: use the plain input/output)."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    provider: str | None = None


@dataclass(frozen=True, slots=True)
class PriceTable:
    """The user's prices by lower-cased model name."""

    models: Mapping[str, ModelPrices]

    def find(self, model: str, provider: str | None) -> ModelPrices | None:
        prices = self.models.get(model.lower())
        if prices is None or (prices.provider and prices.provider != provider):
            return None
        return prices


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{where}: expected a number, got {type(value).__name__}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{where}: not a number") from None
    if not number.is_finite() or number < 0:
        raise ValueError(f"{where}: expected a non-negative number")
    return number


def parse_prices(text: str) -> PriceTable:
    """Read a user price table (TOML, or JSON when the text starts with ``{``).

    Raises:
        ValueError: the text is not a valid table; the message names the offending entry.
    """
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else tomllib.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"price table: not valid TOML or JSON ({exc})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise ValueError("price table: expected a [models] table")
    table: dict[str, ModelPrices] = {}
    for name, entry in models.items():
        where = f"models.{name}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a table")
        unknown = set(entry) - {*_PRICE_KEYS, "provider"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        for key in ("input", "output"):
            if key not in entry:
                raise ValueError(f"{where}: {key} is required")
        provider = entry.get("provider")
        if provider is not None and not (isinstance(provider, str) and provider):
            raise ValueError(f"{where}.provider: expected a provider name")
        optional = {
            key: _decimal(entry[key], f"{where}.{key}")
            for key in ("cache_read", "cache_write", "reasoning")
            if key in entry
        }
        table[str(name).lower()] = ModelPrices(
            input=_decimal(entry["input"], f"{where}.input"),
            output=_decimal(entry["output"], f"{where}.output"),
            provider=provider,
            **optional,
        )
    return PriceTable(MappingProxyType(table))


def _tokens(value: int | None) -> Decimal:
    return Decimal(value) if isinstance(value, int) and value > 0 else Decimal(0)


def _user_cost(
    prices: ModelPrices,
    input_tokens: int | None,
    output_tokens: int | None,
    cache_read: int | None,
    cache_write: int | None,
    reasoning: int | None,
) -> Cost:
    read, written = _tokens(cache_read), _tokens(cache_write)
    uncached = max(_tokens(input_tokens) - read - written, Decimal(0))
    input_cost = (
        uncached * prices.input
        + read * (prices.input if prices.cache_read is None else prices.cache_read)
        + written * (prices.input if prices.cache_write is None else prices.cache_write)
    ) / _MILLION
    output = _tokens(output_tokens)
    thinking = min(_tokens(reasoning), output)
    output_cost = (
        (output - thinking) * prices.output
        + thinking * (prices.output if prices.reasoning is None else prices.reasoning)
    ) / _MILLION
    return Cost(
        float(input_cost + output_cost), float(input_cost), float(output_cost), COST_SOURCE_USER
    )


@lru_cache(maxsize=1024)
def _library_model(provider_id: str, model: str) -> Any:
    """The library's model entry (``None`` when unknown); the lookup is the slow part."""
    from genai_prices.data_snapshot import get_snapshot  # imported on first use: ~0.1 s

    try:
        return get_snapshot().find_provider_model(model, None, provider_id, None)
    except LookupError:
        return None


def _library_cost(
    provider_id: str,
    model: str,
    when: datetime,
    input_tokens: int | None,
    output_tokens: int | None,
    cache_read: int | None,
    cache_write: int | None,
    reasoning: int | None,
) -> Cost | None:
    found = _library_model(provider_id, model.lower())
    if found is None:
        return None
    from genai_prices import Usage

    provider, info = found
    try:
        model_price = info.get_prices(when)
    except (ValueError, LookupError):
        return None
    fast = _plain_cost(model_price, input_tokens, output_tokens, cache_read, cache_write)
    if fast is not None:
        return fast
    usage = {
        key: value
        for key, value in (
            ("input_tokens", input_tokens),
            ("output_tokens", output_tokens),
            ("cache_read_tokens", cache_read),
            ("cache_write_tokens", cache_write),
            ("output_reasoning_tokens", reasoning),
        )
        if isinstance(value, int) and value >= 0
    }
    try:
        price = info.calc_price(Usage(**usage), provider, genai_request_timestamp=when)
    except (ValueError, LookupError, ArithmeticError):
        return None  # counts the library cannot price (e.g. inconsistent): no price, no guess
    return Cost(
        float(price.total_price),
        float(price.input_price),
        float(price.output_price),
        COST_SOURCE_LIBRARY,
    )


# The per-token prices a plain text-model price has; other units (per-search) cost nothing when
# their count is not given, which it never is here.
_PLAIN_KEYS: Final = frozenset({"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"})
_FREE_KEYS: Final = frozenset(
    {"web_searches_kcount", "storage_searches_kcount", "cache_write_1h_mtok"}
)


_LIBRARY_KEYS: Final = _PLAIN_KEYS | _FREE_KEYS
#: Per price object of the library's snapshot (kept alive here, so its id stays its own): its
#: per-token prices when they are all flat, else ``None`` (tiers depend on the call's input).
_FLAT_PRICES: Final[dict[int, tuple[Any, dict[str, Decimal] | None]]] = {}


def _flat_prices(model_price: Any) -> dict[str, Decimal] | None:
    """The prices :func:`_plain_cost` would read from a price without tiers, found once."""
    entry = _FLAT_PRICES.get(id(model_price))
    if entry is not None and entry[0] is model_price:
        return entry[1]
    stored = {key: value for key, value in vars(model_price).items() if value is not None}
    flat: dict[str, Decimal] | None = None
    if stored.keys() <= _LIBRARY_KEYS and all(
        isinstance(stored[key], Decimal) for key in _PLAIN_KEYS & stored.keys()
    ):
        flat = {key: stored[key] for key in _PLAIN_KEYS & stored.keys()}
    if len(_FLAT_PRICES) >= 1024:
        _FLAT_PRICES.clear()
    _FLAT_PRICES[id(model_price)] = (model_price, flat)
    return flat


def _rate(price: Any, total_input: Decimal) -> Decimal | None:
    """A flat price, or a tiered one at the tier the call's whole input falls in (a cliff:
    past a threshold every token pays that tier's price, as the library defines it)."""
    if isinstance(price, Decimal):
        return price
    base, tiers = getattr(price, "base", None), getattr(price, "tiers", None)
    if not isinstance(base, Decimal) or not isinstance(tiers, list):
        return None
    for tier in reversed(tiers):
        if total_input > tier.start:
            return tier.price if isinstance(tier.price, Decimal) else None
    return base


def _plain_cost(
    model_price: Any,
    input_tokens: int | None,
    output_tokens: int | None,
    cache_read: int | None,
    cache_write: int | None,
) -> Cost | None:
    """The library's price, computed directly when it is a plain per-token price; else ``None``.

    ``ModelPrice.calc_price`` resolves a unit registry on every call (~60 us, more than the rest
    of a conversion); for the common case (flat input, cached input and output prices, no
    tiers) the arithmetic is that of the price's own definition, and a test checks it against
    the library's over the whole snapshot. Anything else (tiers, audio, per-request fees, a
    cache count without a cache price) goes through the library.
    """
    total_input = _tokens(input_tokens)
    flat = _flat_prices(model_price)
    if flat is not None:
        prices = flat
    else:
        stored = {key: value for key, value in vars(model_price).items() if value is not None}
        if not stored.keys() <= _LIBRARY_KEYS:
            return None
        prices = {}
        for key in _PLAIN_KEYS & stored.keys():
            rate = _rate(stored[key], total_input)
            if rate is None:
                return None
            prices[key] = rate
    read, written = _tokens(cache_read), _tokens(cache_write)
    if (read and "cache_read_mtok" not in prices) or (written and "cache_write_mtok" not in prices):
        return None
    uncached = total_input - read - written
    if uncached < 0:
        return None  # inconsistent counts: let the library decide
    input_cost = (
        uncached * prices.get("input_mtok", Decimal(0))
        + read * prices.get("cache_read_mtok", Decimal(0))
        + written * prices.get("cache_write_mtok", Decimal(0))
    ) / _MILLION
    output_cost = _tokens(output_tokens) * prices.get("output_mtok", Decimal(0)) / _MILLION
    return Cost(
        float(input_cost + output_cost),
        float(input_cost),
        float(output_cost),
        COST_SOURCE_LIBRARY,
    )


def price_of(
    *,
    models: tuple[str | None, ...],
    provider: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    cache_read_tokens: int | None = None,
    cache_creation_tokens: int | None = None,
    reasoning_tokens: int | None = None,
    when: datetime | None = None,
    table: PriceTable | None = None,
) -> Cost | None:
    """The price of one call, or ``None`` when neither the table nor the library knows it.

    Args:
        models: model names to try in order (the response model, then the request model).
        provider: ``gen_ai.provider.name``.
        input_tokens: the input count, cached input included (the conventions' count).
        output_tokens: the output count, reasoning included.
        cache_read_tokens: cached input read.
        cache_creation_tokens: cached input written.
        reasoning_tokens: reasoning output.
        when: the time of the call, for prices that changed; ``None``: the newest prices.
        table: the user's prices, consulted first.
    """
    if input_tokens is None and output_tokens is None:
        return None
    names = [m for m in models if isinstance(m, str) and m]
    counts = (input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens)
    if table is not None:
        for name in names:
            prices = table.find(name, provider)
            if prices is not None:
                return _user_cost(prices, *counts, reasoning_tokens)
    provider_id = _PROVIDER_IDS.get(provider or "")
    if provider_id is None:
        return None
    moment = when if when is not None else _LATEST
    for name in names:
        cost = _library_cost(provider_id, name, moment, *counts, reasoning_tokens)
        if cost is not None:
            return cost
    return None
