"""Burst: 10k cron schedules due in the same minute, three schedulers.

The schedules (``* * * * *``, distinct arguments) live in one Redis-backed
``ListRedisScheduleSource`` (JSON). Each scheduler is a separate process
(``benchmarks.apps.burst_scheduler``) that starts like ``taskiq scheduler``,
fetches the schedules, then runs one tick of taskiq's own ``SchedulerLoop``
(``_is_schedule_ready_to_send`` and a ``send`` task per due schedule, as
``SchedulerLoop.run`` does) with the clock set to a minute boundary instead
of waiting up to 60 s for a real one. The parent gives every process the same
go time. "In the queue" is from go (the boundary) until the broker took the last
firing (the latest ``post_send`` of a middleware first in each broker's list);
"decided" is until every process's every ``send`` returned, the losers' waits for
the winners' confirms included.

- ``bare``: taskiq as shipped, one scheduler, no claims;
- ``split_x3`` (calibration): three stock schedulers whose sources cancel every
  firing outside a partition fixed in advance (``apps.split``): no claim, no
  Redis call; what three schedulers of the same schedules cost on this machine
  before any coordination (each still evaluates all 10k, and they share the CPUs);
- ``dedup_x3``: three schedulers, each with its own ``CompositeScheduleSource``
  over its own ``ListRedisScheduleSource``, and ``DedupMiddleware`` on the
  broker (the README's set-up).

CPU seconds are each process's ``time.process_time`` over the tick, summed over
the arm's processes; the Redis server's are read from ``INFO cpu`` before and after
(the server is the run's own, but it also answers the parent's waits for results).

After each run the queue is read back: duplicates are firings enqueued more
than once, misses are schedules never enqueued.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from redis import Redis as SyncRedis

from benchmarks.harness import Config, Goal, Measurement, Result, interleave_sync, summary
from benchmarks.schedules import fill_redis_source, scheduled_task
from benchmarks.servers import private_redis
from tests.support.processes import ProcessGroup

NAME = "burst"
ARMS = {"bare": ("bare", 1), "split_x3": ("split", 3), "dedup_x3": ("dedup", 3)}
LABELS = {
    "bare": "taskiq as shipped, 1 scheduler, no claims",
    "split_x3": "3 stock schedulers, partitioned in advance (calibration)",
    "dedup_x3": "CompositeScheduleSource, 3 schedulers",
}
READY_TIMEOUT = 120.0
RESULT_TIMEOUT = 120.0
GO_DELAY = 0.5
"""Seconds from the go signal to the go time: every process is waiting by then."""
TIME_GOAL = 2.0


class Burst:
    """One private server holding the schedules; each run gets its own queue and claims."""

    def __init__(self, url: str, schedules: int, log_dir: Path) -> None:
        self.url = url
        self.schedules = schedules
        self.log_dir = log_dir
        self.schedules_prefix = f"bench-{uuid.uuid4().hex[:8]}:schedules"
        self.runs: list[dict[str, Any]] = []

    async def fill(self) -> None:
        tasks = [scheduled_task(i, cron="* * * * *") for i in range(self.schedules)]
        await fill_redis_source(self.url, self.schedules_prefix, tasks)

    def run(self, arm: str) -> Measurement:
        kind, processes = ARMS[arm]
        run_key = f"bench-{uuid.uuid4().hex[:8]}"
        queue = f"{run_key}:queue"
        boundary = math.ceil(time.time() / 60) * 60
        env = {
            "REDIS_URL": self.url,
            "ARM": kind,
            "SCHEDULES_PREFIX": self.schedules_prefix,
            "QUEUE": queue,
            "CLAIMS_PREFIX": f"{run_key}:dedup",
            "RUN_KEY": run_key,
            "BOUNDARY": str(boundary),
        }
        with (
            ProcessGroup(self.log_dir / run_key, env) as group,
            SyncRedis.from_url(self.url, socket_timeout=None) as client,
        ):
            for index in range(processes):
                group.spawn(
                    f"scheduler-{index}",
                    [sys.executable, "-m", "benchmarks.apps.burst_scheduler"],
                    env={"SPLIT_INDEX": str(index), "SPLIT_OF": str(processes)},
                )
            for _ in range(processes):
                if client.blpop([f"{run_key}:ready"], timeout=READY_TIMEOUT) is None:
                    raise TimeoutError(f"{arm}: a scheduler did not start\n{group.logs()}")
            redis_cpu = _redis_cpu(client)
            go = time.time() + GO_DELAY
            client.rpush(f"{run_key}:go", *[repr(go)] * processes)
            reports = []
            for _ in range(processes):
                reply = client.blpop([f"{run_key}:results"], timeout=RESULT_TIMEOUT)
                if reply is None:
                    raise TimeoutError(f"{arm}: a scheduler did not finish\n{group.logs()}")
                reports.append(json.loads(reply[1]))
            redis_cpu = _redis_cpu(client) - redis_cpu
            messages = client.lrange(queue, 0, -1)
            self._clean(client, run_key)
        fired = Counter(json.loads(raw)["args"][0] for raw in messages)
        duplicates = sum(count - 1 for count in fired.values())
        missed = self.schedules - len(fired)
        self.runs.append(
            {
                "arm": arm,
                "enqueued": len(messages),
                "duplicates": duplicates,
                "missed": missed,
                "reports": reports,
            },
        )
        return {
            "seconds": max(report["last_kick"] for report in reports) - go,
            "decided_s": max(report["finished"] for report in reports) - go,
            "cpu_s": sum(report["cpu_s"] for report in reports),
            "redis_cpu_s": redis_cpu,
            "start_lag_s": max(report["started"] for report in reports) - go,
            "duplicates": float(duplicates),
            "missed": float(missed),
        }

    def _clean(self, client: SyncRedis, run_key: str) -> None:
        """Drop this run's queue, claims and control lists (keep the schedules)."""
        keys = list(client.scan_iter(match=f"{run_key}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start : start + 1000])


def _redis_cpu(client: SyncRedis) -> float:
    """CPU seconds the server has used (user + system, main thread and the rest)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run(config: Config) -> Result:
    """Fire the burst with each arm, interleaved, and read back the queue."""
    import asyncio  # noqa: PLC0415 -- only to fill the schedules

    schedules = 1_000 if config.quick else 10_000
    reps = config.repetitions(full=5, quick=1)
    result = Result(
        name=NAME,
        title="Burst",
        method=(__doc__ or "").strip(),
        params={"schedules": schedules, "repetitions": reps, "schedulers": 3},
    )
    with private_redis() as server, tempfile.TemporaryDirectory(prefix="bench-burst-") as logs:
        burst = Burst(server.url, schedules, Path(logs))
        asyncio.run(burst.fill())
        results = interleave_sync({arm: functools.partial(burst.run, arm) for arm in ARMS}, reps)
    for metric, what in (
        ("seconds", "in the queue"),
        ("decided_s", "decided"),
        ("cpu_s", "CPU seconds"),
        ("redis_cpu_s", "Redis server CPU seconds"),
    ):
        for arm in ARMS:
            result.add(results, arm, metric, "s", baseline="bare", label=f"{LABELS[arm]}: {what}")
        result.add(
            results,
            "dedup_x3",
            metric,
            "s",
            baseline="split_x3",
            label=f"{LABELS['dedup_x3']} vs the calibration: {what}",
        )
    dedup = next(r for r in result.rows if r.arm == "dedup_x3")
    duplicates = [m["duplicates"] for m in results["dedup_x3"]]
    missed = [m["missed"] for m in results["dedup_x3"]]
    result.checks["duplicates_dedup_x3"] = summary(duplicates)
    result.checks["missed_dedup_x3"] = summary(missed)
    for arm in ("bare", "split_x3"):
        result.checks[f"missed_{arm}"] = summary([m["missed"] for m in results[arm]])
        result.checks[f"duplicates_{arm}"] = summary([m["duplicates"] for m in results[arm]])
    result.checks["claim_errors_dedup_x3"] = [
        sum(report["claim_errors"] for report in run["reports"])
        for run in burst.runs
        if run["arm"] == "dedup_x3"
    ]
    result.checks["send_errors"] = {
        arm: [
            sum(report["send_errors"] for report in run["reports"])
            for run in burst.runs
            if run["arm"] == arm
        ]
        for arm in ARMS
    }
    result.checks["runs"] = burst.runs
    result.goals.append(
        Goal(
            text="3 schedulers: 0 duplicates (and 0 missed)",
            value=max(duplicates),
            met=max(duplicates) == 0 and max(missed) == 0,
            detail=f"max duplicates {max(duplicates):g}, max missed {max(missed):g} per run",
        ),
    )
    result.goals.append(
        Goal(
            text=f"3 schedulers: all {schedules:,} enqueued within {TIME_GOAL} s of the boundary",
            value=dedup.absolute["median"],
            met=dedup.absolute["max"] < TIME_GOAL,
            detail=f"max {dedup.absolute['max']:.2f} s over {reps} runs",
        ),
    )
    return result
