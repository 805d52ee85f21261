"""Shared test fixtures: paths to the recorded Letta responses."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
LETTA = FIXTURES / "letta-0.16.8"
CLOUD = FIXTURES / "cloud-shape"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
