"""Decisions sent together as one call of the batch form of their scripts (``script_batches``).

Each decision in a batch must come out as it would alone, one failing decision
must not fail the others, a batch whose reply is lost is decided once when
retried, and the batching window must not delay a call after a quiet spell.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from taskiq_dedup.deadlines import within
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.leases import CLAIMED, Claim, Leases
from taskiq_dedup.pipelining import ScriptPipeline
from tests.reliability.proxy import LatencyProxy

LEASE_MS = 60_000
RETENTION_MS = 3_600_000


async def _claim(leases: Leases, key: str, task: str) -> Claim:
    return await leases.claim(
        key,
        token=f"token-{task}",
        task_id=task,
        generation=0,
        worker="host:1",
        lease_ms=LEASE_MS,
        retention_ms=RETENTION_MS,
    )


async def _evalsha_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_decisions_made_together_share_one_command_and_decide_as_alone(
    redis: Redis, prefix: str
) -> None:
    keys = KeySpace(prefix)
    leases = Leases(redis)
    await _claim(leases, keys.firing("warm", 1), "warm")  # scripts loaded
    firing = [keys.firing("s", slot) for slot in range(20)]
    await _claim(leases, firing[0], "first")  # one key already held
    await leases.finish(firing[0], "token-first", retention_ms=RETENTION_MS)
    before = await _evalsha_calls(redis)
    claims = await asyncio.gather(*(_claim(leases, key, f"t-{i}") for i, key in enumerate(firing)))
    finished = await asyncio.gather(
        *(
            leases.finish(key, f"token-t-{i}", retention_ms=RETENTION_MS)
            for i, key in enumerate(firing)
        )
    )
    sent = await _evalsha_calls(redis) - before - 1  # INFO itself is no EVALSHA; the last reads
    assert claims[0] == Claim("done", "first", "host:1")
    assert claims[1:] == [CLAIMED] * 19
    assert finished == [False] + [True] * 19  # the done key is not this token's to finish
    assert sent <= 6, f"{sent} commands for 40 decisions: they were not batched"
    for i, key in enumerate(firing[1:], 1):
        assert await redis.hget(key, "state") == b"done"
        assert await redis.hget(key, "task_id") == f"t-{i}".encode()


async def test_a_failing_decision_in_a_batch_leaves_the_others_standing(
    redis: Redis, prefix: str
) -> None:
    keys = KeySpace(prefix)
    leases = Leases(redis)
    bad = keys.firing("s", 1)
    await redis.set(bad, "not a hash")  # every script on it fails with WRONGTYPE
    good = [keys.firing("s", slot) for slot in range(2, 6)]
    await _claim(leases, keys.firing("warm", 1), "warm")  # opens the window: the rest gather
    replies = await asyncio.gather(
        *(_claim(leases, key, f"t-{i}") for i, key in enumerate(good[:2])),
        _claim(leases, bad, "bad"),
        *(_claim(leases, key, f"t-{i}") for i, key in enumerate(good[2:], 2)),
        return_exceptions=True,
    )
    assert isinstance(replies[2], ResponseError)
    assert "WRONGTYPE" in str(replies[2])
    assert replies[:2] + replies[3:] == [CLAIMED] * 4


async def test_a_null_reply_in_a_batch_stays_in_its_place(redis: Redis) -> None:
    pipeline = ScriptPipeline(redis, window=0.05)
    nothing = redis.register_script("return nil")
    echo = redis.register_script("return ARGV[1]")
    await pipeline.run(echo, ["k"], ["warm"])  # opens the window: the next calls gather
    replies = await asyncio.gather(
        pipeline.run(nothing, ["a"], []),
        pipeline.run(echo, ["b"], ["x"]),
        pipeline.run(nothing, ["c"], []),
        pipeline.run(echo, ["d"], ["y"]),
    )
    assert replies == [None, b"x", None, b"y"]


async def test_a_batch_whose_reply_was_lost_is_decided_once_on_retry(
    proxy: LatencyProxy, prefix: str
) -> None:
    keys = KeySpace(prefix)
    async with Redis.from_url(proxy.url, socket_timeout=1) as redis:
        leases = Leases(redis)
        await _claim(leases, keys.firing("warm", 1), "warm")  # scripts loaded
        firing = [keys.firing("s", slot) for slot in range(8)]
        proxy.drop_next_reply()
        claims = await asyncio.gather(
            *(
                within(5.0, lambda k=key, i=i: _claim(leases, k, f"t-{i}"))
                for i, key in enumerate(firing)
            )
        )
        assert claims == [CLAIMED] * 8  # each retry found its own claim
        for key in firing:
            assert await redis.hget(key, "attempts") == b"1"  # claimed once, not twice


async def test_a_call_after_a_quiet_spell_is_sent_at_once(redis: Redis) -> None:
    pipeline = ScriptPipeline(redis, window=30.0)
    echo = redis.register_script("return ARGV[1]")
    started = time.monotonic()
    assert await pipeline.run(echo, ["k"], ["first"]) == b"first"
    assert time.monotonic() - started < 5  # not held for the 30 s window


@pytest.mark.parametrize("window", [0.0, 0.02])
async def test_calls_queued_in_a_window_keep_their_own_deadline(
    redis: Redis, window: float
) -> None:
    pipeline = ScriptPipeline(redis, window=window)
    echo = redis.register_script("return ARGV[1]")
    await pipeline.run(echo, ["k"], ["warm"])
    replies = await asyncio.gather(
        *(pipeline.run(echo, ["k"], [str(i)], timeout=5.0) for i in range(50))
    )
    assert replies == [str(i).encode() for i in range(50)]


async def test_calls_of_one_turn_share_one_call(redis: Redis) -> None:
    """``same_turn``: a call made alone is not held; calls made in one turn go as one."""
    pipeline = ScriptPipeline(redis, same_turn=True)
    echo = redis.register_script("return ARGV[1]")
    assert await pipeline.run(echo, ["k"], ["alone"]) == b"alone"
    await asyncio.gather(*(pipeline.run(echo, ["k"], ["warm"]) for _ in range(2)))  # batch form
    before = await _evalsha_calls(redis)
    replies = await asyncio.gather(*(pipeline.run(echo, [f"k{i}"], [f"v{i}"]) for i in range(10)))
    assert replies == [f"v{i}".encode() for i in range(10)]
    assert await _evalsha_calls(redis) - before == 1  # not the first alone, then the rest


async def test_a_batch_of_text_and_numbers_reads_each_argument_as_sent_alone(redis: Redis) -> None:
    """The arguments go as one JSON array of strings: each arrives as Redis would send it."""
    pipeline = ScriptPipeline(redis, same_turn=True)
    echo = redis.register_script("return ARGV[1] .. '|' .. ARGV[2]")
    args = [["é ü", 7], ['a"b\\c', 2.5], ["", -1], [b"raw", 0]]
    alone = [await echo(keys=[f"k{i}"], args=arg) for i, arg in enumerate(args)]
    together = await asyncio.gather(
        *(pipeline.run(echo, [f"k{i}"], arg) for i, arg in enumerate(args))
    )
    assert together == alone


async def test_calls_on_the_wire_fail_when_their_sender_stops(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender cancelled mid-call (loop teardown) fails its calls instead of leaving them."""
    pipeline = ScriptPipeline(redis, same_turn=True)
    script = redis.register_script("return 1")
    hung = asyncio.Event()

    async def never(_batch: object) -> list[object]:
        hung.set()
        await asyncio.Event().wait()
        return []

    monkeypatch.setattr(pipeline, "_send", never)
    calls = [asyncio.create_task(pipeline.run(script, ["k"], [])) for _ in range(2)]
    await asyncio.wait_for(hung.wait(), 5)
    assert pipeline._sender is not None
    pipeline._sender.cancel()
    for call in calls:
        with pytest.raises(RedisConnectionError, match="sender of queued Redis calls stopped"):
            await asyncio.wait_for(call, 5)
    assert not pipeline._busy
