"""One INFO line per lost claim; the ListQueueBroker socket-timeout warning."""

from __future__ import annotations

import asyncio
import logging

import pytest
from taskiq import InMemoryBroker, ScheduledTask, ScheduleSource, TaskiqScheduler
from taskiq.cli.scheduler.run import send
from taskiq.exceptions import ScheduledTaskCancelledError
from taskiq.schedule_sources import LabelScheduleSource
from taskiq_redis import ListQueueBroker, RedisStreamBroker

from taskiq_dedup import CompositeScheduleSource, DedupMiddleware
from taskiq_dedup.broker_checks import blocking_pop_timeout
from tests.support.polling import eventually

SCHEDULERS = 3


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_each_losing_scheduler_logs_one_line(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    broker = InMemoryBroker()
    broker.register_task(_job, task_name="app:job", schedule=[{"cron": "* * * * *"}])
    sources = [
        CompositeScheduleSource([LabelScheduleSource(broker)], redis_url=redis_url, prefix=prefix)
        for _ in range(SCHEDULERS)
    ]
    try:
        for source in sources:
            await source.startup()
        schedulers = [TaskiqScheduler(broker, sources=[source]) for source in sources]
        firings = [(await source.get_schedules())[0] for source in sources]
        # As taskiq's loop does: each send is its own asyncio task.
        await asyncio.gather(
            *(
                asyncio.create_task(send(scheduler, source, task))
                for scheduler, source, task in zip(schedulers, sources, firings, strict=True)
            )
        )
    finally:
        for source in sources:
            await source.shutdown()
    # The winner's line, released when its send task is done:
    await eventually(lambda: lines(caplog, "Sending task app:job"), timeout=5)
    assert len(lines(caplog, "Sending task app:job")) == 1
    assert len(lines(caplog, "not sending it again")) == SCHEDULERS - 1  # ours, one each
    assert lines(caplog, "has been cancelled") == []


async def test_other_sources_keep_taskiqs_lines(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    broker = InMemoryBroker()
    composite = CompositeScheduleSource(
        [LabelScheduleSource(broker)], redis_url=redis_url, prefix=prefix
    )
    await composite.startup()  # installs the filter
    try:
        task = ScheduledTask(task_name="app:other", labels={}, args=[], kwargs={}, cron="* * * * *")
        await asyncio.create_task(send(TaskiqScheduler(broker, []), _Refusing(), task))
    finally:
        await composite.shutdown()
    assert len(lines(caplog, "Sending task app:other")) == 1
    assert len(lines(caplog, "Scheduled task app:other has been cancelled")) == 1


async def _job() -> None:
    """A task for the schedule."""


class _Refusing(ScheduleSource):
    """A source that cancels every send, as any source may."""

    async def get_schedules(self) -> list[ScheduledTask]:
        return []

    async def pre_send(self, task: ScheduledTask) -> None:
        raise ScheduledTaskCancelledError


def test_list_queue_broker_timeout_is_found(redis_url: str) -> None:
    assert blocking_pop_timeout(ListQueueBroker(redis_url, socket_timeout=3)) == 3
    assert blocking_pop_timeout(ListQueueBroker(redis_url, socket_timeout=None)) is None
    assert blocking_pop_timeout(RedisStreamBroker(redis_url)) is None  # blocks 2 s at most
    assert blocking_pop_timeout(InMemoryBroker()) is None
    default = ListQueueBroker(redis_url)
    pool = default.connection_pool
    connection_default = pool.connection_class(**pool.connection_kwargs).socket_timeout
    assert blocking_pop_timeout(default) == connection_default  # None before redis-py 8


async def test_worker_warns_once_at_startup(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = ListQueueBroker(redis_url, queue_name=f"{prefix}-q", socket_timeout=4)
    broker.add_middlewares(DedupMiddleware(redis_url=redis_url, prefix=prefix))
    broker.is_worker_process = True
    await broker.startup()
    await broker.shutdown()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "socket_timeout=None" in warnings[0].getMessage()
    assert "4 s" in warnings[0].getMessage()
