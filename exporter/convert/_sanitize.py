"""Making record values safe to put on a span: no credentials, no redacted text, valid JSON.

Letta records hold whatever the provider SDK, the agent's config or a newer server put there.
Before any of it reaches an attribute it goes through :class:`Cleaner`, which

* replaces the value of every credential-looking key (``api_key``, ``Authorization``, ...),
  case-insensitively and at any depth, by ``[REDACTED]``, whatever the content policy;
* applies the user's redaction patterns to every string;
* hides passwords in URLs (``https://user:pass@host``);
* does the same inside strings that hold JSON (tool call arguments are JSON strings), re-encoding
  such a string only when it had something to hide;
* turns what JSON cannot hold (NaN, non-string keys, bytes, sets, objects, lone surrogates,
  nesting deeper than :data:`MAX_DEPTH`) into strings, so serialising the result cannot fail.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

__all__ = [
    "DEPTH_MARKER",
    "MAX_DEPTH",
    "REDACTED",
    "Cleaner",
    "fix_text",
    "is_credential_key",
    "redact_text",
    "scrub_url_userinfo",
]

REDACTED: Final = "[REDACTED]"
DEPTH_MARKER: Final = "[nesting too deep]"
MAX_DEPTH: Final = 64

# Compared after lower-casing and mapping "-" to "_". Exact names first, then suffixes, so
# "max_tokens" or "budget_tokens" (token counts, not tokens) are left alone.
_CREDENTIAL_KEYS: Final = frozenset(
    {
        "api_key",
        "apikey",
        "x_api_key",
        "api_token",
        "authorization",
        "proxy_authorization",
        "auth",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "secret_key",
        "private_key",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "bearer_token",
        "session_token",
        "cookie",
        "set_cookie",
        "credentials",
        "x_goog_api_key",
        "aws_secret_access_key",
        "aws_session_token",
    }
)
_CREDENTIAL_SUFFIXES: Final = (
    "_api_key",
    "_apikey",
    "_password",
    "_secret",
    "_secret_key",
    "_private_key",
    "_access_token",
    "_auth_token",
    "_refresh_token",
    "_session_token",
    "_credentials",
)
_URL_USERINFO: Final = re.compile(r"(?<=://)[^/@\s?#]+@")
# Only strings that could hold a credential key are parsed as JSON (cheap pre-check).
_CREDENTIAL_HINT: Final = re.compile(
    r"key|auth|token|secret|passw|cookie|credential", re.IGNORECASE
)
_MAX_EMBEDDED: Final = 4
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def is_credential_key(key: object) -> bool:
    """Whether a mapping key names a credential (its value must never be exported)."""
    return isinstance(key, str) and _is_credential_name(key)


@lru_cache(maxsize=8192)
def _is_credential_name(key: str) -> bool:
    # Cached: the same few hundred keys (llm_config, usage, message fields) come back each trace.
    name = key.strip().lower().replace("-", "_")
    return name in _CREDENTIAL_KEYS or name.endswith(_CREDENTIAL_SUFFIXES)


def scrub_url_userinfo(text: str) -> str:
    """Hide ``user:password@`` in URLs inside ``text``."""
    if "://" in text and "@" in text:
        return _URL_USERINFO.sub(f"{REDACTED}@", text)
    return text


def fix_text(text: str) -> str:
    """Replace lone surrogates (not encodable as UTF-8, so not exportable) by U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # In a Python str every surrogate code point is unpaired (pairs decode to one character).
        return _SURROGATE.sub("\ufffd", text)
    return text


def redact_text(text: str, redactors: tuple[re.Pattern[str], ...]) -> str:
    """Apply the user's redaction patterns to one string."""
    for pattern in redactors:
        text = pattern.sub(REDACTED, text)
    return text


@dataclass(slots=True)
class Cleaner:
    """One pass over a JSON-like value producing a JSON-safe, credential-free copy.

    Attributes:
        redactors: the user's compiled redaction patterns.
        clipped: set when some part was nested deeper than :data:`MAX_DEPTH` and replaced.
    """

    redactors: tuple[re.Pattern[str], ...] = ()
    clipped: bool = field(default=False)
    _hidden: bool = field(default=False, repr=False)
    _embedded: int = field(default=0, repr=False)

    def scrub(self, value: str) -> str:
        """Credentials out of a string: in embedded JSON and in URLs (no redaction patterns)."""
        if (
            len(value) > 1
            and value[0] in "{["
            and self._embedded < _MAX_EMBEDDED
            and _CREDENTIAL_HINT.search(value)
        ):
            value = self._scrub_embedded_json(value)
        return scrub_url_userinfo(value)

    def text(self, value: str) -> str:
        """A string made safe: credentials hidden, redacted, surrogates replaced."""
        value = self.scrub(value)
        if self.redactors:
            value = redact_text(value, self.redactors)
        return fix_text(value)

    def _scrub_embedded_json(self, value: str) -> str:
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return value
        if not isinstance(parsed, dict | list):
            return value
        outer, self._hidden = self._hidden, False
        self._embedded += 1
        try:
            cleaned = self.clean(parsed)
            hidden = self._hidden
        finally:
            self._embedded -= 1
            self._hidden = outer or self._hidden
        if not hidden:
            return value
        return json.dumps(cleaned, ensure_ascii=False, separators=(",", ":"))

    def clean(self, value: Any, depth: int = 0) -> Any:
        """A JSON-serialisable copy of ``value`` (see the module docstring)."""
        if isinstance(value, str):
            return self.text(value)
        if value is None or isinstance(value, bool | int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else repr(value)
        if depth >= MAX_DEPTH:
            self.clipped = True
            return DEPTH_MARKER
        if isinstance(value, Mapping):
            cleaned = {}
            for k, v in value.items():
                if is_credential_key(k):
                    self._hidden = True
                    cleaned[self.key(k)] = REDACTED
                else:
                    cleaned[self.key(k)] = self.clean(v, depth + 1)
            return cleaned
        if isinstance(value, list | tuple):
            return [self.clean(item, depth + 1) for item in value]
        return self.text(_as_text(value))

    def key(self, key: object) -> str:
        """A mapping key as JSON needs it: a string (only surrogates fixed, never redacted)."""
        return fix_text(key) if isinstance(key, str) else fix_text(_as_text(key))


def _as_text(value: object) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a foreign object's __str__ may fail; its type still says something
        return f"<{type(value).__name__}>"
