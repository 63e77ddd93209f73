"""The scheduler app of the lateness benchmark, run by the stock ``taskiq scheduler``.

Configured by the environment: ``REDIS_URL``; ``ARM`` (``bare``: taskiq as
shipped, a ``LabelScheduleSource``; ``dedup``: the same source inside a
``CompositeScheduleSource`` and ``DedupMiddleware`` on the broker, as the
README sets them up; ``split``: the source inside ``apps.split.SplitSource``,
partition ``SPLIT_INDEX`` of ``SPLIT_OF``, no claims); ``PREFIX`` (queue and
claims); ``SCHEDULES`` (how many ``interval=1`` schedules ``tick`` declares) and
``RECORD_FILE``.

``Recorder``, the last middleware in both arms, appends the wall time at which
each message's ``kick`` returned (its ``post_send``) to ``RECORD_FILE``: kept
in memory and written every ``FLUSH_EVERY`` records (one small local write per
half tick, no network I/O) and at shutdown.

SIGINT and SIGTERM cancel the scheduler's main task, so it shuts down cleanly
(and the last records are written) even when started from a background job,
which inherits SIGINT ignored and so would never see a ``KeyboardInterrupt``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from taskiq import ScheduleSource, TaskiqMessage, TaskiqScheduler
from taskiq.abc.middleware import TaskiqMiddleware
from taskiq.schedule_sources import LabelScheduleSource
from taskiq_redis import ListQueueBroker

from benchmarks.apps.split import SplitSource
from taskiq_dedup import CompositeScheduleSource, DedupMiddleware
from taskiq_dedup.labels import SLOT_LABEL

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:1/0")
ARM = os.environ.get("ARM", "bare")
PREFIX = os.environ.get("PREFIX", "bench-lateness")
SCHEDULES = int(os.environ.get("SCHEDULES", "100"))
RECORD_FILE = os.environ.get("RECORD_FILE", "lateness.txt")
FLUSH_EVERY = 50


class Recorder(TaskiqMiddleware):
    """Keeps ``(enqueued at, slot label)`` of every sent message; writes them at shutdown."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = Path(path)
        self.records: list[str] = []

    def post_send(self, message: TaskiqMessage) -> None:
        """Note the time the broker took the message (the slot, if it has one)."""
        self.records.append(f"{time.time():.6f} {message.labels.get(SLOT_LABEL, '-')}")
        if len(self.records) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Append the records noted so far to the file."""
        with self.path.open("a") as out:
            out.write("".join(f"{line}\n" for line in self.records))
        self.records.clear()

    async def shutdown(self) -> None:
        """Write the last records out (the scheduler stops on SIGINT)."""
        self.flush()


middlewares: list[TaskiqMiddleware] = []
if ARM == "dedup":
    middlewares.append(DedupMiddleware(redis_url=REDIS_URL, prefix=PREFIX))
middlewares.append(Recorder(RECORD_FILE))
broker = ListQueueBroker(REDIS_URL, queue_name=f"{PREFIX}:queue").with_middlewares(*middlewares)


@broker.task(
    task_name="bench:tick",
    schedule=[{"interval": 1, "args": [index]} for index in range(SCHEDULES)],
)
async def tick(index: int) -> Any:  # noqa: ANN401 -- never run: only enqueued
    """A schedule per index, every second."""
    return index


label_source = LabelScheduleSource(broker)
source: ScheduleSource = label_source
if ARM == "dedup":
    source = CompositeScheduleSource([label_source], redis_url=REDIS_URL, prefix=PREFIX)
elif ARM == "split":
    source = SplitSource(label_source, int(os.environ["SPLIT_INDEX"]), int(os.environ["SPLIT_OF"]))
scheduler = TaskiqScheduler(broker, sources=[source])


def _stop_on_signals() -> None:
    """Cancel the running ``taskiq scheduler`` task on SIGINT/SIGTERM: its clean exit."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # imported outside the scheduler (e.g. by a linter)
        return
    main = asyncio.current_task()
    if main is not None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, main.cancel)


_stop_on_signals()  # taskiq imports this module inside its running event loop
