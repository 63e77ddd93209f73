"""Start-up and shut-down of the web app (FastAPI-template's ``lifetime.py``, as a lifespan)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from examples.fastapi_app import tkq
from examples.fastapi_app.settings import Settings, configure_logging
from examples.fastapi_app.tasks import EVERY_MINUTE, digest
from taskiq_dedup.embedded import embedded_scheduler

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi import FastAPI
    from taskiq import AsyncBroker

    from taskiq_dedup import CompositeScheduleSource, KeySpace

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT = 2.0
"""Seconds ``GET /health`` waits for Redis before reporting it unreachable."""


@dataclass(frozen=True)
class AppState:
    """What the endpoints use, kept on ``app.state.example``."""

    settings: Settings
    keys: KeySpace
    broker: AsyncBroker
    composite: CompositeScheduleSource
    schedules_prefix: str
    """The ``ListRedisScheduleSource``'s prefix."""
    redis: Redis


async def register_schedules() -> None:
    """Register the dynamic schedule, at every start-up, as FastAPI-template does.

    As shipped this adds one more copy to Redis per web worker and restart, each
    fired by every scheduler. Through the composite source the schedule is
    stored once, under its deterministic id, however many workers start at once.
    """
    created = await digest.kicker().schedule_by_cron(tkq.schedule_source, EVERY_MINUTE)
    logger.info(
        "Start-up registered schedule %s of %s via %s",
        created.schedule_id,
        digest.task_name,
        type(tkq.schedule_source).__name__,
    )


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the broker and the sources, register schedules, maybe run a scheduler."""
    configure_logging()
    logger.info("Example app starting: %s", tkq.settings.describe())
    redis = Redis.from_url(
        tkq.settings.redis_url,
        socket_connect_timeout=HEALTH_TIMEOUT,
        socket_timeout=HEALTH_TIMEOUT,
    )
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(redis.aclose)
        if not tkq.broker.is_worker_process:
            await tkq.broker.startup()
            stack.push_async_callback(tkq.broker.shutdown)
        if tkq.settings.embedded_scheduler:
            # Starts the scheduler's sources (the composite, or its children as
            # shipped) and runs taskiq's loop; registrations below are picked up
            # within its 10 s update interval.
            await stack.enter_async_context(embedded_scheduler(tkq.scheduler))
            if tkq.composite not in tkq.scheduler.sources:  # as shipped: only the API uses it
                stack.push_async_callback(tkq.composite.redis.aclose)
        else:
            await tkq.composite.startup()  # starts the label and the Redis source
            stack.push_async_callback(tkq.composite.shutdown)
        await register_schedules()
        app.state.example = AppState(
            settings=tkq.settings,
            keys=tkq.keys,
            broker=tkq.broker,
            composite=tkq.composite,
            schedules_prefix=tkq.schedules_prefix,
            redis=redis,
        )
        yield
