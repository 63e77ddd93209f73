"""taskiq's own scheduler loop inside a web worker (``EMBEDDED_SCHEDULER=1``).

Many apps start a scheduler in the web process' start-up, so ``uvicorn
--workers 4`` runs four of them. This runs the stock ``SchedulerLoop`` - the
loop ``taskiq scheduler`` runs - as a background task of the lifespan. With
taskiq-dedup each firing is still sent once; as shipped, each worker sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from datetime import timedelta
from typing import TYPE_CHECKING

from taskiq.cli.scheduler.run import SchedulerLoop

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from taskiq import TaskiqScheduler

logger = logging.getLogger(__name__)

UPDATE_INTERVAL = timedelta(seconds=10)
"""How often the loop re-reads the sources: schedules added through the API
start firing within this long (``taskiq scheduler --update-interval`` alike)."""

SKIP_FIRST_RUN = True
"""As ``taskiq scheduler --skip-first-run``. Without it taskiq fires each cron
schedule at start-up (its minute matches) and from then on at that second of
every minute - a loop started at :18 fires at :18, not at :00."""


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Embedded scheduler stopped", exc_info=task.exception())


@contextlib.asynccontextmanager
async def embedded_scheduler(scheduler: TaskiqScheduler) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``scheduler``'s loop while the block runs; cancel it when it ends.

    The scheduler's sources and broker must be started (the lifespan does it).
    """
    loop = SchedulerLoop(scheduler)
    task = asyncio.create_task(
        loop.run(update_interval=UPDATE_INTERVAL, skip_first_run=SKIP_FIRST_RUN),
        name="embedded-scheduler",
    )
    task.add_done_callback(_report_crash)
    logger.info("Embedded scheduler started in web worker %d", os.getpid())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task  # a crash was logged when it happened
        logger.info("Embedded scheduler stopped in web worker %d", os.getpid())
