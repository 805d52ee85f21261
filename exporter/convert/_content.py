"""Prompt and completion content on the span, when the user opts in.

``none`` (the default) puts nothing here: no message text, system prompt, tool definition, tool
call argument or completion reaches a span. ``full`` converts each provider's messages into the
GenAI conventions' role/parts JSON schema:

* ``gen_ai.system_instructions``: Anthropic ``system``, Gemini ``systemInstruction``, Responses
  ``instructions`` (OpenAI chat keeps its system message in the chat history, as the
  conventions ask, so it is in ``gen_ai.input.messages``);
* ``gen_ai.input.messages``: the chat history, in order;
* ``gen_ai.output.messages``: one message per choice/candidate (Letta's streaming summary and the
  Anthropic and Responses APIs give one);
* ``gen_ai.tool.definitions``: the tools offered to the model.

``raw`` puts ``request_json`` and ``response_json`` themselves on the span
(``letta.request.json`` / ``letta.response.json``). Under both ``full`` and ``raw`` the span also
gets what LLM viewers show in their input/output columns: ``input.value`` (the messages sent, as
JSON) and ``output.value`` (the completion text, else its tool calls as JSON), with their mime
types. In every policy credential keys are replaced
and redaction patterns applied (:class:`~._sanitize.Cleaner`) before the size limit.

Each API is read in a module of its own (:mod:`._chat` for OpenAI chat and Anthropic,
:mod:`._responses`, :mod:`._gemini`, :mod:`._letta_stream`; tool definitions in :mod:`._tools`),
all building their parts with :class:`~._parts.PartReader`; this module picks the reader for a
shape and puts what it read on the span.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from ._attributes import SpanAttributes
from ._chat import anthropic_output, chat_input, openai_chat_output
from ._gemini import google_input, google_output
from ._letta_stream import letta_stream_output
from ._options import ConvertOptions
from ._parts import Inputs, Message, Part, PartReader
from ._responses import responses_input, responses_output
from ._sanitize import Cleaner
from ._semconv import (
    GEN_AI_INPUT_MESSAGES,
    GEN_AI_OUTPUT_MESSAGES,
    GEN_AI_SYSTEM_INSTRUCTIONS,
    GEN_AI_TOOL_DEFINITIONS,
    INPUT_MIME_TYPE,
    INPUT_VALUE,
    LETTA_REQUEST_JSON,
    LETTA_RESPONSE_JSON,
    MIME_JSON,
    MIME_TEXT,
    OUTPUT_MIME_TYPE,
    OUTPUT_VALUE,
)
from ._shapes import Shape
from ._tools import tool_definitions

__all__ = ["add_content", "answer_text", "output_value", "user_input_text"]


def add_content(
    request: dict[str, Any],
    response: dict[str, Any],
    request_shape: Shape,
    response_shape: Shape,
    options: ConvertOptions,
    cleaner: Cleaner,
    out: SpanAttributes,
) -> None:
    """Put the content the policy allows on the span (nothing for ``none``)."""
    if options.content == "none":
        return
    reader = PartReader(cleaner, out)
    system, inputs = _INPUT_CONVERTERS.get(request_shape, _no_input)(reader, request)
    outputs = _OUTPUT_CONVERTERS.get(response_shape, _no_output)(reader, response)
    if options.content == "raw":
        out.put_json(LETTA_REQUEST_JSON, cleaner.clean(request), markers=True)
        out.put_json(LETTA_RESPONSE_JSON, cleaner.clean(response), markers=True)
    else:
        tools = tool_definitions(reader, request, request_shape)
        for key, value in (
            (GEN_AI_SYSTEM_INSTRUCTIONS, system),
            (GEN_AI_INPUT_MESSAGES, inputs),
            (GEN_AI_OUTPUT_MESSAGES, outputs),
            (GEN_AI_TOOL_DEFINITIONS, tools),
        ):
            if value:
                out.put_json(key, value, markers=False)
    # What a viewer's input/output columns show (OpenInference input.value / output.value).
    sent = ([{"role": "system", "parts": system}] if system else []) + inputs
    if sent:
        out.put_json(INPUT_VALUE, sent, markers=False)
        out.values[INPUT_MIME_TYPE] = MIME_JSON
    answer = output_value(outputs)
    if answer is not None:
        value, mime = answer
        if mime == MIME_JSON:
            out.put_json(OUTPUT_VALUE, value, markers=False)
        else:
            out.values[OUTPUT_VALUE] = value
        out.values[OUTPUT_MIME_TYPE] = mime


def _texts(message: Message) -> list[str]:
    return [
        part["content"]
        for part in message.get("parts", ())
        if isinstance(part, dict)
        and part.get("type") == "text"
        and isinstance(part.get("content"), str)
    ]


def _tool_calls(message: Message) -> list[Part]:
    return [
        part
        for part in message.get("parts", ())
        if isinstance(part, dict) and part.get("type") == "tool_call"
    ]


def output_value(outputs: list[Message]) -> tuple[Any, str] | None:
    """The completion as a viewer shows it: its text; with tool calls, text and calls as JSON."""
    calls = [call for message in outputs for call in _tool_calls(message)]
    if calls:
        shown = [
            part
            for message in outputs
            for part in message.get("parts", ())
            if isinstance(part, dict) and part.get("type") in ("text", "tool_call")
        ]
        return shown, MIME_JSON
    texts = [text for message in outputs for text in _texts(message) if text]
    if texts:
        return "\n".join(texts), MIME_TEXT
    return None


# --- the run's input and answer (for its invoke_agent span) ----------------------------------
def _unwrap_letta_text(text: str) -> str:
    # Older Letta agents wrap user text as {"type": "user_message", "message": ..., "time": ...}.
    if text.startswith("{") and '"message"' in text:
        try:
            decoded = json.loads(text)
        except (ValueError, RecursionError):
            return text
        message = decoded.get("message") if isinstance(decoded, dict) else None
        if isinstance(message, str):
            return message
    return text


def user_input_text(
    request: dict[str, Any], shape: Shape, cleaner: Cleaner, out: SpanAttributes
) -> str | None:
    """The last user text the call was sent (the run's input when it is the run's first call)."""
    reader = PartReader(cleaner, out)
    _, inputs = _INPUT_CONVERTERS.get(shape, _no_input)(reader, request)
    for message in reversed(inputs):
        if message.get("role") == "user":
            texts = [_unwrap_letta_text(text) for text in _texts(message) if text]
            if texts:
                return "\n".join(texts)
    return None


_SEND_MESSAGE: Final = "send_message"


def answer_text(
    response: dict[str, Any], shape: Shape, cleaner: Cleaner, out: SpanAttributes
) -> str | None:
    """The call's answer to the user: its text, or what a ``send_message`` tool call says."""
    reader = PartReader(cleaner, out)
    outputs = _OUTPUT_CONVERTERS.get(shape, _no_output)(reader, response)
    # A send_message call is what the user was told (the text beside it is inner monologue).
    for message in outputs:
        for call in _tool_calls(message):
            arguments = call.get("arguments")
            if call.get("name") == _SEND_MESSAGE and isinstance(arguments, dict):
                said = arguments.get("message")
                if isinstance(said, str) and said:
                    return said
    if any(_tool_calls(message) for message in outputs):
        return None  # a tool call, not an answer
    texts = [text for message in outputs for text in _texts(message) if text]
    return "\n".join(texts) if texts else None


# --- each shape's reader: its inputs (system instructions, messages), its outputs ------------
def _no_input(reader: PartReader, request: dict[str, Any]) -> Inputs:
    return [], []


def _no_output(reader: PartReader, response: dict[str, Any]) -> list[Message]:
    return []


_INPUT_CONVERTERS: Final[dict[Shape, Callable[[PartReader, dict[str, Any]], Inputs]]] = {
    Shape.OPENAI_CHAT: chat_input,
    Shape.ANTHROPIC: chat_input,
    Shape.OPENAI_RESPONSES: responses_input,
    Shape.GOOGLE: google_input,
}

_OUTPUT_CONVERTERS: Final[dict[Shape, Callable[[PartReader, dict[str, Any]], list[Message]]]] = {
    Shape.OPENAI_CHAT: openai_chat_output,
    Shape.OPENAI_RESPONSES: responses_output,
    Shape.ANTHROPIC: anthropic_output,
    Shape.GOOGLE: google_output,
    Shape.LETTA_STREAM: letta_stream_output,
}
