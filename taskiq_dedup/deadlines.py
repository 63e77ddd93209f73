"""Deadlines on whole Redis operations, retries included.

A socket timeout bounds one read, not an operation: redis-py retries a timed
out command on a fresh connection, so one call against a hung Redis took about
20 s (a 5 s socket timeout times the client's retries). ``within`` bounds the whole operation
instead: each try gets at most ``ATTEMPT_TIMEOUT`` or what is left of the
deadline, failed tries are repeated with a short back-off while time is left,
and the last error is raised when it runs out. Every script this package runs
is safe to repeat (a repeat recognises its own attempt by token), so a try
whose reply was lost may be sent again.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
"""What a failed Redis call raises: redis-py's errors, socket errors, timeouts."""

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    asyncio.TimeoutError,
)
"""Errors another try may not meet: connections and timeouts. A script's own
error (a reply, ``WRONGTYPE``) would recur, so it is raised at once."""

OPERATION_DEADLINE = 5.0
"""Seconds one worker-side decision (claim, finish, release, bind, confirm) may
take with all its tries: a message waits at most this long for a hung Redis
before ``on_redis_error`` applies; as long as the scheduler's claim window, so
both sides give up on one outage alike."""

ATTEMPT_TIMEOUT = 2.0
"""Seconds one try may take: a healthy Redis answers a script in milliseconds,
so a try this slow is stuck; two tries fit in an operation, several in the
renewal window of a lease."""

FIRST_BACKOFF = 0.05
"""Seconds before the second try; doubled per try up to ``MAX_BACKOFF``."""

MAX_BACKOFF = 0.5
"""Longest pause between tries: a Redis back from a restart is used within it."""


async def within(seconds: float, call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call()`` until it succeeds, each try bounded, all within ``seconds``.

    Only connection errors and timeouts are tried again.

    :raises: the last try's Redis error, or ``asyncio.TimeoutError`` if no try
        finished before the deadline.
    """
    deadline = time.monotonic() + seconds
    backoff = FIRST_BACKOFF
    while True:
        left = deadline - time.monotonic()
        try:
            return await _bounded(call, max(0.0, min(ATTEMPT_TIMEOUT, left)))
        except TRANSIENT_ERRORS:
            left = deadline - time.monotonic()
            if left <= backoff:
                raise
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)


if sys.version_info >= (3, 11):

    async def _bounded(call: Callable[[], Awaitable[T]], seconds: float) -> T:
        """Await ``call()`` for at most ``seconds`` (in this task: no task per try)."""
        async with asyncio.timeout(seconds):
            return await call()

else:  # pragma: no cover -- Python 3.10

    async def _bounded(call: Callable[[], Awaitable[T]], seconds: float) -> T:
        """Await ``call()`` for at most ``seconds``."""
        return await asyncio.wait_for(call(), timeout=seconds)
