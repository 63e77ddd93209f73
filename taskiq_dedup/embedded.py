"""``embedded_scheduler``: taskiq's scheduler loop inside a web worker's lifespan.

Many apps run the scheduler in the web process, so ``uvicorn --workers 4`` runs
four; with a ``CompositeScheduleSource`` each firing is still sent once. Use::

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await broker.startup()
        async with embedded_scheduler(scheduler):
            await report.kicker().schedule_by_cron(source, "*/5 * * * *")
            yield
        await broker.shutdown()

On entry the scheduler's sources are started (so schedules can be registered in
the block) and taskiq's own loop - the one ``taskiq scheduler`` runs - starts as
a background task; on exit the loop is cancelled and the sources are stopped.
Under uvicorn, which configures only its own loggers, this package's INFO lines
(a claim lost to another worker, an invalid schedule) get a stderr handler for
as long as the block runs, unless logging is configured already.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING

from taskiq.cli.scheduler.run import SchedulerLoop

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from taskiq import ScheduleSource, TaskiqScheduler

logger = logging.getLogger(__name__)

PACKAGE_LOGGER = "taskiq_dedup"
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"

UPDATE_INTERVAL = timedelta(seconds=10)
"""How often the loop re-reads the sources, so a schedule registered in the block
or through an API fires within 10 s of being added (``taskiq scheduler``'s default
is 60 s; a fetch of a few hundred schedules costs a millisecond or two)."""


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Embedded scheduler stopped", exc_info=task.exception())


@contextlib.contextmanager
def _visible_logs(level: int) -> Iterator[None]:
    """Give this package's logger a stderr handler if nothing would show its lines."""
    package = logging.getLogger(PACKAGE_LOGGER)
    if logging.getLogger().handlers or package.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    previous = package.level
    package.addHandler(handler)
    if previous == logging.NOTSET or previous > level:
        package.setLevel(level)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(previous)


async def _start_sources(sources: list[ScheduleSource]) -> list[ScheduleSource]:
    started: list[ScheduleSource] = []
    try:
        for source in sources:
            await source.startup()
            started.append(source)
    except BaseException:
        await _stop_sources(started)
        raise
    return started


async def _stop_sources(started: list[ScheduleSource]) -> None:
    for source in reversed(started):
        try:
            await source.shutdown()
        except Exception:
            logger.exception("Schedule source %r failed to shut down", source)


@contextlib.asynccontextmanager
async def embedded_scheduler(
    scheduler: TaskiqScheduler,
    *,
    update_interval: timedelta = UPDATE_INTERVAL,
    skip_first_run: bool = True,
    start_broker: bool = False,
    log_level: int | None = logging.INFO,
) -> AsyncIterator[asyncio.Task[None]]:
    """Start ``scheduler``'s sources and run its loop while the block runs.

    ``skip_first_run`` is ``taskiq scheduler --skip-first-run``: crons fire on the
    minute, not at start-up. ``start_broker`` also starts and stops the broker
    (FastAPI-template's lifespan starts it already). ``log_level``: the level of
    this package's lines when nothing else shows them; ``None`` leaves logging
    alone. Yields the loop's task; a crash of the loop is logged at ERROR.
    """
    with contextlib.ExitStack() as logs:
        if log_level is not None:
            logs.enter_context(_visible_logs(log_level))
        started = await _start_sources(list(scheduler.sources))
        try:
            if start_broker:
                await scheduler.startup()
            task: asyncio.Task[None] = asyncio.create_task(
                SchedulerLoop(scheduler).run(
                    update_interval=update_interval,
                    skip_first_run=skip_first_run,
                ),
                name="taskiq-dedup-embedded-scheduler",
            )
            task.add_done_callback(_report_crash)
            logger.info("Embedded scheduler started in process %d", os.getpid())
            try:
                yield task
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task  # a crash was logged when it happened
                if start_broker:
                    await scheduler.shutdown()
                logger.info("Embedded scheduler stopped in process %d", os.getpid())
        finally:
            await _stop_sources(started)
