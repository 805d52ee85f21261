"""OpenAI Responses API -> convention messages.

Responses bodies are lists of typed items (``message``, ``function_call``,
``function_call_output``, ``reasoning`` ...) rather than a chat history; each item becomes the
message (input) or the parts (output) the chat APIs would have given.
"""

from __future__ import annotations

from typing import Any

from ._chat import chat_message, system_parts
from ._parts import Inputs, Message, Part, PartReader, with_finish

__all__ = ["responses_input", "responses_output"]


def _summary_parts(reader: PartReader, item: dict[str, Any]) -> list[Part]:
    summary = item.get("summary")
    texts = (
        [s.get("text") for s in summary if isinstance(s, dict)] if isinstance(summary, list) else []
    )
    return [
        {"type": "reasoning", "content": reader.cleaner.text(t)}
        for t in texts
        if isinstance(t, str)
    ]


def responses_input(reader: PartReader, request: dict[str, Any]) -> Inputs:
    """The request's ``instructions`` and its ``input`` items, one message each."""
    system = system_parts(reader, request.get("instructions"))
    items = request.get("input")
    if isinstance(items, str):
        return system, [{"role": "user", "parts": [reader.text(items)]}]
    if not isinstance(items, list):
        return system, []
    messages: list[Message] = []
    for item in items:
        kind = item.get("type") if isinstance(item, dict) else None
        if not isinstance(item, dict):
            messages.append({"role": "unknown", "parts": [reader.generic(item)]})
        elif kind == "function_call":
            part = reader.tool_call(item.get("call_id"), item.get("name"), item.get("arguments"))
            messages.append({"role": "assistant", "parts": [part]})
        elif kind == "function_call_output":
            part = reader.tool_response(item.get("call_id"), item.get("output"))
            messages.append({"role": "tool", "parts": [part]})
        elif kind == "reasoning":
            messages.append({"role": "assistant", "parts": _summary_parts(reader, item)})
        elif kind in (None, "message") and "role" in item:
            messages.append(chat_message(reader, item))
        else:
            messages.append({"role": "assistant", "parts": [reader.generic(item)]})
    return system, messages


def responses_output(reader: PartReader, response: dict[str, Any]) -> list[Message]:
    """The response's ``output`` items as the parts of one assistant message."""
    items = response.get("output")
    parts: list[Part] = []
    for item in items if isinstance(items, list) else ():
        kind = item.get("type") if isinstance(item, dict) else None
        if not isinstance(item, dict):
            parts.append(reader.generic(item))
        elif kind == "message":
            parts.extend(reader.content(item.get("content")))
        elif kind == "function_call":
            parts.append(
                reader.tool_call(item.get("call_id"), item.get("name"), item.get("arguments"))
            )
        elif kind == "reasoning":
            parts.extend(_summary_parts(reader, item))
        else:
            parts.append(reader.generic(item))
    return [with_finish({"role": "assistant", "parts": parts}, response.get("status"))]
