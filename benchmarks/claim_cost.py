"""Claim cost: one decision's latency and round trips, against a raw ``SET NX PX``.

Each arm makes K decisions one after another on one connection of a private
local redis-server, each on a fresh key, timed one by one (p50 and p99 of the
K latencies per repetition):

- ``raw``: redis-py ``SET key value NX PX ttl``, the cheapest possible claim;
- ``claimer``: ``FiringClaims.claim`` (the scheduler's claim script);
- ``pre_send``: ``CompositeScheduleSource.pre_send`` then ``post_send`` (claim
  and confirm: the whole scheduler-side protocol of one firing) of K merged cron
  schedules (slot from the cron expression, the claim, the firing's labels);
- ``worker_claim``: ``DedupMiddleware.pre_execute`` of a scheduled message;
- ``worker_claim_finish``: ``pre_execute`` plus ``post_execute`` (the claim and
  marking the firing done) of the same message.

Round trips per decision are counted separately, untimed, with ``MONITOR``:
commands sent by clients, not the ones a script runs inside Redis (shown apart).
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from taskiq import TaskiqMessage
from taskiq.result import TaskiqResult

from benchmarks.harness import Config, Goal, Measurement, Result, interleave, percentile
from benchmarks.monitor import count_round_trips
from benchmarks.schedules import label_source
from benchmarks.servers import private_redis
from taskiq_dedup import CompositeScheduleSource, DedupMiddleware
from taskiq_dedup.claims import FiringClaims
from taskiq_dedup.labels import SCHEDULE_ID_LABEL, SLOT_LABEL

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from taskiq import ScheduledTask

NAME = "claim_cost"
TTL_MS = 70_000
ARMS = ("raw", "claimer", "pre_send", "worker")
LABELS = {
    "raw": "redis-py SET NX PX (baseline)",
    "claimer": "scheduler claim: FiringClaims.claim",
    "pre_send": "scheduler claim + confirm: pre_send + post_send",
    "worker_claim": "worker claim: DedupMiddleware.pre_execute",
    "worker_claim_finish": "worker claim + completion: pre_execute + post_execute",
}
CLAIM_GOAL = 1.2
MONITORED_OPS = 100
START = datetime(2030, 1, 1, tzinfo=timezone.utc)


class MinuteClock:
    """A clock standing on one minute at a time, so every pass claims fresh slots."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def next_minute(self) -> None:
        self.now += timedelta(minutes=1)


class Bench:
    """The clients, sources and middleware the arms share."""

    def __init__(self, url: str, decisions: int) -> None:
        self.url = url
        self.decisions = decisions
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}"
        self.redis = Redis.from_url(url)
        self.claimer = FiringClaims(self.redis, "bench-host:1")
        self.clock = MinuteClock()
        self.middleware = DedupMiddleware(redis=self.redis, prefix=self.prefix)
        self.composite: CompositeScheduleSource | None = None
        self.tasks: list[ScheduledTask] = []
        self.counter = 0
        self.result = TaskiqResult(is_err=False, return_value=None, execution_time=0.0)

    async def start(self) -> None:
        source = await label_source(self.url, range(self.decisions), cron="* * * * *")
        self.composite = CompositeScheduleSource(
            [source], redis=self.redis, prefix=self.prefix, clock=self.clock
        )
        await self.composite.refresh()
        self.tasks = [entry.task for entry in self.composite.schedules.values()]

    async def close(self) -> None:
        await self.middleware.shutdown()
        await self.redis.aclose()

    def _key(self, kind: str) -> str:
        self.counter += 1
        return f"{self.prefix}:{kind}:{self.counter}"

    # One decision per arm; each returns the nanoseconds of its timed parts.

    async def raw(self, _index: int) -> tuple[int, ...]:
        key = self._key("raw")
        started = time.perf_counter_ns()
        await self.redis.set(key, "bench-host:1", nx=True, px=TTL_MS)
        return (time.perf_counter_ns() - started,)

    async def claim(self, _index: int) -> tuple[int, ...]:
        key = self._key("claimer")
        started = time.perf_counter_ns()
        result = await self.claimer.claim(key, self.claimer.new_attempt(), [60], TTL_MS)
        elapsed = time.perf_counter_ns() - started
        if not result.won:
            raise RuntimeError(f"fresh key {key} was not won")
        return (elapsed,)

    async def pre_send(self, index: int) -> tuple[int, ...]:
        assert self.composite is not None  # noqa: S101 -- start() ran
        task = self.tasks[index]
        started = time.perf_counter_ns()
        await self.composite.pre_send(task)
        await self.composite.post_send(task)
        return (time.perf_counter_ns() - started,)

    async def worker(self, _index: int) -> tuple[int, ...]:
        self.counter += 1
        message = TaskiqMessage(
            task_id=uuid.uuid4().hex,
            task_name="bench:noop",
            labels={SCHEDULE_ID_LABEL: "bench-schedule", SLOT_LABEL: str(self.counter)},
            args=[],
            kwargs={},
        )
        started = time.perf_counter_ns()
        message = await self.middleware.pre_execute(message)
        claimed = time.perf_counter_ns()
        await self.middleware.post_execute(message, self.result)
        return (claimed - started, time.perf_counter_ns() - started)

    def operation(self, arm: str) -> Callable[[int], Awaitable[tuple[int, ...]]]:
        return {
            "raw": self.raw,
            "claimer": self.claim,
            "pre_send": self.pre_send,
            "worker": self.worker,
        }[arm]

    async def run_arm(self, arm: str) -> Measurement:
        """K decisions of ``arm``, in a task of their own (the middleware hooks its end)."""
        if arm == "pre_send":
            self.clock.next_minute()
        operation = self.operation(arm)
        count = len(self.tasks) if arm == "pre_send" else self.decisions

        async def decisions() -> list[tuple[int, ...]]:
            return [await operation(i) for i in range(count)]

        timings = await asyncio.create_task(decisions())
        measurement: Measurement = {}
        names = ("claim", "total") if arm == "worker" else ("total",)
        for position, name in enumerate(names):
            micros = [t[position] / 1000 for t in timings]
            measurement[f"{name}_p50_us"] = percentile(micros, 50)
            measurement[f"{name}_p99_us"] = percentile(micros, 99)
        return measurement


def _split_worker(results: dict[str, list[Measurement]]) -> dict[str, list[Measurement]]:
    """Name every arm's latencies ``p50_us``/``p99_us``; the worker gives two arms."""
    out: dict[str, list[Measurement]] = {}
    for arm, runs in results.items():
        if arm == "worker":
            out["worker_claim"] = [
                {"p50_us": m["claim_p50_us"], "p99_us": m["claim_p99_us"]} for m in runs
            ]
            out["worker_claim_finish"] = [
                {"p50_us": m["total_p50_us"], "p99_us": m["total_p99_us"]} for m in runs
            ]
        else:
            out[arm] = [{"p50_us": m["total_p50_us"], "p99_us": m["total_p99_us"]} for m in runs]
    return out


async def _worker_round_trips(bench: Bench) -> dict[str, Any]:
    """Round trips of the worker's claim (``pre_execute``) and completion, counted apart."""
    messages: list[TaskiqMessage] = []

    async def claim(_index: int) -> None:
        bench.counter += 1
        message = TaskiqMessage(
            task_id=uuid.uuid4().hex,
            task_name="bench:noop",
            labels={SCHEDULE_ID_LABEL: "bench-schedule", SLOT_LABEL: str(bench.counter)},
            args=[],
            kwargs={},
        )
        messages.append(await bench.middleware.pre_execute(message))

    async def finish(index: int) -> None:
        await bench.middleware.post_execute(messages[index], bench.result)

    async def both() -> dict[str, Any]:
        claims = await count_round_trips(bench.url, claim, MONITORED_OPS)
        finishes = await count_round_trips(bench.url, finish, MONITORED_OPS)
        return {"pre_execute": claims, "post_execute": finishes}

    return await asyncio.create_task(both())


async def _measure(url: str, decisions: int, reps: int) -> tuple[dict[str, Any], dict[str, Any]]:
    bench = Bench(url, decisions)
    await bench.start()
    try:
        results = await interleave(
            {arm: functools.partial(bench.run_arm, arm) for arm in ARMS}, reps, warmup=1
        )
        bench.clock.next_minute()
        trips: dict[str, Any] = {}
        for arm in ("raw", "claimer", "pre_send"):
            trips[arm] = await count_round_trips(url, bench.operation(arm), MONITORED_OPS)
        trips |= await _worker_round_trips(bench)
    finally:
        await bench.close()
    return _split_worker(results), trips


def run(config: Config) -> Result:
    """Time each kind of decision against the raw round trip; count round trips."""
    decisions = 200 if config.quick else 2_000
    reps = config.repetitions(full=7, quick=2)
    result = Result(
        name=NAME,
        title="Claim cost",
        method=(__doc__ or "").strip(),
        params={"decisions_per_repetition": decisions, "repetitions": reps},
    )
    with private_redis() as server:
        results, trips = asyncio.run(_measure(server.url, decisions, reps))
    for metric in ("p50_us", "p99_us"):
        for arm, label in LABELS.items():
            result.add(results, arm, metric, "µs", baseline="raw", label=f"{label}: {metric[:3]}")
    result.checks["round_trips"] = trips
    for arm, label in (("claimer", "FiringClaims.claim"), ("pre_send", "pre_send + post_send")):
        row = next(r for r in result.rows if r.arm == arm and r.metric == "p50_us")
        assert row.ratio is not None  # noqa: S101
        result.goals.append(
            Goal(
                text=f"scheduler claim ({label}) p50 within {CLAIM_GOAL} x raw SET NX PX",
                value=row.ratio["median"],
                met=row.ratio["median"] <= CLAIM_GOAL,
            ),
        )
    for arm, label in (
        ("raw", "raw SET NX PX"),
        ("claimer", "FiringClaims.claim"),
        ("pre_execute", "DedupMiddleware.pre_execute (worker claim)"),
    ):
        per_op = trips[arm]["round_trips_per_op"]
        result.goals.append(
            Goal(
                text=f"{label}: one round trip per claim",
                value=per_op,
                met=per_op == 1,
                detail=f"client commands {trips[arm]['client_commands']}, "
                f"inside scripts {trips[arm]['script_commands']}",
            ),
        )
    firing = trips["pre_send"]
    result.goals.append(
        Goal(
            text="pre_send + post_send: two round trips per firing (claim, confirm)",
            value=firing["round_trips_per_op"],
            met=firing["round_trips_per_op"] == 2,
            detail=f"client commands {firing['client_commands']}, "
            f"inside scripts {firing['script_commands']}",
        ),
    )
    finish = trips["post_execute"]
    result.notes.append(
        f"The worker's completion (post_execute) is {finish['round_trips_per_op']:g} more "
        f"round trip per firing: client commands {finish['client_commands']}, inside "
        f"scripts {finish['script_commands']}.",
    )
    return result
