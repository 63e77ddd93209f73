"""README promises that no other test pins, each against a real Redis.

Clients made from a URL time out, and a hung Redis fails a call instead of
hanging a task; ``add_to=`` picks the child
that ``add_schedule`` writes to; ``ScheduleInCodeError`` deletes nothing, not
even the Redis copies; ``on_claim_error="send"`` plus ``DedupMiddleware`` still
runs a firing once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import InMemoryBroker, ScheduledTask, ScheduleSource
from taskiq.message import TaskiqMessage
from taskiq.schedule_sources import LabelScheduleSource
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListRedisScheduleSource

from taskiq_dedup import (
    CompositeScheduleSource,
    DedupMiddleware,
    ScheduleInCodeError,
    schedule_id_for,
    skip,
)
from taskiq_dedup.connection import RECONNECT_RETRIES
from taskiq_dedup.middleware import REDIS_TIMEOUT
from taskiq_dedup.stats import DedupStats
from tests.support.redis_server import RedisServer

CRON = "* * * * *"


@pytest.fixture
def broker() -> InMemoryBroker:
    broker = InMemoryBroker()

    @broker.task(task_name="app:tick", schedule=[{"cron": CRON, "args": [2]}])
    async def tick(n: int) -> int:
        return n

    @broker.task(task_name="app:plain")
    async def plain(n: int) -> int:
        return n

    return broker


@pytest.fixture
async def composites() -> AsyncIterator[list[CompositeScheduleSource]]:
    """Composites a test started; all shut down afterwards."""
    made: list[CompositeScheduleSource] = []
    yield made
    for source in made:
        await source.shutdown()


def store(redis_url: str, name: str) -> ListRedisScheduleSource:
    return ListRedisScheduleSource(redis_url, prefix=name, serializer=JSONSerializer())


async def started(
    made: list[CompositeScheduleSource], children: list[ScheduleSource], **options: Any
) -> CompositeScheduleSource:
    source = CompositeScheduleSource(children, **options)
    await source.startup()
    made.append(source)
    return source


def message_of(task: ScheduledTask, task_id: str) -> TaskiqMessage:
    """The message the scheduler sends for ``task`` (its labels carry the firing)."""
    return TaskiqMessage(
        task_id=task_id, task_name=task.task_name, labels=task.labels, args=task.args, kwargs={}
    )


def test_clients_made_from_a_url_time_out_each_try_after_2_s(redis_url: str) -> None:
    """README: 2 s socket timeouts (one try's bound) on clients made from ``redis_url``."""
    middleware = DedupMiddleware(redis_url=redis_url)
    options = middleware.redis.connection_pool.connection_kwargs
    assert options["socket_timeout"] == options["socket_connect_timeout"] == REDIS_TIMEOUT == 2


async def test_a_hung_redis_fails_the_call_instead_of_hanging(
    own_redis: RedisServer, prefix: str
) -> None:
    """A frozen server: each attempt times out, the retries are bounded, the call fails.

    The timeout is shortened through ``connection_kwargs`` (the default 5 s, with
    ``RECONNECT_RETRIES`` retries, makes a call fail after about 20 s).
    """
    timeout = 0.5
    middleware = DedupMiddleware(redis_url=own_redis.url, prefix=prefix, socket_timeout=timeout)
    await middleware.redis.ping()  # connected: the hang comes mid-conversation
    message = TaskiqMessage(
        task_id="t-1",
        task_name="report",
        labels={"schedule_id": "nightly", "dedup_slot": 60},
        args=[],
        kwargs={},
    )
    own_redis.pause()
    try:
        # The deadline stops a hang from hanging the suite; the attempts end well before.
        deadline = 4 * (1 + RECONNECT_RETRIES) * timeout
        outcome = await asyncio.wait_for(middleware.pre_execute(message), deadline)
    finally:
        own_redis.resume()
    assert skip.is_skip(outcome)  # fail-closed: not run, not lost
    assert middleware.stats == DedupStats(redis_errors=1)
    await middleware.shutdown()


async def test_add_to_picks_the_child_that_is_written(
    broker: InMemoryBroker,
    redis_url: str,
    prefix: str,
    composites: list[CompositeScheduleSource],
) -> None:
    first, second = store(redis_url, f"{prefix}-a"), store(redis_url, f"{prefix}-b")
    source = await started(
        composites,
        [LabelScheduleSource(broker), first, second],
        redis_url=redis_url,
        prefix=prefix,
        add_to=second,
    )
    plain = broker.find_task("app:plain")
    assert plain is not None
    created = await plain.kicker().schedule_by_cron(source, "5 * * * *", 1)
    assert await first.get_schedules() == []
    [written] = await second.get_schedules()
    assert written.schedule_id == created.schedule_id


async def test_a_schedule_in_code_deletes_nothing_not_even_redis_copies(
    broker: InMemoryBroker,
    redis_url: str,
    prefix: str,
    composites: list[CompositeScheduleSource],
) -> None:
    redis_store = store(redis_url, f"{prefix}-s")
    source = await started(
        composites, [LabelScheduleSource(broker), redis_store], redis_url=redis_url, prefix=prefix
    )
    tick = broker.find_task("app:tick")
    assert tick is not None
    copy = await tick.kicker().schedule_by_cron(redis_store, CRON, 2)  # a start-up's copy
    [merged] = [s for s in await source.get_schedules() if s.cron]
    assert len(source.schedules[merged.schedule_id].origins) == 2
    for schedule_id in (merged.schedule_id, copy.schedule_id):
        with pytest.raises(ScheduleInCodeError):
            await source.delete_schedule(schedule_id)
    assert [s.schedule_id for s in await redis_store.get_schedules()] == [copy.schedule_id]
    assert merged.schedule_id in source.schedules


async def test_sending_without_a_claim_still_runs_the_firing_once(
    broker: InMemoryBroker,
    own_redis: RedisServer,
    redis: Redis,
    prefix: str,
    composites: list[CompositeScheduleSource],
) -> None:
    """Two schedulers whose claim Redis is down both send; the workers run it once."""
    senders = [
        await started(
            composites,
            [LabelScheduleSource(broker)],
            redis_url=own_redis.url,
            prefix=prefix,
            on_claim_error="send",
            claim_retry_window=0.2,
        )
        for _ in range(2)
    ]
    firings = [next(iter(await s.get_schedules())) for s in senders]
    own_redis.kill()
    for sender, firing in zip(senders, firings, strict=True):
        await sender.pre_send(firing)  # sent without a claim: no exception
        assert sender.stats.sent_without_claim == 1
    assert firings[0].labels == firings[1].labels  # one firing, named alike
    assert firings[0].labels["schedule_id"] == schedule_id_for(firings[0])
    worker = DedupMiddleware(redis=redis, prefix=prefix)
    first, second = message_of(firings[0], "t-1"), message_of(firings[1], "t-2")
    assert await worker.pre_execute(first) is first
    await worker.post_execute(first, None)  # type: ignore[arg-type]
    assert skip.is_skip(await worker.pre_execute(second))
    assert worker.stats == DedupStats(executed=1, dropped_done=1)
