"""Database URLs: the driver's form and the masked form every message and log line uses.

Letta's own ``LETTA_PG_URI`` may name an SQLAlchemy driver (``postgresql+asyncpg://``,
``postgresql+pg8000://``); libpq only knows ``postgresql://`` and ``postgres://``, so the driver
part is dropped. The password never leaves this module except inside the connection string
handed to the driver: :func:`mask_dsn` is what the rest of the exporter prints.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict

__all__ = ["driver_dsn", "mask_dsn"]

_SCHEME: Final = re.compile(r"^(postgres(?:ql)?)\+[A-Za-z0-9_]+://", re.IGNORECASE)
_MASK: Final = "***"
#: ``password=value`` in a keyword connection string; the value may be quoted with escapes.
_KEYWORD_PASSWORD: Final = re.compile(r"\bpassword\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S+)")


def driver_dsn(dsn: str) -> str:
    """``dsn`` as libpq takes it (an SQLAlchemy ``+driver`` suffix removed)."""
    return _SCHEME.sub(lambda m: f"{m.group(1)}://", dsn.strip(), count=1)


def mask_dsn(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***``, for messages and logs.

    Both URL (``postgresql://user:pw@host/db?password=pw``) and keyword (``host=... password=pw``)
    forms are masked; anything that cannot be parsed is replaced whole, since it might hold a
    password in a shape this function does not know.
    """
    text = driver_dsn(dsn)
    if "://" in text:
        try:
            parts = urlsplit(text)
        except ValueError:
            return "<unparsable database URL>"
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{_MASK}@{hostinfo}" if ":" in userinfo else f"{user}@{hostinfo}"
        query = re.sub(r"(?i)(^|&)(password)=[^&]*", rf"\1\2={_MASK}", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    try:
        conninfo_to_dict(text)
    except Exception:  # noqa: BLE001 - any parse failure: show nothing of it
        return "<unparsable database connection string>"
    return _KEYWORD_PASSWORD.sub(f"password={_MASK}", text)
