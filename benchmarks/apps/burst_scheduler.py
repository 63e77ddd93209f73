"""One scheduler process of the burst benchmark: taskiq's loop, one tick, a set clock.

``python -m benchmarks.apps.burst_scheduler`` reads its configuration from the
environment: ``REDIS_URL``; ``ARM`` (``bare``: taskiq as shipped, the
``ListRedisScheduleSource`` alone; ``dedup``: that source inside a
``CompositeScheduleSource``, and ``DedupMiddleware`` on the broker, as the
README sets them up; ``split``: the source inside ``apps.split.SplitSource``, partition
``SPLIT_INDEX`` of ``SPLIT_OF``, no claims); ``SCHEDULES_PREFIX``; ``QUEUE``; ``CLAIMS_PREFIX``;
``RUN_KEY`` (the lists ``<RUN_KEY>:ready``, ``:go`` and ``:results``) and
``BOUNDARY`` (epoch seconds of the minute being fired).

It starts like ``taskiq scheduler`` (sources, then the scheduler), fetches its
schedules with taskiq's ``get_all_schedules``, reports ready, and waits for the
go time. Then it runs one tick of ``SchedulerLoop.run`` - the same calls:
``_is_schedule_ready_to_send`` for each schedule, one ``send`` task each for
the due ones - at ``now = BOUNDARY``, with the composite's clock reading
``BOUNDARY`` plus the real time elapsed since go. It waits for every send to
finish and pushes its figures to ``<RUN_KEY>:results``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from redis.asyncio import Redis
from taskiq import ScheduleSource, TaskiqMessage, TaskiqMiddleware, TaskiqScheduler
from taskiq.cli.scheduler.run import SchedulerLoop, get_all_schedules, send
from taskiq_redis import ListQueueBroker

from benchmarks.apps.split import SplitSource
from benchmarks.schedules import redis_source
from taskiq_dedup import CompositeScheduleSource, DedupMiddleware

READY_TIMEOUT = 120


class KickClock(TaskiqMiddleware):
    """First in the broker's list: notes when the broker took this process's last message."""

    def __init__(self) -> None:
        super().__init__()
        self.kicks = 0
        self.last = 0.0

    def post_send(self, message: TaskiqMessage) -> None:
        """Note the time (before a later middleware's confirm)."""
        self.kicks += 1
        self.last = time.time()


def _config() -> dict[str, str]:
    names = (
        "REDIS_URL",
        "ARM",
        "SCHEDULES_PREFIX",
        "QUEUE",
        "CLAIMS_PREFIX",
        "RUN_KEY",
        "BOUNDARY",
    )
    return {name: os.environ[name] for name in names}


async def main() -> None:
    """Start, fetch, wait for go, fire one tick, report."""
    config = _config()
    url = config["REDIS_URL"]
    boundary = datetime.fromtimestamp(int(config["BOUNDARY"]), tz=timezone.utc)
    go = [0.0]

    def clock() -> datetime:
        return boundary + timedelta(seconds=max(0.0, time.time() - go[0]))

    kick_clock = KickClock()
    broker = ListQueueBroker(url, queue_name=config["QUEUE"]).with_middlewares(kick_clock)
    child = redis_source(url, config["SCHEDULES_PREFIX"])
    source: ScheduleSource = child
    composite: CompositeScheduleSource | None = None
    if config["ARM"] == "dedup":
        broker = broker.with_middlewares(
            DedupMiddleware(redis_url=url, prefix=config["CLAIMS_PREFIX"])
        )
        composite = CompositeScheduleSource(
            [child], redis_url=url, prefix=config["CLAIMS_PREFIX"], clock=clock
        )
        source = composite
    elif config["ARM"] == "split":
        source = SplitSource(child, int(os.environ["SPLIT_INDEX"]), int(os.environ["SPLIT_OF"]))
    scheduler = TaskiqScheduler(broker, sources=[source])
    await source.startup()
    await scheduler.startup()
    control = Redis.from_url(url, socket_timeout=None)  # blocks on BLPOP
    try:
        loop = SchedulerLoop(scheduler)
        loop.scheduled_tasks = await get_all_schedules(scheduler)
        fetched = sum(len(tasks) for _, tasks in loop.scheduled_tasks)
        await control.rpush(f"{config['RUN_KEY']}:ready", os.getpid())
        reply = await control.blpop([f"{config['RUN_KEY']}:go"], timeout=READY_TIMEOUT)
        if reply is None:
            raise TimeoutError("no go signal")
        go[0] = float(reply[1])
        await asyncio.sleep(max(0.0, go[0] - time.time()))
        started = time.time()
        cpu_started = time.process_time()
        # The body of SchedulerLoop.run for one tick, at the minute boundary.
        running: dict[str, asyncio.Task[Any]] = {}
        for tick_source, task_list in loop.scheduled_tasks:
            for task in task_list:
                due = loop._is_schedule_ready_to_send(task=task, now=boundary)
                if due and task.schedule_id not in running:
                    running[task.schedule_id] = asyncio.create_task(
                        send(scheduler, tick_source, task)
                    )
        outcomes = await asyncio.gather(*running.values(), return_exceptions=True)
        finished = time.time()
        cpu = time.process_time() - cpu_started
        stats = composite.stats if composite is not None else None
        report = {
            "pid": os.getpid(),
            "fetched": fetched,
            "due": len(running),
            "send_errors": sum(isinstance(o, BaseException) for o in outcomes),
            "send_error_sample": next(
                (f"{o!r} from {o.__cause__!r}" for o in outcomes if isinstance(o, BaseException)),
                None,
            ),
            "go": go[0],
            "started": started,
            "finished": finished,
            "cpu_s": cpu,
            "kicks": kick_clock.kicks,
            "last_kick": kick_clock.last,
            "claimed": stats.claimed if stats else None,
            "duplicates_cancelled": stats.duplicates_cancelled if stats else None,
            "claim_errors": stats.claim_errors if stats else None,
            "takeovers": stats.takeovers if stats else None,
            "waits_given_up": stats.waits_given_up if stats else None,
            "lease_renewals": composite.firings.stats.renewals if composite else None,
        }
        await control.rpush(f"{config['RUN_KEY']}:results", json.dumps(report))
    finally:
        await control.aclose()
        await scheduler.shutdown()
        await source.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
