"""Letta's summary of a streamed call -> the one output message it stands for.

For a streamed call Letta records no provider response, only what it assembled from the
stream: ``content.reasoning`` and ``content.content`` (lists of JSON strings of its own content
objects) and ``content.tool_call`` (a JSON string of the call, or the call itself).
"""

from __future__ import annotations

import json
from typing import Any

from ._parts import Message, Part, PartReader

__all__ = ["letta_stream_output"]


def _stream_items(reader: PartReader, items: Any) -> list[Part]:
    # Each item is a JSON string of a Letta content object (TextContent, ReasoningContent, ...).
    parts: list[Part] = []
    for item in items if isinstance(items, list) else ():
        if isinstance(item, str):
            try:
                decoded = json.loads(item)
            except (ValueError, RecursionError):
                parts.append(reader.text(item))
                continue
            item = decoded
        if isinstance(item, dict) and item.get("type") in (
            "omitted_reasoning",
            "redacted_reasoning",
        ):
            parts.append({"type": item["type"]})
        else:
            parts.extend(reader.block(item))
    return parts


def _stream_tool_calls(reader: PartReader, value: Any) -> list[Part]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return [reader.generic({"type": "tool_call", "raw": value})]
    calls = value if isinstance(value, list) else [value] if value is not None else []
    return [reader.openai_tool_call(call) for call in calls]


def letta_stream_output(reader: PartReader, response: dict[str, Any]) -> list[Message]:
    """Reasoning, then text, then tool calls, as one message."""
    content = response.get("content")
    if not isinstance(content, dict):
        return []
    parts = _stream_items(reader, content.get("reasoning")) + _stream_items(
        reader, content.get("content")
    )
    parts += _stream_tool_calls(reader, content.get("tool_call"))
    role = response.get("role")
    return [{"role": role if isinstance(role, str) else "assistant", "parts": parts}]
