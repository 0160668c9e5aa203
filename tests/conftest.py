"""Fixtures for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """CLI commands and the daemon configure logging globally (to a stream pytest closes
    afterwards): put structlog back after each test."""
    yield
    structlog.reset_defaults()
