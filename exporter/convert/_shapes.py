"""Reading the facts (model, ids, finish reasons, usage, request parameters) out of Letta's bodies.

``request_json`` is the body Letta sent to the provider and ``response_json`` what came back (or,
for streaming calls, a summary Letta built). Which API they belong to is read from their shape,
never from configuration, because ``llm_config`` may name another endpoint than the one used:

========================  ==========================================================
shape                     recognised by
========================  ==========================================================
``openai.chat_completions``  ``choices`` (response) / ``messages`` (request)
``openai.responses``      ``object: "response"`` or an ``output`` list / ``input``
``anthropic.messages``    ``type: "message"`` with a ``content`` list / ``system``,
                          ``thinking``, ``stop_sequences``, ``top_k``, Anthropic blocks
``google.generate_content``  ``candidates`` or ``usageMetadata`` / ``contents``
``letta.streaming``       ``content`` is an object with ``tool_call``/``content``/``reasoning``
``error``                 a non-empty ``error`` and none of the above
``unknown``               anything else (the span still carries the ProviderTrace fields)
========================  ==========================================================

Only the fields read are touched (no walk over the whole body), so a 20 KB trace costs the same
as a 2 KB one when content is off. Usage is read by the style of the usage object itself, since
Letta's streaming summary embeds whichever provider's usage it got.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from ._attributes import INT64_MAX, SpanAttributes, as_int
from ._semconv import (
    ERROR_TYPE_OTHER,
    GEN_AI_OUTPUT_TYPE,
    GEN_AI_REQUEST_CHOICE_COUNT,
    GEN_AI_REQUEST_FREQUENCY_PENALTY,
    GEN_AI_REQUEST_MAX_TOKENS,
    GEN_AI_REQUEST_PRESENCE_PENALTY,
    GEN_AI_REQUEST_SEED,
    GEN_AI_REQUEST_STOP_SEQUENCES,
    GEN_AI_REQUEST_TEMPERATURE,
    GEN_AI_REQUEST_TOP_K,
    GEN_AI_REQUEST_TOP_P,
    GEN_AI_RESPONSE_FINISH_REASONS,
    GEN_AI_RESPONSE_ID,
    GEN_AI_RESPONSE_MODEL,
    OPENAI_API_TYPE,
    OPENAI_REQUEST_SERVICE_TIER,
    OPENAI_RESPONSE_SERVICE_TIER,
    OPENAI_RESPONSE_SYSTEM_FINGERPRINT,
)

__all__ = [
    "CallError",
    "RequestFacts",
    "Shape",
    "Usage",
    "read_error",
    "read_request",
    "read_response",
    "request_shape",
    "response_shape",
]


class Shape(StrEnum):
    """The API a body belongs to (``letta.request.shape`` / ``letta.response.shape``)."""

    OPENAI_CHAT = "openai.chat_completions"
    OPENAI_RESPONSES = "openai.responses"
    ANTHROPIC = "anthropic.messages"
    GOOGLE = "google.generate_content"
    LETTA_STREAM = "letta.streaming"
    ERROR = "error"
    UNKNOWN = "unknown"


_ANTHROPIC_REQUEST_KEYS: Final = frozenset(
    {"system", "thinking", "stop_sequences", "top_k", "anthropic_version", "anthropic_beta"}
)
_ANTHROPIC_BLOCK_TYPES: Final = frozenset(
    {"tool_use", "tool_result", "thinking", "redacted_thinking", "document"}
)
_STREAM_CONTENT_KEYS: Final = ("tool_call", "content", "reasoning")


def response_shape(body: dict[str, Any]) -> Shape:
    """The shape of a ``response_json`` (see the module docstring)."""
    content = body.get("content")
    if isinstance(content, dict) and any(key in content for key in _STREAM_CONTENT_KEYS):
        return Shape.LETTA_STREAM
    if "choices" in body or body.get("object") == "chat.completion":
        return Shape.OPENAI_CHAT
    if body.get("object") == "response" or isinstance(body.get("output"), list):
        return Shape.OPENAI_RESPONSES
    if isinstance(content, list) and (body.get("type") == "message" or "stop_reason" in body):
        return Shape.ANTHROPIC
    if "candidates" in body or "usageMetadata" in body:
        return Shape.GOOGLE
    if body.get("error") or body.get("type") == "error":
        return Shape.ERROR
    return Shape.UNKNOWN


def request_shape(body: dict[str, Any], response: Shape) -> Shape:
    """The shape of a ``request_json``; the response's shape settles what the body cannot."""
    if isinstance(body.get("contents"), list) or "generationConfig" in body:
        return Shape.GOOGLE
    if "input" in body and "messages" not in body:
        return Shape.OPENAI_RESPONSES
    if "messages" not in body:
        return response if response in (Shape.GOOGLE, Shape.OPENAI_RESPONSES) else Shape.UNKNOWN
    if response is Shape.ANTHROPIC or not _ANTHROPIC_REQUEST_KEYS.isdisjoint(body):
        return Shape.ANTHROPIC
    messages = body["messages"]
    # Anthropic-only blocks show up early (tool_use/thinking) or late (the newest turn); a
    # bounded look keeps detection O(1) in the history's length.
    sample = messages[:8] + messages[-8:] if isinstance(messages, list) else ()
    for message in sample:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(block, dict) and block.get("type") in _ANTHROPIC_BLOCK_TYPES
            for block in content
        ):
            return Shape.ANTHROPIC
    return Shape.OPENAI_CHAT


# --- usage -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the conventions define them (input includes cached input)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_creation_tokens: int | None = None
    reasoning_tokens: int | None = None

    @property
    def empty(self) -> bool:
        """Whether no count at all was read."""
        return all(
            value is None
            for value in (
                self.input_tokens,
                self.output_tokens,
                self.cache_read_tokens,
                self.cache_creation_tokens,
                self.reasoning_tokens,
            )
        )


def _token(container: Any, key: str, where: str, out: SpanAttributes) -> int | None:
    if not isinstance(container, dict):
        return None
    value = container.get(key)
    if value is None:
        return None
    number = as_int(value)
    if number is None:
        out.warn(f"{where}.{key}: expected a non-negative integer, got {type(value).__name__}")
    return number


def _sum(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return min(sum(known), INT64_MAX) if known else None


def _details(usage: dict[str, Any], key: str, where: str, out: SpanAttributes) -> Any:
    value = usage.get(key)
    if value is not None and not isinstance(value, dict):
        out.warn(f"{where}.{key}: expected an object, got {type(value).__name__}")
        return None
    return value


def _usage_openai_chat(usage: dict[str, Any], where: str, out: SpanAttributes) -> Usage:
    prompt = _details(usage, "prompt_tokens_details", where, out)
    completion = _details(usage, "completion_tokens_details", where, out)
    details = f"{where}.prompt_tokens_details"
    # OpenAI reports no cache writes; OpenAI-compatible servers (and Letta) may, under two names.
    cache_creation = _token(prompt, "cache_write_tokens", details, out)
    if cache_creation is None:
        cache_creation = _token(prompt, "cache_creation_tokens", details, out)
    return Usage(
        input_tokens=_token(usage, "prompt_tokens", where, out),
        output_tokens=_token(usage, "completion_tokens", where, out),
        cache_read_tokens=_token(prompt, "cached_tokens", details, out),
        cache_creation_tokens=cache_creation,
        reasoning_tokens=_token(
            completion, "reasoning_tokens", f"{where}.completion_tokens_details", out
        ),
    )


def _usage_anthropic(usage: dict[str, Any], where: str, out: SpanAttributes) -> Usage:
    # Anthropic's input_tokens leaves out cached input; the conventions' input count includes it.
    uncached = _token(usage, "input_tokens", where, out)
    cache_read = _token(usage, "cache_read_input_tokens", where, out)
    cache_creation = _token(usage, "cache_creation_input_tokens", where, out)
    details = _details(usage, "output_tokens_details", where, out)
    return Usage(
        input_tokens=_sum(uncached, cache_read, cache_creation) if uncached is not None else None,
        output_tokens=_token(usage, "output_tokens", where, out),
        cache_read_tokens=cache_read,
        cache_creation_tokens=cache_creation,
        reasoning_tokens=_token(details, "reasoning_tokens", f"{where}.output_tokens_details", out),
    )


def _usage_responses(usage: dict[str, Any], where: str, out: SpanAttributes) -> Usage:
    inputs = _details(usage, "input_tokens_details", where, out)
    outputs = _details(usage, "output_tokens_details", where, out)
    return Usage(
        input_tokens=_token(usage, "input_tokens", where, out),
        output_tokens=_token(usage, "output_tokens", where, out),
        cache_read_tokens=_token(inputs, "cached_tokens", f"{where}.input_tokens_details", out),
        reasoning_tokens=_token(outputs, "reasoning_tokens", f"{where}.output_tokens_details", out),
    )


def _usage_google(usage: dict[str, Any], where: str, out: SpanAttributes) -> Usage:
    # Gemini counts thoughts apart from candidates; the conventions' output count includes them.
    prompt = _token(usage, "promptTokenCount", where, out)
    tool_prompt = _token(usage, "toolUsePromptTokenCount", where, out)
    candidates = _token(usage, "candidatesTokenCount", where, out)
    thoughts = _token(usage, "thoughtsTokenCount", where, out)
    return Usage(
        input_tokens=_sum(prompt, tool_prompt) if prompt is not None else None,
        output_tokens=_sum(candidates, thoughts) if candidates is not None else None,
        cache_read_tokens=_token(usage, "cachedContentTokenCount", where, out),
        reasoning_tokens=thoughts,
    )


def read_usage(usage: Any, where: str, out: SpanAttributes) -> Usage | None:
    """Token counts from a usage object of any provider's style, or ``None``."""
    if usage is None:
        return None
    if not isinstance(usage, dict):
        out.warn(f"{where}: expected an object, got {type(usage).__name__}")
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        reader = _usage_openai_chat
    elif "promptTokenCount" in usage or "candidatesTokenCount" in usage:
        reader = _usage_google
    elif "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
        reader = _usage_anthropic
    elif "input_tokens" in usage or "output_tokens" in usage:
        reader = _usage_responses
    else:
        return None
    found = reader(usage, where, out)
    return None if found.empty else found


# --- response facts --------------------------------------------------------------------------
def _put_field(
    body: dict[str, Any], key: str, attribute: str, out: SpanAttributes, *, strict: bool = True
) -> None:
    value = body.get(key)
    if isinstance(value, str):
        out.put_str(attribute, value)
    elif value is not None and strict:
        out.warn(f"response_json.{key}: expected a string, got {type(value).__name__}")


def _finish_reasons(items: Any, key: str, where: str, out: SpanAttributes) -> None:
    if items is None:
        return
    if not isinstance(items, list):
        out.warn(f"{where}: expected a list, got {type(items).__name__}")
        return
    reasons = [
        item[key] for item in items if isinstance(item, dict) and isinstance(item.get(key), str)
    ]
    if reasons:
        out.values[GEN_AI_RESPONSE_FINISH_REASONS] = tuple(reasons)


def _read_openai_chat(body: dict[str, Any], out: SpanAttributes, openai: bool) -> str:
    _put_field(body, "id", GEN_AI_RESPONSE_ID, out)
    _put_field(body, "model", GEN_AI_RESPONSE_MODEL, out)
    _finish_reasons(body.get("choices"), "finish_reason", "response_json.choices", out)
    if openai:
        _put_field(body, "service_tier", OPENAI_RESPONSE_SERVICE_TIER, out, strict=False)
        _put_field(
            body, "system_fingerprint", OPENAI_RESPONSE_SYSTEM_FINGERPRINT, out, strict=False
        )
    return "usage"


def _read_openai_responses(body: dict[str, Any], out: SpanAttributes, openai: bool) -> str:
    _put_field(body, "id", GEN_AI_RESPONSE_ID, out)
    _put_field(body, "model", GEN_AI_RESPONSE_MODEL, out)
    status = body.get("status")
    if isinstance(status, str) and status:
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        out.values[GEN_AI_RESPONSE_FINISH_REASONS] = (
            reason if status == "incomplete" and isinstance(reason, str) and reason else status,
        )
    if openai:
        _put_field(body, "service_tier", OPENAI_RESPONSE_SERVICE_TIER, out, strict=False)
    return "usage"


def _read_anthropic(body: dict[str, Any], out: SpanAttributes, openai: bool) -> str:
    _put_field(body, "id", GEN_AI_RESPONSE_ID, out)
    _put_field(body, "model", GEN_AI_RESPONSE_MODEL, out)
    reason = body.get("stop_reason")
    if isinstance(reason, str) and reason:
        out.values[GEN_AI_RESPONSE_FINISH_REASONS] = (reason,)
    return "usage"


def _read_google(body: dict[str, Any], out: SpanAttributes, openai: bool) -> str:
    _put_field(body, "responseId", GEN_AI_RESPONSE_ID, out)
    _put_field(body, "modelVersion", GEN_AI_RESPONSE_MODEL, out)
    _finish_reasons(body.get("candidates"), "finishReason", "response_json.candidates", out)
    return "usageMetadata"


def _read_letta_stream(body: dict[str, Any], out: SpanAttributes, openai: bool) -> str:
    # Letta's own summary of a stream: no finish reason is recorded, so none is invented.
    _put_field(body, "id", GEN_AI_RESPONSE_ID, out)
    _put_field(body, "model", GEN_AI_RESPONSE_MODEL, out)
    return "usage"


def _read_unknown(body: dict[str, Any], out: SpanAttributes, openai: bool) -> str:
    _put_field(body, "id", GEN_AI_RESPONSE_ID, out, strict=False)
    _put_field(body, "model", GEN_AI_RESPONSE_MODEL, out, strict=False)
    return "usage"


def _read_error_shape(body: dict[str, Any], out: SpanAttributes, openai: bool) -> str:
    return "usage"


_RESPONSE_READERS: Final[dict[Shape, Callable[[dict[str, Any], SpanAttributes, bool], str]]] = {
    Shape.OPENAI_CHAT: _read_openai_chat,
    Shape.OPENAI_RESPONSES: _read_openai_responses,
    Shape.ANTHROPIC: _read_anthropic,
    Shape.GOOGLE: _read_google,
    Shape.LETTA_STREAM: _read_letta_stream,
    Shape.ERROR: _read_error_shape,
    Shape.UNKNOWN: _read_unknown,
}

_OPENAI_API_TYPES: Final = {
    Shape.OPENAI_CHAT: "chat_completions",
    Shape.OPENAI_RESPONSES: "responses",
}


def read_response(
    body: dict[str, Any], shape: Shape, out: SpanAttributes, *, openai: bool
) -> Usage | None:
    """Put the response's id, model and finish reasons on the span; return its token usage.

    Args:
        body: the ``response_json``.
        shape: its shape.
        out: the span's attributes.
        openai: whether the provider is OpenAI (``openai.*`` attributes only then).
    """
    usage_key = _RESPONSE_READERS[shape](body, out, openai)
    if openai and shape in _OPENAI_API_TYPES:
        out.values[OPENAI_API_TYPE] = _OPENAI_API_TYPES[shape]
    return read_usage(body.get(usage_key), f"response_json.{usage_key}", out)


@dataclass(frozen=True, slots=True)
class CallError:
    """A failed provider call as recorded in ``response_json``."""

    error_type: str
    message: str | None


def read_error(body: dict[str, Any]) -> CallError | None:
    """The error a ``response_json`` records, whatever its shape, or ``None``.

    Letta records ``{"error": "<message>", "error_type": "<ExceptionClass>"}``; provider error
    bodies (``{"error": {"type"|"code", "message"}}``, Anthropic's ``{"type": "error", ...}``)
    and failed Responses-API objects are read too.
    """
    error = body.get("error")
    if not error:
        return None
    error_type = body.get("error_type")
    message: str | None = None
    if isinstance(error, str):
        message = error
    elif isinstance(error, dict):
        text = error.get("message")
        message = text if isinstance(text, str) else None
        if not (isinstance(error_type, str) and error_type):
            code = error.get("type") or error.get("code")
            error_type = (
                str(code) if isinstance(code, str | int) and not isinstance(code, bool) else None
            )
    if not (isinstance(error_type, str) and error_type):
        error_type = ERROR_TYPE_OTHER
    return CallError(error_type, message)


# --- request parameters ----------------------------------------------------------------------
_FLOAT: Final = "float"
_INT: Final = "int"
_SIGNED: Final = "signed"
_STRS: Final = "strs"

# request_json key -> (attribute, kind); the first key found wins for one attribute.
_CHAT_PARAMS: Final = (
    ("temperature", GEN_AI_REQUEST_TEMPERATURE, _FLOAT),
    ("top_p", GEN_AI_REQUEST_TOP_P, _FLOAT),
    ("top_k", GEN_AI_REQUEST_TOP_K, _FLOAT),
    ("max_completion_tokens", GEN_AI_REQUEST_MAX_TOKENS, _INT),
    ("max_tokens", GEN_AI_REQUEST_MAX_TOKENS, _INT),
    ("max_output_tokens", GEN_AI_REQUEST_MAX_TOKENS, _INT),
    ("frequency_penalty", GEN_AI_REQUEST_FREQUENCY_PENALTY, _FLOAT),
    ("presence_penalty", GEN_AI_REQUEST_PRESENCE_PENALTY, _FLOAT),
    ("stop", GEN_AI_REQUEST_STOP_SEQUENCES, _STRS),
    ("stop_sequences", GEN_AI_REQUEST_STOP_SEQUENCES, _STRS),
    ("seed", GEN_AI_REQUEST_SEED, _SIGNED),
    ("n", GEN_AI_REQUEST_CHOICE_COUNT, _INT),
)
# Gemini keeps them in generationConfig, camelCased.
_GOOGLE_PARAMS: Final = (
    ("temperature", GEN_AI_REQUEST_TEMPERATURE, _FLOAT),
    ("topP", GEN_AI_REQUEST_TOP_P, _FLOAT),
    ("topK", GEN_AI_REQUEST_TOP_K, _FLOAT),
    ("maxOutputTokens", GEN_AI_REQUEST_MAX_TOKENS, _INT),
    ("frequencyPenalty", GEN_AI_REQUEST_FREQUENCY_PENALTY, _FLOAT),
    ("presencePenalty", GEN_AI_REQUEST_PRESENCE_PENALTY, _FLOAT),
    ("stopSequences", GEN_AI_REQUEST_STOP_SEQUENCES, _STRS),
    ("seed", GEN_AI_REQUEST_SEED, _SIGNED),
    ("candidateCount", GEN_AI_REQUEST_CHOICE_COUNT, _INT),
)
_JSON_FORMATS: Final = frozenset({"json_object", "json_schema", "json"})
_MIME_OUTPUT_TYPES: Final = {
    "application/json": "json",
    "text/plain": "text",
    "text/x.enum": "text",
}


def _put_param(
    params: dict[str, Any], key: str, attribute: str, kind: str, where: str, out: SpanAttributes
) -> None:
    value = params.get(key)
    if value is None or attribute in out.values:
        return
    path = f"{where}.{key}"
    if kind == _FLOAT:
        out.put_float(attribute, value, where=path)
    elif kind == _INT:
        out.put_int(attribute, value, where=path)
    elif kind == _SIGNED:
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and -(2**63) <= value <= INT64_MAX
        ):
            out.values[attribute] = value
        else:
            out.warn(f"{path}: expected an integer, got {type(value).__name__}")
    else:
        out.put_strs(attribute, value, where=path)


def _tool_count(tools: Any, google: bool, out: SpanAttributes) -> int | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        out.warn(f"request_json.tools: expected a list, got {type(tools).__name__}")
        return None
    if not google:
        return len(tools)
    count = 0
    for tool in tools:
        declarations = tool.get("functionDeclarations") if isinstance(tool, dict) else None
        count += len(declarations) if isinstance(declarations, list) else 1
    return count


def _output_type(body: dict[str, Any], config: dict[str, Any] | None) -> str | None:
    if config is not None:
        mime = config.get("responseMimeType")
        return _MIME_OUTPUT_TYPES.get(mime) if isinstance(mime, str) else None
    fmt = body.get("response_format")
    if fmt is None and isinstance(body.get("text"), dict):
        fmt = body["text"].get("format")  # Responses API
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if not isinstance(kind, str):
        return None
    return "json" if kind in _JSON_FORMATS else "text" if kind == "text" else None


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the request says beyond the attributes written directly."""

    model: str | None
    stream: bool | None
    tool_count: int | None


def read_request(
    body: dict[str, Any], shape: Shape, out: SpanAttributes, *, openai: bool
) -> RequestFacts:
    """Put the request's sampling parameters on the span; return the rest of what it says."""
    google = shape is Shape.GOOGLE
    config: dict[str, Any] | None = None
    if google:
        raw_config = body.get("generationConfig")
        config = raw_config if isinstance(raw_config, dict) else {}
        for key, attribute, kind in _GOOGLE_PARAMS:
            _put_param(config, key, attribute, kind, "request_json.generationConfig", out)
    else:
        for key, attribute, kind in _CHAT_PARAMS:
            _put_param(body, key, attribute, kind, "request_json", out)
    if out.values.get(GEN_AI_REQUEST_CHOICE_COUNT) == 1:
        del out.values[GEN_AI_REQUEST_CHOICE_COUNT]  # conventions: only when != 1
    if openai:
        tier = body.get("service_tier")
        if isinstance(tier, str) and tier and tier != "auto":
            out.values[OPENAI_REQUEST_SERVICE_TIER] = tier
    model = body.get("model")
    stream = body.get("stream")
    output_type = _output_type(body, config)
    if output_type:
        out.values[GEN_AI_OUTPUT_TYPE] = output_type
    return RequestFacts(
        model=model if isinstance(model, str) and model else None,
        stream=stream if isinstance(stream, bool) else None,
        tool_count=_tool_count(body.get("tools"), google, out),
    )
