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
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from ._attributes import SpanAttributes
from ._options import ConvertOptions
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

__all__ = ["add_content", "answer_text", "output_value", "user_input_text"]

Part = dict[str, Any]
Message = dict[str, Any]

# Gemini's names for the conventions' roles; other roles (``developer`` ...) are kept as sent.
_ROLE_MAP: Final = {"model": "assistant", "function": "tool"}
_TOOL_RESULT_ROLES: Final = frozenset({"tool", "function"})


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
    reader = _Reader(cleaner, out)
    system, inputs = _INPUT_CONVERTERS.get(request_shape, _no_input)(reader, request)
    outputs = _OUTPUT_CONVERTERS.get(response_shape, _no_output)(reader, response)
    if options.content == "raw":
        out.put_json(LETTA_REQUEST_JSON, cleaner.clean(request), markers=True)
        out.put_json(LETTA_RESPONSE_JSON, cleaner.clean(response), markers=True)
    else:
        tools = reader.tool_definitions(request, request_shape)
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
    reader = _Reader(cleaner, out)
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
    reader = _Reader(cleaner, out)
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


class _Reader:
    """Provider blocks -> convention parts, every string and object cleaned on the way."""

    __slots__ = ("cleaner", "out")

    def __init__(self, cleaner: Cleaner, out: SpanAttributes) -> None:
        self.cleaner = cleaner
        self.out = out

    # --- parts ---------------------------------------------------------------------------
    def text(self, value: str) -> Part:
        return {"type": "text", "content": self.cleaner.text(value)}

    def arguments(self, value: Any) -> Any:
        """Tool call arguments: a JSON string is parsed to an object where it can be."""
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except (ValueError, RecursionError):
                return self.cleaner.text(value)
            return (
                self.cleaner.clean(parsed)
                if isinstance(parsed, dict | list)
                else self.cleaner.text(value)
            )
        return self.cleaner.clean(value)

    def tool_call(self, call_id: Any, name: Any, arguments: Any) -> Part:
        part: Part = {
            "type": "tool_call",
            "name": self.cleaner.text(name) if isinstance(name, str) else "",
        }
        if isinstance(call_id, str):
            part["id"] = self.cleaner.text(call_id)
        if arguments is not None:
            part["arguments"] = self.arguments(arguments)
        return part

    def tool_response(self, call_id: Any, response: Any) -> Part:
        part: Part = {"type": "tool_call_response", "response": self.cleaner.clean(response)}
        if isinstance(call_id, str):
            part["id"] = self.cleaner.text(call_id)
        return part

    def generic(self, block: Any) -> Part:
        cleaned = self.cleaner.clean(block)
        if not isinstance(cleaned, dict):
            return {"type": "unknown", "content": cleaned}
        if not isinstance(cleaned.get("type"), str):
            cleaned["type"] = "unknown"
        return cleaned

    def media(self, modality: str, mime: Any, *, data: Any = None, uri: Any = None) -> Part:
        part: Part
        if isinstance(data, str):
            part = {"type": "blob", "modality": modality, "content": self.cleaner.text(data)}
        elif isinstance(uri, str) and uri.startswith("data:") and "," in uri:
            header, _, payload = uri.partition(",")
            mime = mime or header[5:].split(";")[0] or None
            part = {"type": "blob", "modality": modality, "content": self.cleaner.text(payload)}
        elif isinstance(uri, str):
            part = {"type": "uri", "modality": modality, "uri": self.cleaner.text(uri)}
        else:
            return {"type": modality}
        if isinstance(mime, str) and mime:
            part["mime_type"] = mime
        return part

    def block(self, block: Any) -> list[Part]:
        """One content block of any provider (OpenAI, Anthropic, Responses) as parts."""
        if isinstance(block, str):
            return [self.text(block)]
        if not isinstance(block, dict):
            return [self.generic(block)]
        kind = block.get("type")
        text = block.get("text")
        if kind in ("text", "input_text", "output_text") and isinstance(text, str):
            return [self.text(text)]
        if kind == "thinking" and isinstance(block.get("thinking"), str):
            return [{"type": "reasoning", "content": self.cleaner.text(block["thinking"])}]
        if kind == "reasoning" and isinstance(block.get("reasoning"), str):
            return [{"type": "reasoning", "content": self.cleaner.text(block["reasoning"])}]
        if kind == "tool_use":
            return [self.tool_call(block.get("id"), block.get("name"), block.get("input"))]
        if kind == "tool_call":
            return [self.tool_call(block.get("id"), block.get("name"), block.get("input"))]
        if kind == "tool_result":
            return [self.tool_response(block.get("tool_use_id"), block.get("content"))]
        if kind == "image_url":
            image = block.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            return [self.media("image", None, uri=url)]
        if kind == "input_image":
            return [self.media("image", None, uri=block.get("image_url"))]
        if kind == "image" and isinstance(block.get("source"), dict):
            source = block["source"]
            return [
                self.media(
                    "image",
                    source.get("media_type"),
                    data=source.get("data"),
                    uri=source.get("url"),
                )
            ]
        if kind == "input_audio" and isinstance(block.get("input_audio"), dict):
            audio = block["input_audio"]
            fmt = audio.get("format")
            return [
                self.media(
                    "audio",
                    f"audio/{fmt}" if isinstance(fmt, str) else None,
                    data=audio.get("data"),
                )
            ]
        if kind == "redacted_thinking":
            return [{"type": "redacted_thinking"}]  # encrypted data: nothing readable to keep
        return [self.generic(block)]

    def content(self, content: Any) -> list[Part]:
        """A message's ``content``: a string, a list of blocks, or nothing."""
        if content is None:
            return []
        if isinstance(content, list):
            return [part for block in content for part in self.block(block)]
        return self.block(content)

    # --- messages ------------------------------------------------------------------------
    def chat_message(self, message: Any) -> Message:
        """An OpenAI chat or Anthropic message (the union of both shapes)."""
        if not isinstance(message, dict):
            return {"role": "unknown", "parts": [self.generic(message)]}
        raw_role = message.get("role")
        role = _ROLE_MAP.get(raw_role, raw_role) if isinstance(raw_role, str) else "unknown"
        if raw_role in _TOOL_RESULT_ROLES:
            call_id = message.get("tool_call_id") or message.get("name")
            parts = [self.tool_response(call_id, message.get("content"))]
        else:
            parts = []
            reasoning = message.get("reasoning_content")  # OpenAI-compatible reasoning models
            if isinstance(reasoning, str) and reasoning:
                parts.append({"type": "reasoning", "content": self.cleaner.text(reasoning)})
            parts.extend(self.content(message.get("content")))
            refusal = message.get("refusal")
            if isinstance(refusal, str) and refusal:
                parts.append({"type": "refusal", "content": self.cleaner.text(refusal)})
            calls = message.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                parts.append(self.openai_tool_call(call))
            legacy = message.get("function_call")
            if isinstance(legacy, dict):
                parts.append(self.tool_call(None, legacy.get("name"), legacy.get("arguments")))
        result: Message = {"role": role, "parts": parts}
        name = message.get("name")
        if isinstance(name, str) and name and raw_role not in _TOOL_RESULT_ROLES:
            result["name"] = self.cleaner.text(name)
        return result

    def openai_tool_call(self, call: Any) -> Part:
        if not isinstance(call, dict):
            return self.generic(call)
        function = call.get("function")
        if isinstance(function, dict):
            return self.tool_call(call.get("id"), function.get("name"), function.get("arguments"))
        return self.tool_call(
            call.get("id"), call.get("name"), call.get("arguments", call.get("input"))
        )

    def messages(self, value: Any, where: str) -> list[Message]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.out.warn(f"{where}: expected a list, got {type(value).__name__}")
            return []
        messages: list[Message] = []
        for message in value:
            messages.extend(self.split_tool_results(message))
        return messages

    def split_tool_results(self, message: Any) -> list[Message]:
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
            return [self.chat_message(message)]
        messages: list[Message] = []
        pending: list[Any] = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                if pending:
                    messages.append(self.chat_message({**message, "content": pending}))
                    pending = []
                messages.append({"role": "tool", "parts": self.block(block)})
            else:
                pending.append(block)
        if pending:
            messages.append(self.chat_message({**message, "content": pending}))
        return messages

    def system_parts(self, system: Any) -> list[Part]:
        """Anthropic ``system`` (a string or text blocks) / Responses ``instructions``."""
        if isinstance(system, str):
            return [self.text(system)] if system else []
        return self.content(system)

    # --- tools ---------------------------------------------------------------------------
    def tool_definitions(self, request: dict[str, Any], shape: Shape) -> list[Part]:
        tools = request.get("tools")
        if not isinstance(tools, list):
            return []
        if shape is Shape.GOOGLE:
            return [definition for tool in tools for definition in self.google_tool(tool)]
        return [self.tool_definition(tool) for tool in tools]

    def tool_definition(self, tool: Any) -> Part:
        """OpenAI chat (``function`` wrapper), Responses (flat) or Anthropic (``input_schema``)."""
        if not isinstance(tool, dict):
            return self.generic(tool)
        function = tool.get("function")
        spec = function if isinstance(function, dict) else tool
        kind = tool.get("type")
        is_function = (
            isinstance(function, dict)
            or kind in (None, "function", "custom")
            or "input_schema" in tool
        )
        name = spec.get("name")
        definition: Part = {
            "type": "function" if is_function else str(kind),
            "name": self.cleaner.text(name) if isinstance(name, str) else str(kind or ""),
        }
        if is_function:
            description = spec.get("description")
            if isinstance(description, str):
                definition["description"] = self.cleaner.text(description)
            parameters = spec.get("parameters", spec.get("input_schema"))
            if parameters is not None:
                definition["parameters"] = self.cleaner.clean(parameters)
        return definition

    def google_tool(self, tool: Any) -> list[Part]:
        if not isinstance(tool, dict):
            return [self.generic(tool)]
        definitions: list[Part] = []
        for key, value in tool.items():
            if key in ("functionDeclarations", "function_declarations") and isinstance(value, list):
                for declaration in value:
                    spec = declaration if isinstance(declaration, dict) else {}
                    name = spec.get("name")
                    definition: Part = {
                        "type": "function",
                        "name": self.cleaner.text(name) if isinstance(name, str) else "",
                    }
                    if isinstance(spec.get("description"), str):
                        definition["description"] = self.cleaner.text(spec["description"])
                    parameters = spec.get("parameters", spec.get("parametersJsonSchema"))
                    if parameters is not None:
                        definition["parameters"] = self.cleaner.clean(parameters)
                    definitions.append(definition)
            else:
                definitions.append({"type": self.cleaner.key(key), "name": self.cleaner.key(key)})
        return definitions

    # --- Gemini --------------------------------------------------------------------------
    def google_part(self, part: Any) -> Part:
        if not isinstance(part, dict):
            return self.generic(part)
        if isinstance(part.get("text"), str):
            if part.get("thought") is True:
                return {"type": "reasoning", "content": self.cleaner.text(part["text"])}
            return self.text(part["text"])
        call = part.get("functionCall")
        if isinstance(call, dict):
            return self.tool_call(call.get("id"), call.get("name"), call.get("args"))
        result = part.get("functionResponse")
        if isinstance(result, dict):
            return self.tool_response(
                result.get("id") or result.get("name"), result.get("response")
            )
        inline = part.get("inlineData")
        if isinstance(inline, dict):
            mime = inline.get("mimeType")
            return self.media(_modality(mime), mime, data=inline.get("data"))
        file_data = part.get("fileData")
        if isinstance(file_data, dict):
            mime = file_data.get("mimeType")
            return self.media(_modality(mime), mime, uri=file_data.get("fileUri"))
        return self.generic({"type": next(iter(part), "unknown"), **part})

    def google_content(self, content: Any, default_role: str) -> Message:
        if not isinstance(content, dict):
            return {"role": default_role, "parts": [self.generic(content)]}
        raw_role = content.get("role")
        role = (
            _ROLE_MAP.get(raw_role, raw_role)
            if isinstance(raw_role, str) and raw_role
            else default_role
        )
        parts = content.get("parts")
        converted = [self.google_part(part) for part in parts] if isinstance(parts, list) else []
        return {"role": role, "parts": converted}


def _modality(mime: Any) -> str:
    if isinstance(mime, str):
        for prefix, modality in (("image/", "image"), ("audio/", "audio"), ("video/", "video")):
            if mime.startswith(prefix):
                return modality
    return "document"


# --- inputs: (system instructions, input messages) per request shape ---------------------------
Inputs = tuple[list[Part], list[Message]]


def _chat_input(reader: _Reader, request: dict[str, Any]) -> Inputs:
    # OpenAI keeps the system prompt in the history; Anthropic passes it beside (``system``).
    system = reader.system_parts(request.get("system"))
    return system, reader.messages(request.get("messages"), "request_json.messages")


def _responses_input(reader: _Reader, request: dict[str, Any]) -> Inputs:
    system = reader.system_parts(request.get("instructions"))
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
            messages.append(reader.chat_message(item))
        else:
            messages.append({"role": "assistant", "parts": [reader.generic(item)]})
    return system, messages


def _google_input(reader: _Reader, request: dict[str, Any]) -> Inputs:
    instruction = request.get("systemInstruction", request.get("system_instruction"))
    system: list[Part] = []
    if isinstance(instruction, str):
        system = [reader.text(instruction)]
    elif isinstance(instruction, dict) and isinstance(instruction.get("parts"), list):
        system = [reader.google_part(part) for part in instruction["parts"]]
    contents = request.get("contents")
    messages = (
        [reader.google_content(c, "user") for c in contents] if isinstance(contents, list) else []
    )
    return system, messages


def _no_input(reader: _Reader, request: dict[str, Any]) -> Inputs:
    return [], []


_INPUT_CONVERTERS: Final[dict[Shape, Callable[[_Reader, dict[str, Any]], Inputs]]] = {
    Shape.OPENAI_CHAT: _chat_input,
    Shape.ANTHROPIC: _chat_input,
    Shape.OPENAI_RESPONSES: _responses_input,
    Shape.GOOGLE: _google_input,
}


# --- outputs: one message per choice/candidate per response shape -----------------------------
def _with_finish(message: Message, reason: Any) -> Message:
    # finish_reason is also in gen_ai.response.finish_reasons; older schema versions require it.
    if isinstance(reason, str) and reason:
        message["finish_reason"] = reason
    return message


def _openai_chat_output(reader: _Reader, response: dict[str, Any]) -> list[Message]:
    choices = response.get("choices")
    messages: list[Message] = []
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        message = reader.chat_message(choice.get("message") or {"role": "assistant"})
        if message["role"] == "unknown":
            message["role"] = "assistant"
        messages.append(_with_finish(message, choice.get("finish_reason")))
    return messages


def _summary_parts(reader: _Reader, item: dict[str, Any]) -> list[Part]:
    summary = item.get("summary")
    texts = (
        [s.get("text") for s in summary if isinstance(s, dict)] if isinstance(summary, list) else []
    )
    return [
        {"type": "reasoning", "content": reader.cleaner.text(t)}
        for t in texts
        if isinstance(t, str)
    ]


def _responses_output(reader: _Reader, response: dict[str, Any]) -> list[Message]:
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
    return [_with_finish({"role": "assistant", "parts": parts}, response.get("status"))]


def _anthropic_output(reader: _Reader, response: dict[str, Any]) -> list[Message]:
    role = response.get("role")
    message = {
        "role": role if isinstance(role, str) else "assistant",
        "parts": reader.content(response.get("content")),
    }
    return [_with_finish(message, response.get("stop_reason"))]


def _google_output(reader: _Reader, response: dict[str, Any]) -> list[Message]:
    candidates = response.get("candidates")
    messages: list[Message] = []
    for candidate in candidates if isinstance(candidates, list) else ():
        if not isinstance(candidate, dict):
            continue
        message = reader.google_content(candidate.get("content") or {}, "assistant")
        messages.append(_with_finish(message, candidate.get("finishReason")))
    return messages


def _stream_items(reader: _Reader, items: Any) -> list[Part]:
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


def _stream_tool_calls(reader: _Reader, value: Any) -> list[Part]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return [reader.generic({"type": "tool_call", "raw": value})]
    calls = value if isinstance(value, list) else [value] if value is not None else []
    return [reader.openai_tool_call(call) for call in calls]


def _letta_stream_output(reader: _Reader, response: dict[str, Any]) -> list[Message]:
    content = response.get("content")
    if not isinstance(content, dict):
        return []
    parts = _stream_items(reader, content.get("reasoning")) + _stream_items(
        reader, content.get("content")
    )
    parts += _stream_tool_calls(reader, content.get("tool_call"))
    role = response.get("role")
    return [{"role": role if isinstance(role, str) else "assistant", "parts": parts}]


def _no_output(reader: _Reader, response: dict[str, Any]) -> list[Message]:
    return []


_OUTPUT_CONVERTERS: Final[dict[Shape, Callable[[_Reader, dict[str, Any]], list[Message]]]] = {
    Shape.OPENAI_CHAT: _openai_chat_output,
    Shape.OPENAI_RESPONSES: _responses_output,
    Shape.ANTHROPIC: _anthropic_output,
    Shape.GOOGLE: _google_output,
    Shape.LETTA_STREAM: _letta_stream_output,
}
