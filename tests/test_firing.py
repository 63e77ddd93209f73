"""How long a firing state lives after ``FiringCoordinator`` claims and confirms it.

Read from Redis's own clock (``PTTL``): the fake ``now`` given to the coordinator
moves only the slot arithmetic, so these checks do not depend on today's date.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from redis.asyncio import Redis
from taskiq import ScheduledTask

from taskiq_dedup.claims import FiringClaims
from taskiq_dedup.firing import FiringCoordinator
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.triggers import parse_trigger

DAY_MS = 24 * 3600 * 1000
"""docs/DESIGN.md: a firing state lives at least a day after its last claim."""
SLACK_MS = 30_000
"""Time that may pass between the claim and the read: far less than a day."""
NOW = datetime(2026, 3, 10, 9, 0, 30, tzinfo=timezone.utc)


@pytest.fixture
def coordinator(redis: Redis, prefix: str) -> FiringCoordinator:
    claims = FiringClaims(redis, "a")
    return FiringCoordinator(claims, KeySpace(prefix), one_off_grace=timedelta(days=1))


def cron(expression: str) -> ScheduledTask:
    return ScheduledTask(task_name="app:job", labels={}, args=[], kwargs={}, cron=expression)


async def test_an_every_minute_state_lives_a_day_by_redis_clock(
    coordinator: FiringCoordinator, redis: Redis
) -> None:
    trigger = parse_trigger(cron("* * * * *"))
    attempt = await coordinator.acquire("minutely", trigger, NOW)
    assert attempt is not None
    assert DAY_MS - SLACK_MS < await redis.pttl(attempt.key) <= DAY_MS
    await coordinator.confirm(attempt)
    assert DAY_MS - SLACK_MS < await redis.pttl(attempt.key) <= DAY_MS


async def test_a_weekly_state_outlives_its_next_firing(
    coordinator: FiringCoordinator, redis: Redis
) -> None:
    """A period longer than a day keeps the state past the next firing's late window."""
    trigger = parse_trigger(cron("0 9 * * 2"))  # NOW is a Tuesday, 09:00:30
    attempt = await coordinator.acquire("weekly", trigger, NOW)
    assert attempt is not None
    expected_ms = (trigger.state_expiry(attempt.slot) - int(NOW.timestamp())) * 1000
    assert expected_ms > 7 * DAY_MS
    assert expected_ms - SLACK_MS < await redis.pttl(attempt.key) <= expected_ms
