"""Serialising cleaned values and fitting them into an attribute size limit, keeping JSON valid.

A JSON attribute that is too large is shrunk in steps, each tried before the next (strings
longer than the limit, and lists longer than it has room for, are cut once up front so that each
try serialises little):

1. long strings are cut (binary search on the longest length that fits), each cut string ending
   in ``...[truncated]``;
2. with strings at a minimum length, lists (and, for raw bodies, objects) keep only their first
   items (binary search again); raw bodies say how many items were left out, content attributes
   (whose JSON schema has no room for a marker) just end early;
3. if even that does not fit, an empty list or object.

The caller records the attribute's name in ``letta.content.truncated`` whenever one of the steps
ran. Inputs are outputs of :class:`~._sanitize.Cleaner`, so :func:`dumps` cannot fail.
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = ["TRUNCATION_MARKER", "dumps", "fit_json", "truncate_text", "utf8_len"]

TRUNCATION_MARKER: Final = "...[truncated]"
_MIN_STRING_CHARS: Final = 16


def dumps(value: Any) -> str:
    """Compact JSON, non-ASCII kept as is (the size limit is in UTF-8 bytes)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def utf8_len(text: str) -> int:
    """The size of ``text`` in UTF-8 bytes."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def truncate_text(text: str, max_bytes: int) -> tuple[str, bool]:
    """``text`` cut to ``max_bytes`` UTF-8 bytes (marker included) on a character boundary.

    Returns:
        The text and whether it was cut.
    """
    if len(text) * 4 <= max_bytes or utf8_len(text) <= max_bytes:
        return text, False
    keep = max(max_bytes - len(TRUNCATION_MARKER), 0)
    head = text.encode("utf-8", "surrogatepass")[:keep].decode("utf-8", "ignore")
    return head + TRUNCATION_MARKER, True


def fit_json(value: Any, max_bytes: int, *, markers: bool) -> tuple[str, bool]:
    """Serialise ``value`` within ``max_bytes``, shrinking it as the module docstring says.

    Args:
        value: a cleaned JSON value.
        max_bytes: the limit in UTF-8 bytes.
        markers: whether shortened containers may get a marker item (raw bodies: yes; values
            that must follow a schema: no).

    Returns:
        Valid JSON text and whether anything was left out.
    """
    text = dumps(value)  # the common case: it fits
    if utf8_len(text) <= max_bytes:
        return text, False
    longest, widest = _extent(value)
    # A string longer than the limit, or a container with more items than the limit has bytes
    # for, cannot fit whole: cut those once, so each try below serialises little.
    item_cap = max_bytes // 2
    if longest > max_bytes or widest > item_cap:
        value = _shrink(
            value, min(longest, max_bytes), item_cap if widest > item_cap else None, markers=markers
        )
        longest, widest = min(longest, max_bytes), min(widest, item_cap)
    if longest > _MIN_STRING_CHARS:
        found = _search(
            _MIN_STRING_CHARS,
            longest,
            lambda cap: dumps(_shrink(value, cap, None, markers=markers)),
            max_bytes,
        )
        if found is not None:
            return found, True
    found = _search(
        0,
        widest,
        lambda cap: dumps(_shrink(value, _MIN_STRING_CHARS, cap, markers=markers)),
        max_bytes,
    )
    if found is not None:
        return found, True
    return ("{}" if isinstance(value, dict) else "[]"), True


def _search(low: int, high: int, render: Any, max_bytes: int) -> str | None:
    """The rendering with the largest cap in ``[low, high]`` that fits, or ``None``."""
    best: str | None = None
    while low <= high:
        middle = (low + high) // 2
        text = render(middle)
        if utf8_len(text) <= max_bytes:
            best, low = text, middle + 1
        else:
            high = middle - 1
    return best


def _shrink(value: Any, string_cap: int, item_cap: int | None, *, markers: bool) -> Any:
    if isinstance(value, str):
        return value if len(value) <= string_cap else value[:string_cap] + TRUNCATION_MARKER
    if isinstance(value, list):
        kept = value if item_cap is None else value[:item_cap]
        out = [_shrink(item, string_cap, item_cap, markers=markers) for item in kept]
        if markers and len(kept) < len(value):
            out.append(f"[{len(value) - len(kept)} more items truncated]")
        return out
    if isinstance(value, dict):
        items = list(value.items())
        kept_items = items if (item_cap is None or not markers) else items[:item_cap]
        out_dict = {k: _shrink(v, string_cap, item_cap, markers=markers) for k, v in kept_items}
        if len(kept_items) < len(items):
            out_dict[TRUNCATION_MARKER] = f"{len(items) - len(kept_items)} more keys"
        return out_dict
    return value


def _extent(value: Any) -> tuple[int, int]:
    """The longest string and the widest list or object in ``value``."""
    longest = widest = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            longest = max(longest, len(item))
        elif isinstance(item, list):
            widest = max(widest, len(item))
            stack.extend(item)
        elif isinstance(item, dict):
            widest = max(widest, len(item))
            stack.extend(item.values())
    return longest, widest
