"""Collecting span attributes so that every value is a valid OTel attribute value.

OTel attribute values are ``str``, ``bool``, ``int`` (int64), ``float`` or homogeneous sequences
of one of those; ``None`` is not allowed. :class:`SpanAttributes` only accepts such values, reads
loosely typed record values (tokens as strings, floats for ints, ...) through the ``as_*``
helpers, and collects a warning for whatever it had to leave out, so the span can say so in
``letta.convert.warnings``. :meth:`SpanAttributes.finish` then applies redaction, the size limit
and the truncation bookkeeping to every string, once, at the end.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ._json import fit_json, truncate_text
from ._sanitize import (
    REDACTED,
    Cleaner,
    fix_text,
    is_credential_key,
    redact_text,
    scrub_url_userinfo,
)
from ._semconv import LETTA_CONTENT_TRUNCATED, LETTA_CONVERT_WARNINGS

__all__ = ["INT64_MAX", "AttributeValue", "SpanAttributes", "as_float", "as_int", "as_str"]

INT64_MAX: Final = 2**63 - 1
INT64_MIN: Final = -(2**63)
MAX_WARNINGS: Final = 32
# Flattening a mapping stops after this many attributes (a newer server's extra fields, a
# pathological llm_config); the rest is reported in a warning, not silently dropped.
MAX_FLATTENED: Final = 256
# Deeper than this, a nested value is put on the span as one JSON string.
MAX_FLATTEN_DEPTH: Final = 6

AttributeValue = (
    str | bool | int | float | Sequence[str] | Sequence[bool] | Sequence[int] | Sequence[float]
)


def as_int(value: Any) -> int | None:
    """A non-negative int64 from an int, an integral float or a decimal string; else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        result = int(value)
    elif isinstance(value, str) and value.strip().isdecimal() and len(value.strip()) <= 19:
        result = int(value.strip())
    else:
        return None
    return result if 0 <= result <= INT64_MAX else None


def as_float(value: Any) -> float | None:
    """A finite float from an int or float (not bool), or from a numeric string; else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            result = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def as_str(value: Any) -> str | None:
    """``value`` if it is a non-empty string, else ``None``."""
    return value if isinstance(value, str) and value else None


def _scalar(value: Any) -> str | bool | int | float | None:
    """A flattened scalar as an attribute value; ``None`` when it is not a scalar."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return None


def _homogeneous(items: Sequence[Any]) -> tuple[Any, ...] | None:
    """``items`` as an attribute sequence if they are scalars of one OTel type, else ``None``."""
    if not items:
        return ()
    kind = type(items[0])
    if kind not in (str, bool, int, float) or any(type(item) is not kind for item in items):
        return None
    if kind is int and any(not INT64_MIN <= item <= INT64_MAX for item in items):
        return None
    if kind is float and any(not math.isfinite(item) for item in items):
        return None
    return tuple(items)


_SCALAR_TYPES: Final = frozenset({str, int, bool, float, type(None)})
_STR_KEYS: Final = frozenset({str})
_FLAT_CACHE_SIZE: Final = 1024
#: Flattened mappings of scalars (``llm_config``, ``compaction_settings``, token details), by
#: content: the same few configurations come back on every trace of an agent. An entry is the
#: attributes (read-only once stored: callers copy them with ``dict.update``) and, when the
#: mapping holds floats, the signs of its float zeros (:func:`_zero_signs`).
_FLAT_CACHE: Final[
    dict[tuple[Any, ...], tuple[dict[str, AttributeValue], tuple[tuple[str, float], ...] | None]]
] = {}


def _flat_key(prefix: str, value: Any) -> tuple[Any, ...] | None:
    """The cache key of a mapping whose flattening depends on its content alone, else ``None``.

    Only plain dicts of str keys and scalar values (at most :data:`MAX_FLATTENED`) qualify. The
    value types are part of the key (``1 == True == 1.0``); float zeros are told apart by the
    cache entry (:func:`_zero_signs`).
    """
    if type(value) is not dict or not 0 < len(value) <= MAX_FLATTENED:
        return None
    if not set(map(type, value)) <= _STR_KEYS:
        return None
    types = tuple(map(type, value.values()))
    if not set(types) <= _SCALAR_TYPES:
        return None
    return (prefix, tuple(value.items()), types)


def _zero_signs(value: dict[str, Any]) -> tuple[tuple[str, float], ...]:
    """The signs of the float zeros of ``value``: ``0.0 == -0.0``, yet they encode differently,
    so a cached flattening holding one stands only for mappings with the same signs."""
    return tuple(
        (k, math.copysign(1.0, v)) for k, v in value.items() if type(v) is float and v == 0.0
    )


def _is_mapping(value: Any) -> bool:
    return not isinstance(value, str | int | float | list | tuple) and isinstance(value, Mapping)


class SpanAttributes:
    """The attributes of one span under construction, plus the warnings met on the way.

    Args:
        redactors: the user's compiled redaction patterns.
        max_bytes: the per-attribute size limit in UTF-8 bytes.
    """

    __slots__ = ("_capped", "_json", "max_bytes", "redactors", "values", "warnings")

    def __init__(self, redactors: tuple[re.Pattern[str], ...], max_bytes: int) -> None:
        self.values: dict[str, AttributeValue] = {}
        self.warnings: list[str] = []
        self.redactors = redactors
        self.max_bytes = max_bytes
        # JSON-valued attributes kept as cleaned structures until finish(): their truncation
        # must keep them valid JSON. Value: (structure, may shortened containers get markers).
        self._json: dict[str, tuple[Any, bool]] = {}
        # Attributes shortened by a cap of their own (tags, model names) before finish().
        self._capped: list[str] = []

    # --- writing ---------------------------------------------------------------------------
    def warn(self, message: str) -> None:
        """Record something that could not be read (never the unreadable value itself)."""
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
        elif len(self.warnings) == MAX_WARNINGS:
            self.warnings.append("more warnings left out")

    def put_str(self, key: str, value: Any) -> None:
        """Set ``key`` when ``value`` is a non-empty string."""
        if isinstance(value, str) and value:
            self.values[key] = value

    def put_int(self, key: str, value: Any, *, where: str | None = None) -> None:
        """Set ``key`` to a non-negative int64 read loosely; warn (naming ``where``) otherwise."""
        if value is None:
            return
        number = as_int(value)
        if number is None:
            if where:
                self.warn(f"{where}: expected a non-negative integer, got {type(value).__name__}")
            return
        self.values[key] = number

    def put_float(self, key: str, value: Any, *, where: str | None = None) -> None:
        """Set ``key`` to a finite float read loosely; warn (naming ``where``) otherwise."""
        if value is None:
            return
        number = as_float(value)
        if number is None:
            if where:
                self.warn(f"{where}: expected a number, got {type(value).__name__}")
            return
        self.values[key] = number

    def put_bool(self, key: str, value: Any) -> None:
        """Set ``key`` when ``value`` is a bool."""
        if isinstance(value, bool):
            self.values[key] = value

    def put_strs(self, key: str, value: Any, *, where: str | None = None) -> None:
        """Set ``key`` to a string array from a list of strings (or one string)."""
        if value is None:
            return
        if isinstance(value, str):
            self.values[key] = (value,)
            return
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            self.values[key] = tuple(value)
            return
        if where:
            self.warn(f"{where}: expected a list of strings, got {type(value).__name__}")

    def mark_truncated(self, key: str) -> None:
        """Name ``key`` in ``letta.content.truncated``: a cap of its own shortened it."""
        if key not in self._capped:
            self._capped.append(key)

    def put_json(self, key: str, structure: Any, *, markers: bool) -> None:
        """Set ``key`` to a cleaned JSON structure, serialised (and fitted) in :meth:`finish`."""
        self._json[key] = (structure, markers)

    def flatten(self, prefix: str, value: Any, cleaner: Cleaner) -> None:
        """Put a nested record value on the span as dotted scalar attributes.

        Mappings become ``prefix.key`` (nested: ``prefix.a.b``); lists of scalars of one type
        become arrays; anything else (mixed lists, lists of objects, nesting deeper than
        :data:`MAX_FLATTEN_DEPTH`) becomes one JSON string. ``None`` means "not set" and is
        skipped. Credential keys get ``[REDACTED]`` at any depth.
        """
        key = _flat_key(prefix, value)
        if key is not None:
            entry = _FLAT_CACHE.get(key)
            if entry is not None and (entry[1] is None or _zero_signs(value) == entry[1]):
                self.values.update(entry[0])
                return
            self.values.update(self._flatten_scalars(key, prefix, value, cleaner, entry is None))
            return
        budget = [MAX_FLATTENED]
        self._flatten(prefix, value, cleaner, 0, budget)
        if budget[0] < 0:
            self.warn(f"{prefix}: more than {MAX_FLATTENED} fields; the rest left out")

    def _flatten_scalars(
        self,
        key: tuple[Any, ...],
        prefix: str,
        value: dict[str, Any],
        cleaner: Cleaner,
        remember: bool,
    ) -> dict[str, AttributeValue]:
        """Flatten a mapping of scalars into a dict of its own, remembered when nothing else
        happened on the way (no warning, no JSON value, no clipped nesting)."""
        outer, self.values = self.values, {}
        warnings, structures, clipped = len(self.warnings), len(self._json), cleaner.clipped
        cleaner.clipped = False
        try:
            self._flatten(prefix, value, cleaner, 0, [MAX_FLATTENED])
            pairs = self.values
        finally:
            self.values = outer
            clipped_here, cleaner.clipped = cleaner.clipped, clipped or cleaner.clipped
        if (
            remember
            and len(self.warnings) == warnings
            and len(self._json) == structures
            and not clipped_here
        ):
            if len(_FLAT_CACHE) >= _FLAT_CACHE_SIZE:
                _FLAT_CACHE.clear()
            _FLAT_CACHE[key] = (pairs, _zero_signs(value) if float in key[2] else None)
        return pairs

    def _flatten(
        self, key: str, value: Any, cleaner: Cleaner, depth: int, budget: list[int]
    ) -> None:
        if value is None:
            return
        if budget[0] <= 0:
            budget[0] = -1
            return
        values = self.values
        if isinstance(value, dict) or _is_mapping(value):
            if depth >= MAX_FLATTEN_DEPTH:
                budget[0] -= 1
                self.put_json(key, cleaner.clean(value), markers=True)
                return
            for sub_key, sub_value in value.items():
                if sub_value is None:
                    continue
                plain = type(sub_key) is str and sub_key.isascii()
                name = f"{key}.{sub_key if plain else cleaner.key(sub_key)}"
                if is_credential_key(sub_key):
                    budget[0] -= 1
                    values[name] = REDACTED
                    continue
                kind = type(sub_value)
                # Inline the common scalar cases: this loop runs for every llm_config key.
                if (
                    kind is str
                    or kind is bool
                    or (kind is int and INT64_MIN <= sub_value <= INT64_MAX)
                ):
                    budget[0] -= 1
                    if budget[0] < 0:
                        return
                    values[name] = cleaner.scrub(sub_value) if kind is str else sub_value
                    continue
                self._flatten(name, sub_value, cleaner, depth + 1, budget)
                if budget[0] < 0:
                    return
            return
        budget[0] -= 1
        scalar = _scalar(value)
        if scalar is not None:
            # Redaction and the size limit come in finish(); credentials go now.
            self.values[key] = cleaner.scrub(scalar) if isinstance(scalar, str) else scalar
            return
        if isinstance(value, list | tuple):
            items = _homogeneous(value)
            if items is not None:
                if items and isinstance(items[0], str):
                    items = tuple(cleaner.scrub(item) for item in items)
                self.values[key] = items
                return
        self.put_json(key, cleaner.clean(value), markers=True)

    # --- reading ---------------------------------------------------------------------------
    def finish(self) -> dict[str, AttributeValue]:
        """The final attributes: JSON serialised, strings redacted and fitted, warnings added."""
        truncated: list[str] = list(self._capped)
        limit = self.max_bytes
        for key, (structure, markers) in self._json.items():
            text, cut = fit_json(structure, limit, markers=markers)
            self.values[key] = text
            if cut:
                truncated.append(key)
        json_keys = self._json.keys()
        redactors = self.redactors
        quarter = limit // 4
        if not (redactors or json_keys) and _all_plain(self.values, quarter):
            pass  # every string is short ASCII without "@": nothing to redact, fix or cut
        else:
            self._fit_all(truncated, limit)
        if truncated:
            self.values[LETTA_CONTENT_TRUNCATED] = tuple(truncated)
        if self.warnings:
            self.values[LETTA_CONVERT_WARNINGS] = tuple(
                truncate_text(fix_text(w), limit)[0] for w in self.warnings
            )
        return self.values

    def _fit_all(self, truncated: list[str], limit: int) -> None:
        json_keys = self._json.keys()
        redactors = self.redactors
        quarter = limit // 4
        for key, value in self.values.items():
            if key in json_keys:
                continue
            if isinstance(value, str):
                if not redactors and len(value) <= quarter and value.isascii() and "@" not in value:
                    continue  # the common case: nothing to redact, hide, fix or cut
                text, cut = self._fit(value, limit)
                if text is not value:
                    self.values[key] = text
                if cut and key not in truncated:
                    truncated.append(key)
            elif isinstance(value, tuple) and value and isinstance(value[0], str):
                fitted = [self._fit(item, limit) for item in value]
                if any(cut for _, cut in fitted) and key not in truncated:
                    truncated.append(key)
                self.values[key] = tuple(text for text, _ in fitted)

    def fit_text(self, value: str) -> str:
        """One free-text value (a status description) made safe and fitted like an attribute."""
        return self._fit(value, self.max_bytes)[0]

    def _fit(self, value: str, limit: int) -> tuple[str, bool]:
        value = scrub_url_userinfo(value)  # any URL from any record: no passwords
        if self.redactors:
            value = redact_text(value, self.redactors)
        return truncate_text(fix_text(value), limit)


def _all_plain(values: Mapping[str, Any], quarter: int) -> bool:
    """Whether every string (and string in a tuple) passes the per-value fast check of
    :meth:`SpanAttributes._fit`.

    One check over all strings joined: the values are few and short, so joining them costs
    less than a Python-level test of each (a span has ~80 attributes).
    """
    texts: list[str] = []
    append = texts.append
    value: Any
    for value in values.values():
        kind = type(value)
        if kind is str:
            append(value)
        elif kind is tuple:
            if value and isinstance(value[0], str):
                texts.extend(value)
        elif kind is not int and kind is not bool and kind is not float:
            return False  # a str subclass, say: the general path decides
    if not texts:
        return True
    blob = "".join(texts)
    return blob.isascii() and "@" not in blob and max(map(len, texts)) <= quarter
