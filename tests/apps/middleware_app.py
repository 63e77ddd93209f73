"""A worker app for the middleware's multi-process tests, configured by the environment.

``REDIS_URL`` and ``DEDUP_PREFIX`` pick the server and the key space (the stream,
results and records live under the prefix too); ``IDLE_MS`` is the stream
broker's redelivery timeout and ``LEASE`` the middleware's lease in seconds,
both small so a crash test takes seconds. Executions are appended to the Redis
list ``<prefix>:executions``; the start of ``slow`` to ``<prefix>:started``.

``scheduler`` is a stock ``TaskiqScheduler`` with taskiq's own
``LabelScheduleSource`` only (no composite source): ``tick`` is declared to
run every ``TICK`` seconds and records ``<slot>`` in ``<prefix>:ticks`` per run.

``python -m tests.apps.middleware_app kick INDEX KEYS`` is one client process: it
kicks ``echo`` for ``KEYS`` idempotency keys and stores what each handle's
``wait_result()`` returned in the hash ``<prefix>:answers:<INDEX>``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated

from redis.asyncio import Redis
from taskiq import AsyncBroker, Context, SimpleRetryMiddleware, TaskiqDepends, TaskiqScheduler
from taskiq.kicker import AsyncKicker
from taskiq.schedule_sources import LabelScheduleSource
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from taskiq_dedup import DedupMiddleware

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:1/0")
PREFIX = os.environ.get("DEDUP_PREFIX", "middleware-app")
IDLE_MS = int(os.environ.get("IDLE_MS", "3000"))
LEASE = float(os.environ.get("LEASE", "1.0"))
TICK = int(os.environ.get("TICK", "2"))


def make_broker(redis_url: str, prefix: str) -> AsyncBroker:
    """The app's broker; tests build their own client with the same queues."""
    return (
        RedisStreamBroker(
            redis_url,
            queue_name=f"{prefix}:stream",
            consumer_id="0",  # messages sent before the group exists count too
            idle_timeout=IDLE_MS,
            xread_block=200,
        )
        .with_result_backend(RedisAsyncResultBackend(redis_url, prefix_str=f"{prefix}:results"))
        .with_middlewares(
            SimpleRetryMiddleware(default_retry_count=3),
            DedupMiddleware(redis_url=redis_url, prefix=prefix, lease_ttl=LEASE),
        )
    )


broker = make_broker(REDIS_URL, PREFIX)
_recorder: Redis | None = None


def recorder() -> Redis:
    """One client per process for the records."""
    global _recorder  # noqa: PLW0603
    if _recorder is None:
        _recorder = Redis.from_url(REDIS_URL)
    return _recorder


@broker.task(task_name="slow")
async def slow(tag: str, seconds: float) -> str:
    """Record the start, work for ``seconds``, record the execution."""
    await recorder().rpush(f"{PREFIX}:started", tag)
    await asyncio.sleep(seconds)
    await recorder().rpush(f"{PREFIX}:executions", tag)
    return tag


@broker.task(task_name="flaky")
async def flaky(tag: str) -> str:
    """Fail on the first attempt, succeed on the next."""
    attempt = await recorder().incr(f"{PREFIX}:attempts:{tag}")
    if attempt == 1:
        raise RuntimeError(f"first attempt of {tag} fails")
    await recorder().rpush(f"{PREFIX}:executions", tag)
    return f"{tag}:{attempt}"


@broker.task(task_name="echo")
async def echo(key: str, kicker: int) -> str:
    """Record and return which kicker's call ran for ``key``."""
    await asyncio.sleep(0.05)  # overlap with the other kickers' copies
    value = f"{key}:{kicker}"
    await recorder().rpush(f"{PREFIX}:executions", value)
    return value


@broker.task(task_name="tick", schedule=[{"interval": TICK}])
async def tick(context: Annotated[Context, TaskiqDepends()]) -> None:
    """Record the slot of this run (stock schedulers give it through DedupMiddleware)."""
    await recorder().rpush(f"{PREFIX}:ticks", str(context.message.labels.get("dedup_slot")))


scheduler = TaskiqScheduler(broker, sources=[LabelScheduleSource(broker)])


@broker.task(task_name="noop")
async def noop() -> None:
    """Traffic: taskiq-redis reclaims pending messages only after a read returns some."""


async def kick(index: int, keys: int) -> None:
    """One client: kick ``echo`` for every key, store every handle's result."""
    client = make_broker(REDIS_URL, PREFIX)
    await client.startup()
    try:
        handles = [
            await AsyncKicker("echo", client, {"idempotency_key": f"k{key}"}).kiq(f"k{key}", index)
            for key in range(keys)
        ]
        results = await asyncio.gather(*(h.wait_result(timeout=30) for h in handles))
        answers = {f"k{key}": str(r.return_value) for key, r in enumerate(results)}
        await recorder().hset(f"{PREFIX}:answers:{index}", mapping=answers)
    finally:
        await client.shutdown()
        await recorder().aclose()


if __name__ == "__main__" and sys.argv[1:2] == ["kick"]:
    asyncio.run(kick(int(sys.argv[2]), int(sys.argv[3])))
