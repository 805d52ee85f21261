"""The README's settings reference agrees with the Settings model and the commands' flags."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
from annotated_types import Ge
from pydantic_core import PydanticUndefined

from exporter.cli import app
from exporter.settings import Settings, env_names

README = Path(__file__).resolve().parent.parent / "README.md"


def _rows() -> dict[str, list[str]]:
    text = README.read_text()
    table = text[text.index("### Settings") : text.index("### In the container image")]
    rows: dict[str, list[str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and (key := re.fullmatch(r"`(\w+)`", cells[0])):
            rows[key.group(1)] = cells
    return rows


def _flags(command: str) -> set[str]:
    cmd = app.commands[command]
    return {
        opt
        for param in cmd.params
        if isinstance(param, click.Option)
        for opt in (*param.opts, *param.secondary_opts)
    }


def _shown_default(field: Any) -> str:
    value = field.default_factory() if field.default_factory else field.default
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[]"
    return str(value)


def test_every_setting_has_a_row_and_every_row_a_setting():
    assert set(_rows()) == set(Settings.model_fields)


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_a_row_agrees_with_the_model(name):
    _, env, flag, default, meaning = _rows()[name]
    field = Settings.model_fields[name]
    assert re.findall(r"`([A-Z_]+)`", env) == env_names(name)
    shown = re.match(r"`([^`]*)`|(\w+)", default)
    assert shown is not None
    assert (shown.group(1) or shown.group(2)) == _shown_default(field)
    minimum = next((m.ge for m in field.metadata if isinstance(m, Ge)), None)
    if minimum is not None and minimum > 1:
        assert f">= {minimum}" in meaning or f"minimum {minimum}" in meaning
    flags = re.findall(r"`(--[a-z-]+)`", flag)
    scope = re.search(r"\(((?:run|export|check)(?:, (?:run|export|check))*)[;)]", flag)
    commands = scope.group(1).split(", ") if scope else ["run", "export", "check"]
    for command in commands:
        assert set(flags) <= _flags(command), (name, command)
    for command in {"run", "export", "check"} - set(commands):
        assert not set(flags) & _flags(command), (name, command, "is not marked")


def test_the_size_limit_minimum_is_the_models():
    minimum = next(
        m.ge for m in Settings.model_fields["content_max_bytes"].metadata if isinstance(m, Ge)
    )
    text = README.read_text()
    assert f"minimum {minimum})" in text
    assert re.findall(r"content_max_bytes[^.]*minimum (\d+)", text, re.S) in ([], [str(minimum)])


@pytest.mark.parametrize("command", ["run", "export", "check", "convert"])
def test_every_flag_has_help(command):
    for param in app.commands[command].params:
        if isinstance(param, click.Option) and param.name not in ("help",):
            assert param.help, param.name
