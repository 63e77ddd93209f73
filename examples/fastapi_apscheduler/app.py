"""FastAPI + APScheduler under ``uvicorn --workers N``: each run once, one line changed.

Every worker starts the same ``AsyncIOScheduler`` in its lifespan. As shipped,
each of them runs every job; with ``DedupExecutor`` as the default executor, one
of them runs each run. Settings come from the environment:

- ``REDIS_URL``, ``DEDUP_PREFIX`` (one per environment);
- ``DEDUP=off``: APScheduler as shipped, to see the duplicates;
- ``REPORT_EVERY`` (seconds, default 10), ``DIGEST_SECOND`` (the cron's second
  field, default ``0``: once a minute), ``ANNOUNCE_AT`` (ISO time of a one-off
  date job; none by default).

Every run is appended to the Redis list ``<prefix>:example:runs`` (job id,
scheduled run time, worker pid): ``redis-cli lrange <that key> 0 -1`` shows one
line per run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fastapi import FastAPI
from redis import Redis

from taskiq_dedup.apscheduler import DedupExecutor
from taskiq_dedup.keys import KeySpace

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("DEDUP_PREFIX", "taskiq-dedup:example")
DEDUP = os.environ.get("DEDUP", "on") != "off"
REPORT_EVERY = int(os.environ.get("REPORT_EVERY", "10"))
DIGEST_SECOND = os.environ.get("DIGEST_SECOND", "0")
ANNOUNCE_AT = os.environ.get("ANNOUNCE_AT")

KEYS = KeySpace(PREFIX)
RUNS = KEYS.key("example", "runs")
STARTED = KEYS.key("example", "started")

logger = logging.getLogger("example")
redis = Redis.from_url(REDIS_URL)
names: dict[str, str] = {}
"""Job id -> function name: jobs added without an id have a different id in each worker."""


def report() -> None:
    """Log a report (a sync job: APScheduler runs it in the loop's thread pool)."""
    logger.info("report in worker %d", os.getpid())


async def digest() -> None:
    """Log a digest (an async job: it runs on the worker's event loop)."""
    await asyncio.sleep(0)
    logger.info("digest in worker %d", os.getpid())


def announce(text: str) -> None:
    """Log ``text`` once (a date job)."""
    logger.info("announce %r in worker %d", text, os.getpid())


def record(event: JobExecutionEvent) -> None:
    """Append one run to the list the demo and the tests count (one RPUSH, sub-millisecond)."""
    run = {
        "job": names.get(event.job_id, event.job_id),
        "at": event.scheduled_run_time.timestamp(),
        "pid": os.getpid(),
        "failed": event.code == EVENT_JOB_ERROR,
    }
    redis.rpush(RUNS, json.dumps(run))


def make_scheduler() -> AsyncIOScheduler:
    """Build the scheduler every worker starts; ``DedupExecutor`` is the one changed line."""
    executor = DedupExecutor(redis_url=REDIS_URL, prefix=PREFIX) if DEDUP else AsyncIOExecutor()
    scheduler = AsyncIOScheduler(executors={"default": executor}, timezone=timezone.utc)
    # no id: each worker draws its own, and DedupExecutor still sees one job
    jobs = [
        scheduler.add_job(report, "interval", seconds=REPORT_EVERY),
        scheduler.add_job(digest, "cron", second=DIGEST_SECOND, id="digest", replace_existing=True),
    ]
    if ANNOUNCE_AT:
        at = datetime.fromisoformat(ANNOUNCE_AT)
        jobs.append(scheduler.add_job(announce, "date", run_date=at, args=["hello"]))
    names.update((job.id, job.name) for job in jobs)
    scheduler.add_listener(record, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    return scheduler


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """Start the scheduler with the worker, stop it with the worker."""
    scheduler = make_scheduler()
    scheduler.start()
    redis.rpush(STARTED, os.getpid())
    try:
        yield
    finally:
        scheduler.shutdown()


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, object]:
    """Whether deduplication is on, and this worker's pid."""
    return {"dedup": DEDUP, "pid": os.getpid()}
