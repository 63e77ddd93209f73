"""``eventually``: the async counterpart of ``processes.wait_until``."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], Awaitable[object] | object],
    timeout: float,
    interval: float = 0.02,
    message: str = "",
) -> None:
    """Await ``check()`` (sync or async) until it is truthy or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(message or f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
