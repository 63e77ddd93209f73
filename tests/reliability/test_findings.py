"""Behaviour of the package found while writing the fault runs.

Each names the fault, what used to happen and what should. They were strict xfails
while the bugs were open and are regression tests now.
"""

from __future__ import annotations

import logging

import pytest
from taskiq import InMemoryBroker, ScheduledTask, ScheduleSource
from taskiq.message import TaskiqMessage
from taskiq.schedule_sources import LabelScheduleSource

from taskiq_dedup import CompositeScheduleSource, DedupMiddleware
from taskiq_dedup.labels import SCHEDULE_ID_LABEL, SLOT_LABEL
from taskiq_dedup.skip import is_skip
from tests.reliability.proxy import LatencyProxy
from tests.support.redis_server import RedisServer


class StaticSource(ScheduleSource):
    def __init__(self, tasks: list[ScheduledTask]) -> None:
        self.tasks = tasks

    async def get_schedules(self) -> list[ScheduledTask]:
        return list(self.tasks)


def every(seconds: int, name: str) -> ScheduledTask:
    return ScheduledTask(task_name="t", labels={}, args=[name], kwargs={}, interval=seconds)


async def test_a_claim_whose_reply_was_lost_is_still_won(
    proxy: LatencyProxy, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = CompositeScheduleSource(
        [StaticSource([every(60, "a"), every(60, "b")])], redis_url=proxy.url, prefix=prefix
    )
    await source.startup()
    try:
        first, second = await source.refresh()
        await source.pre_send(source.schedules[first].task.model_copy())  # script loaded
        proxy.drop_next_reply()
        with caplog.at_level(logging.INFO, logger="taskiq_dedup"):
            await source.pre_send(source.schedules[second].task.model_copy())
    finally:
        await source.shutdown()
    assert source.stats.claimed == 2, caplog.text


def scheduled_message(slot: int) -> TaskiqMessage:
    labels = {SCHEDULE_ID_LABEL: "nightly", SLOT_LABEL: str(slot)}
    return TaskiqMessage(
        task_id=f"nightly-{slot}", task_name="t", labels=labels, args=[], kwargs={}
    )


async def test_the_first_claim_after_a_redis_restart_succeeds(
    own_redis: RedisServer, prefix: str
) -> None:
    middleware = DedupMiddleware(redis_url=own_redis.url, prefix=prefix)
    try:
        before = scheduled_message(60)
        assert not is_skip(await middleware.pre_execute(before))
        own_redis.restart()
        after = await middleware.pre_execute(scheduled_message(120))
    finally:
        await middleware.shutdown()
    assert not is_skip(after), after.labels


async def test_a_label_source_does_not_warn_about_the_skip_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fixed (skip.register): the skip task lived on taskiq's shared broker, so every
    ``LabelScheduleSource.startup`` warned "Broker for taskiq_dedup:skip ... doesn't match"."""
    broker = InMemoryBroker().with_middlewares(
        DedupMiddleware(redis_url="redis://127.0.0.1:1/0", prefix="p")
    )

    @broker.task(task_name="t", schedule=[{"cron": "* * * * *"}])
    async def task() -> None: ...

    with caplog.at_level(logging.WARNING):
        source = LabelScheduleSource(broker)
        await source.startup()
    assert len(await source.get_schedules()) == 1
    assert "taskiq_dedup:skip" not in caplog.text
