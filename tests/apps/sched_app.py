"""A scheduler app for multi-process tests, configured by the environment.

``REDIS_URL`` and ``DEDUP_PREFIX`` pick the server and environment; the claims
go to ``DEDUP_REDIS_URL`` if set (a Sentinel or Cluster URL), with
``DEDUP_MIN_REPLICAS`` (default 0); ``METRICS_PORT`` serves the scheduler's metrics;
``WORKER_GUARD=1`` adds ``DedupMiddleware`` to the broker (its run records feed the
firing ledger); ``DEDUP_OFF=1``
builds taskiq as shipped (plain sources) for comparison. Every execution is
appended to the Redis list ``<prefix>:executions`` as JSON.

``python -m tests.apps.sched_app register`` is one web-worker start-up: it
registers schedules the way FastAPI-template's lifespan does.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Annotated

from redis.asyncio import Redis
from taskiq import Context, ScheduleSource, TaskiqDepends, TaskiqScheduler
from taskiq.schedule_sources import LabelScheduleSource
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListQueueBroker, ListRedisScheduleSource

from taskiq_dedup import CompositeScheduleSource, DedupMiddleware

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:1/0")
PREFIX = os.environ.get("DEDUP_PREFIX", "sched-app")
DEDUP_OFF = os.environ.get("DEDUP_OFF") == "1"
ONE_OFF_AT = os.environ.get("ONE_OFF_AT")
DEDUP_REDIS_URL = os.environ.get("DEDUP_REDIS_URL") or REDIS_URL
MIN_REPLICAS = int(os.environ.get("DEDUP_MIN_REPLICAS", "0"))

broker = ListQueueBroker(REDIS_URL, queue_name=f"{PREFIX}:queue")
if os.environ.get("WORKER_GUARD") == "1":
    broker.add_middlewares(DedupMiddleware(redis_url=REDIS_URL, prefix=PREFIX))
label_source = LabelScheduleSource(broker)
redis_source = ListRedisScheduleSource(
    REDIS_URL,
    prefix=PREFIX.replace(":", "-") + "-schedules",
    serializer=JSONSerializer(),
)
METRICS_PORT = os.environ.get("METRICS_PORT")
composite = CompositeScheduleSource(
    [label_source, redis_source],
    redis_url=DEDUP_REDIS_URL,
    prefix=PREFIX,
    min_replicas=MIN_REPLICAS,
    metrics_port=int(METRICS_PORT) if METRICS_PORT else None,
)
sources: list[ScheduleSource] = [label_source, redis_source] if DEDUP_OFF else [composite]
scheduler = TaskiqScheduler(broker, sources=sources)

_recorder: Redis | None = None


@broker.task(
    task_name="tick",
    schedule=[{"interval": 2, "args": ["interval"]}, {"cron": "* * * * *", "args": ["cron"]}],
)
async def tick(kind: str, context: Annotated[Context, TaskiqDepends()]) -> None:
    """Record one execution."""
    global _recorder  # noqa: PLW0603 -- one client per worker process
    if _recorder is None:
        _recorder = Redis.from_url(REDIS_URL)
    labels = context.message.labels
    record = {
        "kind": kind,
        "schedule_id": labels.get("schedule_id"),
        "slot": labels.get("dedup_slot"),
        "at": time.time(),
        "pid": os.getpid(),
    }
    await _recorder.rpush(f"{PREFIX}:executions", json.dumps(record))


async def register() -> None:
    """One start-up: register through the composite and, as legacy code did, directly."""
    await broker.startup()
    target: ScheduleSource = redis_source if DEDUP_OFF else composite
    await target.startup()
    await tick.kicker().schedule_by_interval(target, 3, "dyn")
    await tick.kicker().schedule_by_cron(target, "* * * * *", "cron")  # equal to the label
    if not DEDUP_OFF:
        # Legacy start-up code writing straight into the child, with random ids:
        await tick.kicker().schedule_by_interval(redis_source, 2, "interval")
    if ONE_OFF_AT:
        at = datetime.fromtimestamp(float(ONE_OFF_AT), tz=timezone.utc)
        await tick.kicker().schedule_by_time(target, at, "one-off")
    await target.shutdown()
    await broker.shutdown()


def one_off_time(seconds_from_now: float) -> str:
    """Value for ONE_OFF_AT."""
    return str((datetime.now(tz=timezone.utc) + timedelta(seconds=seconds_from_now)).timestamp())


if __name__ == "__main__" and sys.argv[1:] == ["register"]:
    asyncio.run(register())
