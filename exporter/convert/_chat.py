"""OpenAI chat completions and Anthropic messages -> convention messages.

The two APIs share one message shape closely enough (``role`` + ``content`` string or blocks)
that one reader takes the union of both; what differs (OpenAI's ``tool_calls`` and ``tool``
role, Anthropic's ``tool_result`` blocks and ``system`` beside the history) is read here too.
"""

from __future__ import annotations

from typing import Any, Final

from ._parts import ROLE_MAP, Inputs, Message, Part, PartReader, with_finish

__all__ = [
    "anthropic_output",
    "chat_input",
    "chat_message",
    "messages",
    "openai_chat_output",
    "system_parts",
]

_TOOL_RESULT_ROLES: Final = frozenset({"tool", "function"})


def chat_message(reader: PartReader, message: Any) -> Message:
    """An OpenAI chat or Anthropic message (the union of both shapes)."""
    if not isinstance(message, dict):
        return {"role": "unknown", "parts": [reader.generic(message)]}
    raw_role = message.get("role")
    if not isinstance(raw_role, str):
        raw_role = None  # a role of another type (a dict, a list) is no role: never a lookup key
    role = ROLE_MAP.get(raw_role, raw_role) if raw_role is not None else "unknown"
    if raw_role in _TOOL_RESULT_ROLES:
        call_id = message.get("tool_call_id") or message.get("name")
        parts = [reader.tool_response(call_id, message.get("content"))]
    else:
        parts = []
        reasoning = message.get("reasoning_content")  # OpenAI-compatible reasoning models
        if isinstance(reasoning, str) and reasoning:
            parts.append({"type": "reasoning", "content": reader.cleaner.text(reasoning)})
        parts.extend(reader.content(message.get("content")))
        refusal = message.get("refusal")
        if isinstance(refusal, str) and refusal:
            parts.append({"type": "refusal", "content": reader.cleaner.text(refusal)})
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            parts.append(reader.openai_tool_call(call))
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            parts.append(reader.tool_call(None, legacy.get("name"), legacy.get("arguments")))
    result: Message = {"role": role, "parts": parts}
    name = message.get("name")
    if isinstance(name, str) and name and raw_role not in _TOOL_RESULT_ROLES:
        result["name"] = reader.cleaner.text(name)
    return result


def messages(reader: PartReader, value: Any, where: str) -> list[Message]:
    """A chat history; anything but a list is reported under ``where`` and read as empty."""
    if value is None:
        return []
    if not isinstance(value, list):
        reader.out.warn(f"{where}: expected a list, got {type(value).__name__}")
        return []
    history: list[Message] = []
    for message in value:
        history.extend(_split_tool_results(reader, message))
    return history


def _split_tool_results(reader: PartReader, message: Any) -> list[Message]:
    """A message, with Anthropic ``tool_result`` blocks as ``tool`` messages of their own.

    Anthropic sends tool results as blocks inside a ``user`` message; the conventions (and
    OpenAI) give each its own message with the ``tool`` role, so the results read the same
    whatever the provider. Blocks keep their order: text around them stays ``user``.
    """
    content = message.get("content") if isinstance(message, dict) else None
    if not (
        isinstance(content, list)
        and message.get("role") == "user"
        and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
    ):
        return [chat_message(reader, message)]
    split: list[Message] = []
    pending: list[Any] = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            if pending:
                split.append(chat_message(reader, {**message, "content": pending}))
                pending = []
            split.append({"role": "tool", "parts": reader.block(block)})
        else:
            pending.append(block)
    if pending:
        split.append(chat_message(reader, {**message, "content": pending}))
    return split


def system_parts(reader: PartReader, system: Any) -> list[Part]:
    """Anthropic ``system`` (a string or text blocks) / Responses ``instructions``."""
    if isinstance(system, str):
        return [reader.text(system)] if system else []
    return reader.content(system)


def chat_input(reader: PartReader, request: dict[str, Any]) -> Inputs:
    """An OpenAI chat or Anthropic request's system instructions and history."""
    # OpenAI keeps the system prompt in the history; Anthropic passes it beside (``system``).
    system = system_parts(reader, request.get("system"))
    return system, messages(reader, request.get("messages"), "request_json.messages")


def openai_chat_output(reader: PartReader, response: dict[str, Any]) -> list[Message]:
    """One assistant message per choice."""
    choices = response.get("choices")
    outputs: list[Message] = []
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        message = chat_message(reader, choice.get("message") or {"role": "assistant"})
        if message["role"] == "unknown":
            message["role"] = "assistant"
        outputs.append(with_finish(message, choice.get("finish_reason")))
    return outputs


def anthropic_output(reader: PartReader, response: dict[str, Any]) -> list[Message]:
    """The one message an Anthropic response is."""
    role = response.get("role")
    message = {
        "role": role if isinstance(role, str) else "assistant",
        "parts": reader.content(response.get("content")),
    }
    return [with_finish(message, response.get("stop_reason"))]
