"""Merge: ``CompositeScheduleSource.get_schedules`` against its children's own fetch.

N schedules: half declared in task labels (a ``LabelScheduleSource``), half in
a ``ListRedisScheduleSource`` with ``JSONSerializer`` (written with a
pipeline), one in ten of those a copy of a label schedule under another id, as
when start-up code registers what a decorator already declares (so N - N/20
distinct schedules). Four in five are cron schedules, one in five intervals.

- ``children``: each child's ``get_schedules``, run concurrently as the
  composite runs them; what taskiq's scheduler does with the same sources;
- ``composite``: ``CompositeScheduleSource.get_schedules`` over the same two
  children (the fetch plus parsing each trigger, the content id and the merge).

Time is wall time per call. Peak memory is the peak of ``tracemalloc`` above
the memory in use when the call starts, in a separate, untimed pass.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
import uuid
from typing import TYPE_CHECKING

from benchmarks.harness import Config, Goal, Measurement, Result, interleave
from benchmarks.schedules import fill_redis_source, label_source, redis_source, scheduled_task
from benchmarks.servers import flush, private_redis
from taskiq_dedup import CompositeScheduleSource

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from taskiq import ScheduledTask, ScheduleSource

NAME = "merge"
GOAL = 1.5
COPY_EVERY = 10
"""One Redis schedule in ten is a copy of a label schedule."""


def _reps(size: int, config: Config) -> tuple[int, int]:
    """(timed, memory) repetitions for ``size`` schedules."""
    if size >= 100_000:
        timed = config.repetitions(full=3, quick=1)
    elif size >= 10_000:
        timed = config.repetitions(full=5, quick=2)
    else:
        timed = config.repetitions(full=10, quick=3)
    return timed, min(timed, 2)


async def _sources(url: str, size: int) -> list[ScheduleSource]:
    labelled = size // 2
    in_redis = size - labelled
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    # Every COPY_EVERY-th Redis schedule repeats label schedule i (under another child id).
    tasks = [scheduled_task(i if i % COPY_EVERY == 0 else labelled + i) for i in range(in_redis)]
    await fill_redis_source(url, prefix, tasks)
    return [await label_source(url, range(labelled)), redis_source(url, prefix)]


def _timed(
    call: Callable[[], Awaitable[list[ScheduledTask]]],
) -> Callable[[], Awaitable[Measurement]]:
    async def measure() -> Measurement:
        started = time.perf_counter()
        schedules = await call()
        return {"seconds": time.perf_counter() - started, "schedules": len(schedules)}

    return measure


def _traced(
    call: Callable[[], Awaitable[list[ScheduledTask]]],
) -> Callable[[], Awaitable[Measurement]]:
    async def measure() -> Measurement:
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            schedules = await call()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        count = len(schedules)
        del schedules
        return {"peak_mib": (peak - before) / 2**20, "schedules": count}

    return measure


async def _measure_size(url: str, size: int, reps: int, memory_reps: int) -> dict[str, object]:
    flush(url)
    children = await _sources(url, size)
    composite = CompositeScheduleSource(children, redis_url=url, prefix="bench-merge")

    async def own_fetch() -> list[ScheduledTask]:
        fetched = await asyncio.gather(*(child.get_schedules() for child in children))
        return [task for tasks in fetched for task in tasks]

    calls = {"children": own_fetch, "composite": composite.get_schedules}
    try:
        timed = await interleave({arm: _timed(call) for arm, call in calls.items()}, reps)
        memory = await interleave(
            {arm: _traced(call) for arm, call in calls.items()}, memory_reps, warmup=0
        )
    finally:
        await composite.shutdown()
    return {"timed": timed, "memory": memory}


def run(config: Config) -> Result:
    """Compare the composite's fetch to its children's, at each size."""
    sizes = [1_000, 10_000] if config.quick else [1_000, 10_000, 100_000]
    result = Result(
        name=NAME,
        title="Merge",
        method=(__doc__ or "").strip(),
        params={
            "sizes": sizes,
            "repetitions": {size: _reps(size, config)[0] for size in sizes},
            "memory_repetitions": {size: _reps(size, config)[1] for size in sizes},
        },
    )
    with private_redis() as server:
        for size in sizes:
            reps, memory_reps = _reps(size, config)
            measured = asyncio.run(_measure_size(server.url, size, reps, memory_reps))
            timed = measured["timed"]
            memory = measured["memory"]
            assert isinstance(timed, dict)  # noqa: S101
            assert isinstance(memory, dict)  # noqa: S101
            result.checks[f"schedules_returned_{size}"] = {
                arm: runs[0]["schedules"] for arm, runs in timed.items()
            }
            for arm in ("children", "composite"):
                result.add(
                    timed, arm, "seconds", "s", baseline="children", label=f"{size:,}: {arm}, time"
                )
            for arm in ("children", "composite"):
                result.add(
                    memory,
                    arm,
                    "peak_mib",
                    "MiB",
                    baseline="children",
                    label=f"{size:,}: {arm}, peak memory",
                )
            for metric, what in (("seconds", "time"), ("peak_mib", "peak memory")):
                row = next(
                    r
                    for r in result.rows
                    if r.arm == "composite"
                    and r.metric == metric
                    and r.label.startswith(f"{size:,}:")
                )
                assert row.ratio is not None  # noqa: S101
                result.goals.append(
                    Goal(
                        text=f"{size:,} schedules: composite {what} <= {GOAL} x children",
                        value=row.ratio["median"],
                        met=row.ratio["median"] <= GOAL,
                    ),
                )
    return result
