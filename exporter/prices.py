"""Reading the user's price file (the parsing itself is pure, in ``exporter.convert``)."""

from __future__ import annotations

from pathlib import Path

from .convert import PriceTable, parse_prices
from .errors import ConfigError

__all__ = ["load_price_table"]


def load_price_table(path: Path | str, *, setting: str = "prices_file") -> PriceTable:
    """The price table in ``path`` (TOML, or JSON), for ``ConvertOptions(prices=...)``.

    Args:
        path: the file.
        setting: the name the user gave the path under, for the error message.

    Raises:
        ConfigError: the file cannot be read or is not a valid price table.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(setting, f"cannot read {path}: {exc.__class__.__name__}") from None
    try:
        return parse_prices(text)
    except ValueError as exc:
        raise ConfigError(setting, f"{path}: {exc}") from None
