"""Fixtures for daemon tests."""

from __future__ import annotations

from tests.risk.conftest import harness  # noqa: F401 (the live driver's tests use it)
