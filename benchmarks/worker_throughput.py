"""Worker throughput: no-op tasks drained from a ``ListQueueBroker`` (and a stream) queue.

20k tasks per arm, drained as 10 interleaved repetitions of 2k (the machine is
shared: more, shorter turns pair the arms better than a few long ones). Each
repetition pre-fills the queue with the messages (untimed), then times an
in-process taskiq ``Receiver`` - the one ``taskiq worker`` runs, with its
default ``max_async_tasks=100`` - driving ``broker.listen()`` from the start of
consumption until the last task's ``post_execute`` hooks have returned (a
counting middleware, last in every arm's list, sees each completion). In
process rather than a ``taskiq worker`` subprocess: no start-up or import time
to subtract, and the same event loop measures every arm.

Arms (every message is ``noop(i)`` with the same labels ``schedule_id`` and
``dedup_slot``, or ``idempotency_key``, so payloads match):

- ``bare``: taskiq as shipped, no dedup middleware;
- ``dedup_scheduled``: ``DedupMiddleware``, messages of a schedule with distinct slots;
- ``dedup_idempotency``: ``DedupMiddleware``, distinct idempotency keys (bound at send);
- ``taskiq_deduplication``: ``RedisDeduplicationMiddleware`` (defaults: lock at
  send keyed by task + arguments, heartbeat, release after execution); its
  messages go through its ``pre_send``/``post_send`` at pre-fill, as with ``kiq``;
- ``bare_1rt`` and ``bare_2rt`` (calibration): bare taskiq plus a middleware
  that only makes one round trip (``EVALSHA`` of ``return 1``) in
  ``pre_execute`` (and one in ``post_execute``): what one and two round trips
  per message cost on their own, with nothing decided. ``DedupMiddleware``
  makes one decision per scheduled message on a ``ListQueueBroker`` (a *once*
  claim: nothing can redeliver it) and two on a stream (the claim and marking
  it done), sent together with other messages' decisions as one script call;
- ``dedup_scheduled_recorded``: ``dedup_scheduled`` with ``record_finish=True``,
  two decisions per message on the list queue too: what the once claim saves;
- ``bare_hiredis`` / ``dedup_scheduled_hiredis``: ``bare`` and
  ``dedup_scheduled`` with every client parsing replies with hiredis (every
  other arm forces redis-py's own parser), compared with each other;
- ``bare_stream`` / ``dedup_scheduled_stream`` / ``taskiq_deduplication_stream``:
  the same on a ``RedisStreamBroker`` (read 100 at a time, acked one by one),
  compared with ``bare_stream``.

Script calls per message are counted by the server (``INFO commandstats``
before and after each drain; the check ``scripts_per_task``): each is one round
trip of the dedup middleware (or a calibration arm), below one per message when
decisions are batched. ``taskiq-deduplication`` makes plain commands, not
scripts: its figure reads 0 (its stream arm: taskiq-redis's own reclaim script).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from typing import TYPE_CHECKING, Any

from redis._parsers import _AsyncHiredisParser, _AsyncRESP3Parser
from redis.asyncio import Redis
from taskiq import TaskiqMessage
from taskiq.abc.middleware import TaskiqMiddleware
from taskiq.labels import prepare_label
from taskiq.receiver import Receiver
from taskiq.utils import maybe_awaitable
from taskiq_deduplication import RedisDeduplicationMiddleware
from taskiq_redis import ListQueueBroker, RedisStreamBroker

from benchmarks.harness import Config, Goal, Measurement, Result, interleave, summary
from benchmarks.servers import flush, private_redis
from taskiq_dedup import DedupMiddleware
from taskiq_dedup.labels import IDEMPOTENCY_KEY_LABEL, SCHEDULE_ID_LABEL, SLOT_LABEL

if TYPE_CHECKING:
    from taskiq.result import TaskiqResult

NAME = "worker_throughput"
TASK_NAME = "bench:noop"
MAX_ASYNC_TASKS = 100  # `taskiq worker`'s default
PREFILL_BATCH = 50
"""Messages sent concurrently at pre-fill: below redis-py's default pool of 100."""
DRAIN_TIMEOUT = 300.0
ARMS = (
    "bare",
    "dedup_scheduled",
    "dedup_scheduled_recorded",
    "dedup_idempotency",
    "taskiq_deduplication",
    "bare_1rt",
    "bare_2rt",
    "bare_hiredis",
    "dedup_scheduled_hiredis",
    "bare_stream",
    "dedup_scheduled_stream",
    "taskiq_deduplication_stream",
)
STREAM_ARMS = {
    "bare_stream": "bare",
    "dedup_scheduled_stream": "dedup_scheduled",
    "taskiq_deduplication_stream": "taskiq_deduplication",
}
"""Arms on a ``RedisStreamBroker`` (acked, redelivers), by the list-queue arm they repeat."""
HIREDIS_ARMS = {"bare_hiredis": "bare", "dedup_scheduled_hiredis": "dedup_scheduled"}
"""Arms whose every client parses replies with hiredis (the others with redis-py's own parser)."""
STREAM_GOAL = 0.9
LABELS = {
    "bare": "taskiq as shipped",
    "dedup_scheduled": "DedupMiddleware, scheduled messages (schedule_id + dedup_slot)",
    "dedup_scheduled_recorded": "DedupMiddleware, scheduled messages, record_finish=True",
    "dedup_idempotency": "DedupMiddleware, idempotency keys",
    "taskiq_deduplication": "taskiq-deduplication RedisDeduplicationMiddleware",
    "bare_1rt": "calibration: bare + 1 empty round trip per message",
    "bare_2rt": "calibration: bare + 2 empty round trips per message",
    "bare_hiredis": "taskiq as shipped, hiredis parser",
    "dedup_scheduled_hiredis": "DedupMiddleware, scheduled messages, hiredis parser",
    "bare_stream": "RedisStreamBroker: taskiq as shipped",
    "dedup_scheduled_stream": "RedisStreamBroker: DedupMiddleware, scheduled messages",
    "taskiq_deduplication_stream": "RedisStreamBroker: taskiq-deduplication",
}
ROUND_TRIP_SCRIPT = "return 1"
REDIS_TIMEOUT = 5.0  # as DedupMiddleware's client made from redis_url
GOAL = 0.95


class Completions(TaskiqMiddleware):
    """Counts finished tasks; sets ``done`` at the ``expected``-th."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.count = 0
        self.done = asyncio.Event()

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        """Count one completion (after every other middleware's ``post_execute``)."""
        self.count += 1
        if self.count >= self.expected:
            self.done.set()


class RoundTrips(TaskiqMiddleware):
    """Makes one round trip in ``pre_execute`` and, if ``both``, one in ``post_execute``."""

    def __init__(self, url: str, *, both: bool) -> None:
        super().__init__()
        self.redis = Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self.script = self.redis.register_script(ROUND_TRIP_SCRIPT)
        self.both = both

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        """One round trip, like a claim."""
        await self.script(keys=["bench:probe"], args=[message.task_id])
        return message

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        """One more round trip, like marking the firing done."""
        if self.both:
            await self.script(keys=["bench:probe"], args=[message.task_id])

    async def shutdown(self) -> None:
        """Close the client."""
        await self.redis.aclose()


async def noop(_index: int) -> None:
    """The task: nothing, so the figures are the framework's and the middleware's."""


def _parser(arm: str) -> dict[str, Any]:
    """The connection options of every client of ``arm``: which reply parser it uses."""
    return {"parser_class": _AsyncHiredisParser if arm in HIREDIS_ARMS else _AsyncRESP3Parser}


def _kind(arm: str) -> str:
    """The ``ListQueueBroker`` arm that ``arm`` repeats on another broker or parser."""
    if arm == "dedup_scheduled_recorded":
        return "dedup_scheduled"
    return STREAM_ARMS.get(arm) or HIREDIS_ARMS.get(arm) or arm


def _middleware(arm: str, url: str, prefix: str) -> TaskiqMiddleware | None:
    kind = _kind(arm)
    if kind in ("dedup_scheduled", "dedup_idempotency"):
        recorded = True if arm == "dedup_scheduled_recorded" else None
        return DedupMiddleware(redis_url=url, prefix=prefix, record_finish=recorded, **_parser(arm))
    if kind == "taskiq_deduplication":
        middleware: TaskiqMiddleware = RedisDeduplicationMiddleware(url, key_prefix=prefix)
        return middleware
    if arm in ("bare_1rt", "bare_2rt"):
        return RoundTrips(url, both=arm == "bare_2rt")
    return None


def _broker(
    arm: str, url: str, queue: str, middlewares: list[TaskiqMiddleware]
) -> ListQueueBroker | RedisStreamBroker:
    broker: ListQueueBroker | RedisStreamBroker
    if arm in STREAM_ARMS:
        # The group starts at the stream's beginning: it reads the pre-filled messages.
        broker = RedisStreamBroker(url, queue_name=queue, consumer_id="0", **_parser(arm))
    else:
        broker = ListQueueBroker(url, queue_name=queue, **_parser(arm))
    broker.with_middlewares(*middlewares)
    broker.register_task(noop, task_name=TASK_NAME)
    return broker


def _message(arm: str, index: int, schedule_id: str) -> TaskiqMessage:
    raw: dict[str, Any] = (
        {IDEMPOTENCY_KEY_LABEL: f"key-{schedule_id}-{index}"}
        if _kind(arm) == "dedup_idempotency"
        else {SCHEDULE_ID_LABEL: schedule_id, SLOT_LABEL: 1_700_000_000 + index}
    )
    labels: dict[str, Any] = {}
    types: dict[str, int] = {}
    for name, value in raw.items():
        labels[name], types[name] = prepare_label(value)
    return TaskiqMessage(
        task_id=uuid.uuid4().hex,
        task_name=TASK_NAME,
        labels=labels,
        labels_types=types,
        args=[index],
        kwargs={},
    )


async def prefill(arm: str, url: str, queue: str, prefix: str, tasks: int) -> None:
    """Queue ``tasks`` messages as ``kiq`` would: the arm's ``pre_send``/``post_send``."""
    sender_mw = _middleware(arm, url, prefix)
    sender = _broker(arm, url, queue, [sender_mw] if sender_mw else [])
    await sender.startup()
    schedule_id = uuid.uuid4().hex[:16]
    try:
        async with Redis.from_url(url) as client:
            for start in range(0, tasks, PREFILL_BATCH):
                batch = [_message(arm, i, schedule_id) for i in range(start, start + PREFILL_BATCH)]
                batch = batch[: max(0, tasks - start)]
                if sender_mw is not None:
                    batch = list(
                        await asyncio.gather(
                            *(maybe_awaitable(sender_mw.pre_send(m)) for m in batch)
                        )
                    )
                    await asyncio.gather(*(maybe_awaitable(sender_mw.post_send(m)) for m in batch))
                async with client.pipeline(transaction=False) as pipe:
                    for message in batch:
                        data = sender.formatter.dumps(message).message
                        if arm in STREAM_ARMS:
                            pipe.xadd(queue, {b"data": data})
                        else:
                            pipe.lpush(queue, data)
                    await pipe.execute()
    finally:
        await sender.shutdown()


async def drain(arm: str, url: str, tasks: int) -> Measurement:
    """Pre-fill, then time one receiver draining the queue; return its figures."""
    flush(url)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    queue = f"{prefix}:queue"
    await prefill(arm, url, queue, prefix, tasks)
    before = await _commands(url)
    elapsed = await consume(arm, url, queue, prefix, tasks)
    sent = {name: calls - before.get(name, 0) for name, calls in (await _commands(url)).items()}
    return {
        "seconds": elapsed,
        "tasks_per_s": tasks / elapsed,
        # counted by the server (INFO commandstats): script calls while draining
        "scripts_per_task": (sent.get("evalsha", 0) + sent.get("eval", 0)) / tasks,
    }


async def _commands(url: str) -> dict[str, int]:
    """Commands the server has run so far, by name (the ``INFO`` reading itself included)."""
    async with Redis.from_url(url) as client:
        stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


async def consume(
    arm: str,
    url: str,
    queue: str,
    prefix: str,
    tasks: int,
    *,
    around: contextlib.AbstractContextManager[object] | None = None,
) -> float:
    """Drain the pre-filled ``queue`` with one receiver; return the seconds it took.

    ``around`` (e.g. a profiler) is entered just before consumption starts and
    left when the last task has finished: start-up and shutdown stay outside.
    """
    counter = Completions(tasks)
    middleware = _middleware(arm, url, prefix)
    broker = _broker(arm, url, queue, [*([middleware] if middleware else []), counter])
    broker.is_worker_process = True
    await broker.startup()
    receiver = Receiver(
        broker,
        max_async_tasks=MAX_ASYNC_TASKS,
        max_tasks_to_execute=tasks,  # stop fetching after the last one: a clean exit
        run_startup=False,
    )
    try:
        with around or contextlib.nullcontext():
            started = time.perf_counter()
            listening = asyncio.create_task(receiver.listen(asyncio.Event()))
            await asyncio.wait_for(counter.done.wait(), DRAIN_TIMEOUT)
            elapsed = time.perf_counter() - started
        await asyncio.wait_for(listening, DRAIN_TIMEOUT)
        executed = getattr(getattr(middleware, "stats", None), "executed", tasks)
        if counter.count != tasks or executed != tasks:
            raise RuntimeError(f"{arm}: {counter.count} completions, {executed} claimed")
    finally:
        await broker.shutdown()
    return elapsed


def run(config: Config) -> Result:
    """Run every arm, interleaved, and compare each to bare taskiq."""
    tasks = 500 if config.quick else 2_000
    reps = config.repetitions(full=10, quick=2)
    result = Result(
        name=NAME,
        title="Worker throughput",
        method=(__doc__ or "").strip(),
        params={
            "tasks_per_repetition": tasks,
            "repetitions": reps,
            "tasks_per_arm": tasks * reps,
            "max_async_tasks": MAX_ASYNC_TASKS,
        },
    )
    with private_redis() as server:
        arms = {arm: functools.partial(drain, arm, server.url, tasks) for arm in ARMS}
        results = asyncio.run(interleave(arms, reps, warmup=1))
    for figure in ("scripts_per_task",):
        result.checks[figure] = {
            arm: summary([float(m[figure]) for m in results[arm]]) for arm in ARMS
        }
    for arm in ARMS:
        baseline = "bare_stream" if arm in STREAM_ARMS else "bare"
        baseline = "bare_hiredis" if arm in HIREDIS_ARMS else baseline
        result.add(results, arm, "tasks_per_s", "tasks/s", baseline=baseline, label=LABELS[arm])
    result.add(
        results,
        "dedup_scheduled",
        "tasks_per_s",
        "tasks/s",
        baseline="bare_1rt",
        label="DedupMiddleware, scheduled messages (one decision), against 1 round trip",
    )
    scheduled = next(r for r in result.rows if r.arm == "dedup_scheduled" and r.baseline == "bare")
    assert scheduled.ratio is not None  # noqa: S101 -- the baseline is another arm
    result.goals.append(
        Goal(
            text=f"DedupMiddleware on scheduled messages >= {GOAL} x bare throughput",
            value=scheduled.ratio["median"],
            met=scheduled.ratio["median"] >= GOAL,
        ),
    )
    stream = _ratio(result, "dedup_scheduled_stream")
    peer = _ratio(result, "taskiq_deduplication_stream")
    result.goals.append(
        Goal(
            text=(
                f"RedisStreamBroker: DedupMiddleware on scheduled messages >= {STREAM_GOAL} x "
                "bare and >= taskiq-deduplication's ratio"
            ),
            value=stream,
            met=stream >= STREAM_GOAL and stream >= peer,
        ),
    )
    return result


def _ratio(result: Result, arm: str) -> float:
    row = next(r for r in result.rows if r.arm == arm)
    assert row.ratio is not None  # noqa: S101 -- the baseline is another arm
    return float(row.ratio["median"])
