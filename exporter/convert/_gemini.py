"""Gemini ``generateContent`` -> convention messages.

Gemini speaks of ``contents`` with ``parts`` (``text``, ``functionCall``, ``inlineData`` ...)
and of the ``model`` role; here they become the same parts and roles the other APIs give.
"""

from __future__ import annotations

from typing import Any

from ._parts import ROLE_MAP, Inputs, Message, Part, PartReader, with_finish

__all__ = ["google_input", "google_output"]


def _modality(mime: Any) -> str:
    if isinstance(mime, str):
        for prefix, modality in (("image/", "image"), ("audio/", "audio"), ("video/", "video")):
            if mime.startswith(prefix):
                return modality
    return "document"


def _google_part(reader: PartReader, part: Any) -> Part:
    if not isinstance(part, dict):
        return reader.generic(part)
    if isinstance(part.get("text"), str):
        if part.get("thought") is True:
            return {"type": "reasoning", "content": reader.cleaner.text(part["text"])}
        return reader.text(part["text"])
    call = part.get("functionCall")
    if isinstance(call, dict):
        return reader.tool_call(call.get("id"), call.get("name"), call.get("args"))
    result = part.get("functionResponse")
    if isinstance(result, dict):
        return reader.tool_response(result.get("id") or result.get("name"), result.get("response"))
    inline = part.get("inlineData")
    if isinstance(inline, dict):
        mime = inline.get("mimeType")
        return reader.media(_modality(mime), mime, data=inline.get("data"))
    file_data = part.get("fileData")
    if isinstance(file_data, dict):
        mime = file_data.get("mimeType")
        return reader.media(_modality(mime), mime, uri=file_data.get("fileUri"))
    return reader.generic({"type": next(iter(part), "unknown"), **part})


def _google_content(reader: PartReader, content: Any, default_role: str) -> Message:
    if not isinstance(content, dict):
        return {"role": default_role, "parts": [reader.generic(content)]}
    raw_role = content.get("role")
    role = (
        ROLE_MAP.get(raw_role, raw_role) if isinstance(raw_role, str) and raw_role else default_role
    )
    parts = content.get("parts")
    converted = [_google_part(reader, part) for part in parts] if isinstance(parts, list) else []
    return {"role": role, "parts": converted}


def google_input(reader: PartReader, request: dict[str, Any]) -> Inputs:
    """The request's ``systemInstruction`` and ``contents``."""
    instruction = request.get("systemInstruction", request.get("system_instruction"))
    system: list[Part] = []
    if isinstance(instruction, str):
        system = [reader.text(instruction)]
    elif isinstance(instruction, dict) and isinstance(instruction.get("parts"), list):
        system = [_google_part(reader, part) for part in instruction["parts"]]
    contents = request.get("contents")
    messages = (
        [_google_content(reader, c, "user") for c in contents] if isinstance(contents, list) else []
    )
    return system, messages


def google_output(reader: PartReader, response: dict[str, Any]) -> list[Message]:
    """One message per candidate."""
    candidates = response.get("candidates")
    messages: list[Message] = []
    for candidate in candidates if isinstance(candidates, list) else ():
        if not isinstance(candidate, dict):
            continue
        message = _google_content(reader, candidate.get("content") or {}, "assistant")
        messages.append(with_finish(message, candidate.get("finishReason")))
    return messages
