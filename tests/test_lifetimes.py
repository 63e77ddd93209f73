"""How long the worker-side keys live, read from Redis's own clock.

Every figure is checked where Redis keeps it: ``PTTL`` right after the operation,
``lease_until`` against the server's ``TIME``, and keys with a shortened lifetime
polled until Redis itself expires them. The 24 h and 60 s figures are the ones
README.md promises; shortening ``DONE_TTL``, ``IDEMPOTENCY_TTL`` or ``LEASE_TTL``
(or the scripts' ``PEXPIRE``) fails a test here.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from taskiq.message import TaskiqMessage

from taskiq_dedup import DedupMiddleware, skip
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.stats import DedupStats
from tests.support.polling import eventually
from tests.support.redis_time import redis_now_ms

DAY_MS = 24 * 3600 * 1000
"""README.md: done keys and idempotency keys are kept 24 h."""
LEASE_MS = 60 * 1000
"""README.md: a running key holds a 60 s lease."""
PENDING_MS = 15 * 1000
"""README.md: a kick stays pending (unconfirmed) for 15 s before a later kick replaces it."""
SLACK_MS = 30_000
"""How much of a lifetime may pass between the operation and the read: far more
than any test step takes, far less than the figures it tells apart."""
SLOT = 1_700_000_000


def firing_message(task_id: str = "t-1") -> TaskiqMessage:
    labels = {"schedule_id": "nightly", "dedup_slot": SLOT}
    return TaskiqMessage(task_id=task_id, task_name="report", labels=labels, args=[], kwargs={})


def kicked_message(task_id: str, key: str = "order-1") -> TaskiqMessage:
    labels = {"idempotency_key": key}
    return TaskiqMessage(task_id=task_id, task_name="charge", labels=labels, args=[], kwargs={})


def assert_lives(pttl: int, expected_ms: int) -> None:
    assert expected_ms - SLACK_MS < pttl <= expected_ms, (pttl, expected_ms)


def assert_pending_for(left_ms: int, expected_ms: int) -> None:
    """A pending window is short: the slack is a second, not ``SLACK_MS``."""
    assert expected_ms - 1_000 < left_ms <= expected_ms, (left_ms, expected_ms)


async def pending_left(redis: Redis, key: str) -> int:
    """Milliseconds until a kick's pending binding lapses, by Redis's clock."""
    return int(await redis.hget(key, "pending_until")) - await redis_now_ms(redis)


async def lease_left(redis: Redis, key: str) -> int:
    """Milliseconds until the lease on ``key`` lapses, by Redis's clock."""
    return int(await redis.hget(key, "lease_until")) - await redis_now_ms(redis)


async def run_once(middleware: DedupMiddleware, message: TaskiqMessage) -> None:
    """What a receiver does around a successful task: claim, then finish."""
    assert await middleware.pre_execute(message) is message
    await middleware.post_execute(message, None)  # type: ignore[arg-type]


# ------------------------------------------------------------ the defaults


async def test_running_key_holds_a_60_s_lease_and_a_day_of_retention(
    redis: Redis, prefix: str
) -> None:
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    message = firing_message()
    assert await middleware.pre_execute(message) is message
    key = KeySpace(prefix).firing("nightly", SLOT)
    try:
        assert await redis.hget(key, "state") == b"running"
        assert_lives(await lease_left(redis, key), LEASE_MS)
        assert_lives(await redis.pttl(key), DAY_MS)
    finally:
        await middleware.post_execute(message, None)  # type: ignore[arg-type]


async def test_done_firing_key_is_kept_a_day(redis: Redis, prefix: str) -> None:
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    message = firing_message()
    assert await middleware.pre_execute(message) is message
    key = KeySpace(prefix).firing("nightly", SLOT)
    await redis.pexpire(key, 5_000)  # as if the run had lasted most of a day
    await middleware.post_execute(message, None)  # type: ignore[arg-type]
    assert await redis.hget(key, "state") == b"done"
    assert_lives(await redis.pttl(key), DAY_MS)


async def test_idempotency_key_is_kept_a_day_from_the_kick_and_the_run(
    redis: Redis, prefix: str
) -> None:
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    first = kicked_message("t-1")
    assert await middleware.pre_send(first) is first
    key = KeySpace(prefix).idempotency("charge", "order-1")
    assert_lives(await redis.pttl(key), DAY_MS)  # bound at the kick, before any worker
    assert_pending_for(await pending_left(redis, key), PENDING_MS)
    await run_once(middleware, first)
    assert await redis.hget(key, "state") == b"done"
    assert_lives(await redis.pttl(key), DAY_MS)


async def test_heartbeat_renews_the_lease_and_the_retention(redis: Redis, prefix: str) -> None:
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    message = firing_message()
    assert await middleware.pre_execute(message) is message
    key = KeySpace(prefix).firing("nightly", SLOT)
    hold = middleware._holds.get(message)
    assert hold is not None
    try:
        await redis.hset(key, "lease_until", 0)  # as if the lease were about to lapse
        await redis.pexpire(key, 5_000)
        assert await middleware._leases.extend(
            key, hold.token, lease_ms=middleware.lease_ms, retention_ms=hold.retention_ms
        )
        assert_lives(await lease_left(redis, key), LEASE_MS)
        assert_lives(await redis.pttl(key), DAY_MS)
    finally:
        await middleware.post_execute(message, None)  # type: ignore[arg-type]


# ------------------------------------------------- shortened, by Redis's clock


async def test_done_key_expires_by_redis_clock_and_the_firing_runs_again(
    redis: Redis, prefix: str
) -> None:
    done_ttl = 1.0
    middleware = DedupMiddleware(redis=redis, prefix=prefix, lease_ttl=0.5, done_ttl=done_ttl)
    key = KeySpace(prefix).firing("nightly", SLOT)
    before = await redis_now_ms(redis)
    await run_once(middleware, firing_message("t-1"))
    assert 0 < await redis.pttl(key) <= done_ttl * 1000
    copy = firing_message("t-2")
    assert skip.is_skip(await middleware.pre_execute(copy))  # still remembered

    gone_at: list[int] = []

    async def expired() -> bool:
        if await redis.exists(key):
            return False
        gone_at.append(await redis_now_ms(redis))
        return True

    await eventually(expired, timeout=10 * done_ttl, message=f"{key} never expired")
    assert gone_at[0] - before >= done_ttl * 1000  # not a moment early
    again = firing_message("t-3")
    assert await middleware.pre_execute(again) is again  # forgotten: it runs again
    await middleware.post_execute(again, None)  # type: ignore[arg-type]
    assert middleware.stats == DedupStats(executed=2, dropped_done=1)


async def test_idempotency_key_expires_by_redis_clock_and_a_new_kick_runs(
    redis: Redis, prefix: str
) -> None:
    ttl = 1.0
    middleware = DedupMiddleware(
        redis=redis, prefix=prefix, lease_ttl=0.5, idempotency_ttl=ttl, pending_ttl=0.5
    )
    key = KeySpace(prefix).idempotency("charge", "order-1")
    before = await redis_now_ms(redis)
    first = kicked_message("t-1")
    assert await middleware.pre_send(first) is first
    await run_once(middleware, first)
    echo = await middleware.pre_send(kicked_message("t-2"))
    assert skip.is_skip(echo)
    assert echo.task_id == "t-1"  # answered by the first kick while the key lives

    async def expired() -> bool:
        return not await redis.exists(key)

    await eventually(expired, timeout=10 * ttl, message=f"{key} never expired")
    assert await redis_now_ms(redis) - before >= ttl * 1000
    later = kicked_message("t-3")
    assert await middleware.pre_send(later) is later  # a new kick owns the key


async def test_lease_lapses_by_redis_clock_not_before(redis: Redis, prefix: str) -> None:
    lease_ttl = 0.5
    holder = DedupMiddleware(redis=redis, prefix=prefix, lease_ttl=lease_ttl)
    message = firing_message("t-1")
    before = await redis_now_ms(redis)
    # Claimed in a task that then ends: no heartbeat renews the lease (a dead worker).
    assert await asyncio.create_task(holder.pre_execute(message)) is message
    assert holder._holds.get(message) is not None
    assert holder._holds._loop is not None
    holder._holds._loop.cancel()  # the process's one heartbeat loop stops: a dead worker
    heir = DedupMiddleware(redis=redis, prefix=prefix, lease_ttl=lease_ttl)
    taken_at: list[int] = []

    async def taken_over() -> bool:
        copy = firing_message("t-2")
        if skip.is_skip(await heir.pre_execute(copy)):
            return False
        taken_at.append(await redis_now_ms(redis))
        await heir.post_execute(copy, None)  # type: ignore[arg-type]
        return True

    await eventually(taken_over, timeout=10 * lease_ttl, interval=0.05)
    assert taken_at[0] - before >= lease_ttl * 1000
    assert heir.stats.lease_takeovers == 1
    assert heir.stats.dropped_running >= 1  # refused while the lease was live
