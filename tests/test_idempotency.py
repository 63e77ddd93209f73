"""``Binder``: which kick answers an idempotency key, on the real scripts and Redis.

A later kick waits while the first is pending, echoes it once confirmed, binds the
key itself once the first's pending window lapsed, and gives up loudly when the
first stays pending past its own window plus the operation deadline.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from taskiq.message import TaskiqMessage

from taskiq_dedup.errors import DedupUnavailableError
from taskiq_dedup.idempotency import Binder
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.leases import Leases

RETENTION_MS = 50_000


@pytest.fixture
def key(prefix: str) -> str:
    return KeySpace(prefix).idempotency("app:charge", "order-1")


def kick(task_id: str) -> TaskiqMessage:
    labels = {"idempotency_key": "order-1"}
    return TaskiqMessage(task_id=task_id, task_name="app:charge", labels=labels, args=[], kwargs={})


def binder(redis: Redis, *, pending_ms: int, deadline: float = 5.0, rerun: bool = False) -> Binder:
    return Binder(
        Leases(redis),
        retention_ms=RETENTION_MS,
        pending_ms=pending_ms,
        rerun_lost=rerun,
        deadline=deadline,
    )


async def test_a_confirmed_kick_answers_later_kicks_and_is_kept(redis: Redis, key: str) -> None:
    binds = binder(redis, pending_ms=30_000)
    assert await binds.bind(key, kick("first")) == "first"
    assert await binds.confirm(key, kick("first")) == "first"
    assert RETENTION_MS - 30_000 < await redis.pttl(key) <= RETENTION_MS
    assert await binds.bind(key, kick("second")) == "first"


async def test_a_later_kick_waits_for_the_first_to_be_confirmed(redis: Redis, key: str) -> None:
    binds = binder(redis, pending_ms=30_000)
    assert await binds.bind(key, kick("first")) == "first"

    async def confirm_soon() -> str:
        await asyncio.sleep(0.3)
        return await binds.confirm(key, kick("first"))

    confirming = asyncio.create_task(confirm_soon())
    assert await asyncio.wait_for(binds.bind(key, kick("second")), 10) == "first"
    assert await confirming == "first"


async def test_a_kick_that_never_reached_the_queue_is_replaced_after_its_window(
    redis: Redis, key: str
) -> None:
    """The first kick's pending window (1 s) lapses; the later kick, which may wait that
    window plus its 0.9 s deadline, binds the key itself and is the one sent."""
    binds = binder(redis, pending_ms=1_000, deadline=0.9)
    assert await binds.bind(key, kick("first")) == "first"  # its send then failed
    assert await asyncio.wait_for(binds.bind(key, kick("second")), 10) == "second"
    assert await binds.confirm(key, kick("first")) == "second"  # a late confirm: a copy


async def test_a_kick_pending_past_the_window_and_deadline_is_an_error_naming_it(
    redis: Redis, key: str
) -> None:
    await binder(redis, pending_ms=60_000).bind(key, kick("first"))  # a sender misbehaving
    impatient = binder(redis, pending_ms=200, deadline=0.2)
    with pytest.raises(DedupUnavailableError) as raised:
        await asyncio.wait_for(impatient.bind(key, kick("second")), 10)
    assert (
        f"idempotency key {key} is still pending for task first, which was neither "
        "confirmed nor lapsed"
    ) in str(raised.value)


@pytest.mark.parametrize(("rerun", "answer"), [(True, "second"), (False, "first")])
async def test_a_lost_run_is_rerun_only_where_the_broker_cannot_redeliver(
    redis: Redis, key: str, rerun: bool, answer: str
) -> None:
    binds = binder(redis, pending_ms=30_000, rerun=rerun)
    await binds.bind(key, kick("first"))
    await binds.confirm(key, kick("first"))
    # A worker took it and died: its lease lapsed long ago.
    await redis.hset(key, mapping={"state": "running", "owner": "first", "lease_until": 0})
    assert await binds.bind(key, kick("second")) == answer
