"""Wait on a condition with a deadline — never a bare sleep that hopes the race is over."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

POLL_INTERVAL = 0.02


async def eventually(probe: Callable[[], Awaitable[T]], *, timeout: float = 10.0,
                     what: str = "condition") -> T:
    """Return the first truthy result of ``probe`` or fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: T | None = None
    while loop.time() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(POLL_INTERVAL)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
