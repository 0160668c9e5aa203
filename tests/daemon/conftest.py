"""Shared fixtures for daemon tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """CLI commands configure logging globally (to a stream pytest closes afterwards)."""
    yield
    structlog.reset_defaults()
