"""The tools a request offers the model -> ``gen_ai.tool.definitions`` entries.

OpenAI chat wraps each function in ``function``, Responses gives it flat, Anthropic names its
schema ``input_schema`` and Gemini groups ``functionDeclarations`` beside built-in tools; all
become ``{"type": "function", "name", "description", "parameters"}`` (built-in tools keep their
own type and carry no schema).
"""

from __future__ import annotations

from typing import Any

from ._parts import Part, PartReader
from ._shapes import Shape

__all__ = ["tool_definitions"]


def tool_definitions(reader: PartReader, request: dict[str, Any], shape: Shape) -> list[Part]:
    """The request's ``tools``, read as the API of ``shape`` writes them."""
    tools = request.get("tools")
    if not isinstance(tools, list):
        return []
    if shape is Shape.GOOGLE:
        return [definition for tool in tools for definition in _google_tool(reader, tool)]
    return [_tool_definition(reader, tool) for tool in tools]


def _tool_definition(reader: PartReader, tool: Any) -> Part:
    """OpenAI chat (``function`` wrapper), Responses (flat) or Anthropic (``input_schema``)."""
    if not isinstance(tool, dict):
        return reader.generic(tool)
    function = tool.get("function")
    spec = function if isinstance(function, dict) else tool
    kind = tool.get("type")
    is_function = (
        isinstance(function, dict) or kind in (None, "function", "custom") or "input_schema" in tool
    )
    name = spec.get("name")
    definition: Part = {
        "type": "function" if is_function else str(kind),
        "name": reader.cleaner.text(name) if isinstance(name, str) else str(kind or ""),
    }
    if is_function:
        description = spec.get("description")
        if isinstance(description, str):
            definition["description"] = reader.cleaner.text(description)
        parameters = spec.get("parameters", spec.get("input_schema"))
        if parameters is not None:
            definition["parameters"] = reader.cleaner.clean(parameters)
    return definition


def _google_tool(reader: PartReader, tool: Any) -> list[Part]:
    """One Gemini tool: each function declaration, then each built-in tool by its key."""
    if not isinstance(tool, dict):
        return [reader.generic(tool)]
    definitions: list[Part] = []
    for key, value in tool.items():
        if key in ("functionDeclarations", "function_declarations") and isinstance(value, list):
            for declaration in value:
                spec = declaration if isinstance(declaration, dict) else {}
                name = spec.get("name")
                definition: Part = {
                    "type": "function",
                    "name": reader.cleaner.text(name) if isinstance(name, str) else "",
                }
                if isinstance(spec.get("description"), str):
                    definition["description"] = reader.cleaner.text(spec["description"])
                parameters = spec.get("parameters", spec.get("parametersJsonSchema"))
                if parameters is not None:
                    definition["parameters"] = reader.cleaner.clean(parameters)
                definitions.append(definition)
        else:
            definitions.append({"type": reader.cleaner.key(key), "name": reader.cleaner.key(key)})
    return definitions
