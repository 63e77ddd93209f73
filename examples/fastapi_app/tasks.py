"""The example's tasks: two with schedules in their decorators, one registered at start-up.

Each run appends an ``Execution`` to the environment's execution list, so the
API and the demo can count how often each firing ran.
"""

from __future__ import annotations

import os
import time

from redis.asyncio import Redis
from taskiq import Context, TaskiqDepends, TaskiqEvents, TaskiqState

from examples.fastapi_app import executions
from examples.fastapi_app.tkq import broker, keys, settings
from taskiq_dedup.labels import SCHEDULE_ID_LABEL, SLOT_LABEL, parse_slot

TICK_INTERVAL = 3
"""Seconds between ticks: short, so a demo of a minute sees many firings."""

EVERY_MINUTE = "* * * * *"

CATCH_UP_WINDOW = 600
"""Seconds back a starting scheduler looks for a missed report (the latest is sent)."""


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def open_redis(state: TaskiqState) -> None:
    """Give the worker one client for the execution list."""
    state.redis = Redis.from_url(settings.redis_url)


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def close_redis(state: TaskiqState) -> None:
    """Close the worker's client."""
    await state.redis.aclose()


async def record_execution(context: Context) -> None:
    """Append this run, with the firing's schedule id and slot, to the list."""
    message = context.message
    schedule_id = message.labels.get(SCHEDULE_ID_LABEL)
    execution = executions.Execution(
        task=message.task_name,
        schedule_id=None if schedule_id is None else str(schedule_id),
        slot=parse_slot(message.labels.get(SLOT_LABEL)),
        task_id=message.task_id,
        pid=os.getpid(),
        at=time.time(),
    )
    await executions.record(context.state.redis, executions.executions_key(keys), execution)


@broker.task(
    task_name="example:tick",
    schedule=[{"interval": TICK_INTERVAL, "labels": {"dedup_overlap": "skip"}}],
)
async def tick(context: Context = TaskiqDepends()) -> None:
    """Every few seconds (an interval schedule in the decorator).

    ``dedup_overlap: skip``: a tick is not run while the previous one still runs
    on any worker (docs/POLICIES.md).
    """
    await record_execution(context)


@broker.task(
    task_name="example:report",
    schedule=[{"cron": EVERY_MINUTE, "labels": {"dedup_catch_up": CATCH_UP_WINDOW}}],
)
async def report(context: Context = TaskiqDepends()) -> None:
    """Every minute (a cron schedule in the decorator).

    ``dedup_catch_up``: a scheduler starting after an outage sends the latest
    minute missed within the window, once across replicas (docs/POLICIES.md).
    """
    await record_execution(context)


@broker.task(task_name="example:digest")
async def digest(context: Context = TaskiqDepends()) -> None:
    """Every minute, scheduled by each web worker's start-up (see ``lifespan``)."""
    await record_execution(context)
