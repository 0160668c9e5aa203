"""Shared fixtures for daemon tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from tests.risk.conftest import harness  # noqa: F401 (the live driver's tests use it)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """CLI commands configure logging globally (to a stream pytest closes afterwards)."""
    yield
    structlog.reset_defaults()
