"""Parsers of the settings' text forms: times, sizes, OTel key=value lists, and list/alias helpers.

They live apart from the model so the field groups and the model share one copy, and so callers
(the CLI, tests) can use them without building settings.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final
from urllib.parse import unquote

from pydantic import AliasChoices
from pydantic_settings import NoDecode

from .errors import ConfigError

__all__ = [
    "DATABASE_URL",
    "HOST_PORT",
    "RELATIVE",
    "StrList",
    "env",
    "parse_key_value_list",
    "parse_size",
    "parse_time",
    "split_list",
]

RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
HOST_PORT = re.compile(r"^[A-Za-z0-9._-]+:\d{1,5}(/\S*)?$|^\[[0-9A-Fa-f:]+\]:\d{1,5}(/\S*)?$")


def parse_time(value: str | datetime, *, now: datetime | None = None) -> datetime:
    """Read an ISO 8601 time or a relative one (``90s``, ``15m``, ``24h``, ``7d``, ``2w`` ago).

    Naive times are UTC, as everywhere in Letta.

    Raises:
        ValueError: the text is neither.
    """
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if match := RELATIVE.match(value):
        amount, unit = float(match.group(1)), match.group(2).lower()
        return (now or datetime.now(UTC)) - timedelta(seconds=amount * _UNITS[unit])
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            "expected an ISO 8601 time (2026-01-31T12:00:00Z) or a relative one (30m, 24h, 7d)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


#: A ``%`` not followed by two hex digits: ``unquote`` would keep it as is, silently.
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def parse_key_value_list(text: str, *, setting: str) -> dict[str, str]:
    """Parse the OTel ``key1=value1,key2=value2`` format (values URL-encoded).

    Used for ``OTEL_EXPORTER_OTLP_HEADERS`` and ``OTEL_RESOURCE_ATTRIBUTES``. The error never
    repeats the text: header values are secrets.

    Raises:
        ConfigError: a member is not ``key=value``, or has a bad ``%``-escape.
    """
    result: dict[str, str] = {}
    for index, item in enumerate(text.split(",")):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                setting, f"item {index + 1} is not key=value (expected key1=value1,key2=value2)"
            )
        if _BAD_ESCAPE.search(item) is not None:
            raise ConfigError(
                setting, f"item {index + 1} has a bad %-escape (expected % and two hex digits)"
            )
        try:
            result[unquote(key.strip(), errors="strict")] = unquote(val.strip(), errors="strict")
        except UnicodeDecodeError:
            raise ConfigError(
                setting, f"item {index + 1} has %-escapes that are not UTF-8"
            ) from None
    return result


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS: Final = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
DATABASE_URL: Final = re.compile(r"^postgres(ql)?(\+[A-Za-z0-9_]+)?://\S+$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Read a size in bytes: ``134217728``, ``128MiB``, ``2GiB``, ``512K`` (units of 1024).

    Raises:
        ValueError: not a size.
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError("expected a size in bytes, or with a unit: 512MiB, 2GiB")
    unit = (match.group(2) or "").upper().rstrip("B").rstrip("I")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def split_list(value: Any) -> Any:
    # Lists arrive as JSON arrays from TOML and flags, and as "a,b,c" from the environment.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


StrList = Annotated[list[str], NoDecode]


def env(*names: str) -> AliasChoices:
    # Environment names only. The field's own name must not be a choice: pydantic-settings would
    # then also read it as a bare variable (a stray SERVICE_NAME or OTLP_ENDPOINT in a container
    # would change the settings). Flags and TOML keys still use the field name (validate_by_name).
    return AliasChoices(*names)
