"""Provider content blocks -> the GenAI conventions' message parts, cleaned on the way.

Every provider reader (:mod:`._chat`, :mod:`._responses`, :mod:`._gemini`,
:mod:`._letta_stream`, :mod:`._tools`) builds its parts here, so a text, tool call or image
reads the same whichever API sent it, and no string or object reaches a part uncleaned.
"""

from __future__ import annotations

import json
from typing import Any, Final

from ._attributes import SpanAttributes
from ._sanitize import Cleaner

__all__ = ["ROLE_MAP", "Inputs", "Message", "Part", "PartReader", "with_finish"]

Part = dict[str, Any]
Message = dict[str, Any]
# What a request reader returns: (system instructions, input messages).
Inputs = tuple[list[Part], list[Message]]

# Gemini's names for the conventions' roles; other roles (``developer`` ...) are kept as sent.
ROLE_MAP: Final = {"model": "assistant", "function": "tool"}


def with_finish(message: Message, reason: Any) -> Message:
    """``message`` with its ``finish_reason`` when the provider gave one."""
    # finish_reason is also in gen_ai.response.finish_reasons; older schema versions require it.
    if isinstance(reason, str) and reason:
        message["finish_reason"] = reason
    return message


class PartReader:
    """Provider blocks -> convention parts, every string and object cleaned on the way.

    Args:
        cleaner: replaces credential keys and applies the redaction patterns.
        out: the span's attributes, where what cannot be read is reported as a warning.
    """

    __slots__ = ("cleaner", "out")

    def __init__(self, cleaner: Cleaner, out: SpanAttributes) -> None:
        self.cleaner = cleaner
        self.out = out

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

    def openai_tool_call(self, call: Any) -> Part:
        """An OpenAI ``tool_calls`` entry (``function`` wrapper) or a flat call object."""
        if not isinstance(call, dict):
            return self.generic(call)
        function = call.get("function")
        if isinstance(function, dict):
            return self.tool_call(call.get("id"), function.get("name"), function.get("arguments"))
        return self.tool_call(
            call.get("id"), call.get("name"), call.get("arguments", call.get("input"))
        )

    def tool_response(self, call_id: Any, response: Any) -> Part:
        part: Part = {"type": "tool_call_response", "response": self.cleaner.clean(response)}
        if isinstance(call_id, str):
            part["id"] = self.cleaner.text(call_id)
        return part

    def generic(self, block: Any) -> Part:
        """A block no reader knows: kept, cleaned, under its own ``type`` (else ``unknown``)."""
        cleaned = self.cleaner.clean(block)
        if not isinstance(cleaned, dict):
            return {"type": "unknown", "content": cleaned}
        if not isinstance(cleaned.get("type"), str):
            cleaned["type"] = "unknown"
        return cleaned

    def media(self, modality: str, mime: Any, *, data: Any = None, uri: Any = None) -> Part:
        """Inline data (or a ``data:`` URI) as a ``blob`` part, any other URI as a ``uri`` one."""
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
