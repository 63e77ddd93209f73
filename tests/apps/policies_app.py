"""A worker and scheduler app for the policies' multi-process tests, configured by the environment.

``REDIS_URL`` and ``DEDUP_PREFIX`` pick the server and key space (queue and records
live under the prefix too). The schedules, all through one ``CompositeScheduleSource``:

- ``OVERLAP`` set (``skip``, ``buffer_one``, ``allow``): ``busy`` every second with
  that ``dedup_overlap``, running ``BUSY_SECONDS`` (4); each run appends
  ``{"slot", "start", "end", "pid"}`` as JSON to ``<prefix>:runs``.
- ``CATCH_UP`` set (seconds): ``report`` every minute twice, pinned ``latest`` (only
  the latest missed slot) and ``all`` (``dedup_catch_up_all``); each run appends
  ``{"kind", "slot"}`` to ``<prefix>:reports``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Annotated, Any

from redis.asyncio import Redis
from taskiq import Context, TaskiqDepends, TaskiqScheduler
from taskiq.schedule_sources import LabelScheduleSource
from taskiq_redis import ListQueueBroker

from taskiq_dedup import CompositeScheduleSource, DedupMiddleware

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:1/0")
PREFIX = os.environ.get("DEDUP_PREFIX", "policies-app")
OVERLAP = os.environ.get("OVERLAP")
BUSY_SECONDS = float(os.environ.get("BUSY_SECONDS", "4"))
CATCH_UP = os.environ.get("CATCH_UP")

broker = ListQueueBroker(REDIS_URL, queue_name=f"{PREFIX}:queue").with_middlewares(
    DedupMiddleware(redis_url=REDIS_URL, prefix=PREFIX),
)
_recorder: Redis | None = None


def recorder() -> Redis:
    """One client per process for the records."""
    global _recorder  # noqa: PLW0603
    if _recorder is None:
        _recorder = Redis.from_url(REDIS_URL)
    return _recorder


def _slot(context: Context) -> int:
    return int(str(context.message.labels["dedup_slot"]))


busy_schedule = [{"interval": 1, "labels": {"dedup_overlap": OVERLAP}}] if OVERLAP else []


@broker.task(task_name="busy", schedule=busy_schedule)
async def busy(context: Annotated[Context, TaskiqDepends()]) -> None:
    """Work ``BUSY_SECONDS``, then record when this run started and ended."""
    start = time.time()
    await asyncio.sleep(BUSY_SECONDS)
    record = {"slot": _slot(context), "start": start, "end": time.time(), "pid": os.getpid()}
    await recorder().rpush(f"{PREFIX}:runs", json.dumps(record))


def _report(kind: str, **labels: Any) -> dict[str, Any]:
    return {
        "cron": "* * * * *",
        "args": [kind],
        "labels": {"dedup_id": kind, "dedup_catch_up": CATCH_UP, **labels},
    }


report_schedule = [_report("latest"), _report("all", dedup_catch_up_all=True)] if CATCH_UP else []


@broker.task(task_name="report", schedule=report_schedule)
async def report(kind: str, context: Annotated[Context, TaskiqDepends()]) -> None:
    """Record which schedule ran for which slot."""
    record = {"kind": kind, "slot": _slot(context)}
    await recorder().rpush(f"{PREFIX}:reports", json.dumps(record))


composite = CompositeScheduleSource(
    [LabelScheduleSource(broker)], redis_url=REDIS_URL, prefix=PREFIX
)
scheduler = TaskiqScheduler(broker, sources=[composite])
