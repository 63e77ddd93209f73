"""Many schedules, made the way applications make them, for the benchmarks."""

from __future__ import annotations

import uuid
from typing import Any

from redis.asyncio import Redis
from taskiq import ScheduledTask
from taskiq.schedule_sources import LabelScheduleSource
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListQueueBroker, ListRedisScheduleSource

TASK_NAME = "bench:report"
CRONS = ("* * * * *", "*/5 * * * *", "0 * * * *", "30 2 * * *")
FILL_BATCH = 1000


async def report(index: int, *, region: str = "eu") -> None:
    """The scheduled task (never run by the scheduler benchmarks: only enqueued)."""


def schedule_entry(index: int, *, cron: str | None = None) -> dict[str, Any]:
    """The ``schedule`` label entry of schedule ``index``: cron (4 in 5) or interval."""
    entry: dict[str, Any] = {"args": [index], "kwargs": {"region": "eu"}}
    if cron is not None:
        entry["cron"] = cron
    elif index % 5 == 4:
        entry["interval"] = 60 + index % 7
    else:
        entry["cron"] = CRONS[index % len(CRONS)]
    return entry


def scheduled_task(index: int, *, cron: str | None = None) -> ScheduledTask:
    """Schedule ``index`` as a ``ScheduledTask`` with its own (random) child id."""
    entry = schedule_entry(index, cron=cron)
    return ScheduledTask(
        task_name=TASK_NAME,
        labels={},
        schedule_id=uuid.uuid4().hex,
        args=entry["args"],
        kwargs=entry["kwargs"],
        cron=entry.get("cron"),
        interval=entry.get("interval"),
    )


async def label_source(url: str, indexes: range, *, cron: str | None = None) -> LabelScheduleSource:
    """A started ``LabelScheduleSource`` declaring schedules ``indexes`` on one task."""
    broker = ListQueueBroker(url, queue_name=f"bench-{uuid.uuid4().hex[:8]}:unused")
    broker.register_task(
        report,
        task_name=TASK_NAME,
        schedule=[schedule_entry(i, cron=cron) for i in indexes],
    )
    source = LabelScheduleSource(broker)
    await source.startup()
    return source


def redis_source(url: str, prefix: str) -> ListRedisScheduleSource:
    """A ``ListRedisScheduleSource`` with JSON, as the README configures it.

    ``skip_past_schedules=True`` leaves out its scan for past one-offs (it has
    none here), so its own fetch is as cheap as it gets: the stricter baseline.
    """
    return ListRedisScheduleSource(
        url, prefix=prefix, serializer=JSONSerializer(), skip_past_schedules=True
    )


async def fill_redis_source(url: str, prefix: str, tasks: list[ScheduledTask]) -> None:
    """Write ``tasks`` as ``ListRedisScheduleSource.add_schedule`` does, pipelined."""
    source = redis_source(url, prefix)
    serializer = JSONSerializer()
    async with Redis.from_url(url) as client:
        for start in range(0, len(tasks), FILL_BATCH):
            async with client.pipeline(transaction=False) as pipe:
                for task in tasks[start : start + FILL_BATCH]:
                    pipe.set(
                        source._get_data_key(task.schedule_id),
                        serializer.dumpb(task.model_dump(mode="json")),
                    )
                    kind = (
                        source._get_cron_key()
                        if task.cron is not None
                        else source._get_interval_key()
                    )
                    pipe.rpush(kind, task.schedule_id)
                await pipe.execute()
    await source.shutdown()
