"""``harness``: make entered ``Harness`` instances inside a test; each is left at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.risk.harness import Harness

MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    async with AsyncExitStack() as stack:
        async def make(*args: Any, **kwargs: Any) -> Harness:
            kwargs.setdefault("state_dir", tmp_path)
            return await stack.enter_async_context(Harness(*args, **kwargs))

        yield make
