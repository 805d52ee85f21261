"""The lock files CI and the image install from agree with pyproject.toml.

A dependency added to pyproject.toml but not to the locks would be missing from CI and the
image (both install with ``--no-deps``); ``requirements/lock.sh`` regenerates them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(name: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        package, _, version = line.partition("==")
        assert version, f"{name}: {line!r} is not pinned with =="
        pins[canonicalize_name(package.split("[")[0])] = version
    return pins


def _requirements(*extras: str) -> list[Requirement]:
    project = PYPROJECT["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        found += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return found


@pytest.mark.parametrize(
    ("lock", "extras"), [("runtime.lock", ()), ("test.lock", ("test", "bench"))]
)
def test_every_requirement_is_pinned_within_its_range(lock: str, extras: tuple[str, ...]) -> None:
    pins = _pins(lock)
    for requirement in _requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements/{lock}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements/{lock} pins {name}=={pins[name]}, outside {requirement.specifier}"
        )


def test_the_runtime_lock_holds_no_test_tools() -> None:
    runtime = _pins("runtime.lock")
    for tool in ("pytest", "ruff", "mypy", "hypothesis", "opentelemetry-exporter-otlp"):
        assert canonicalize_name(tool) not in runtime
