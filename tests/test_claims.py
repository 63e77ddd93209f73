"""The claim protocol (``FiringClaims``): one row of docs/DESIGN.md's table per test.

Every test runs the real scripts on a real redis-server; lease and TTL checks read
Redis's own clock (PTTL, server-side lease deadlines), not a fake one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable

import pytest
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from taskiq_dedup.claims import Claim, FiringClaims, default_holder
from taskiq_dedup.keys import KeySpace
from tests.reliability.proxy import LatencyProxy
from tests.support.polling import eventually
from tests.support.redis_server import RedisServer

TTL_MS = 600_000


@pytest.fixture
async def client(own_redis: RedisServer) -> AsyncIterator[Redis]:
    async with Redis.from_url(own_redis.url) as redis:
        yield redis


@pytest.fixture
def key(prefix: str) -> str:
    return KeySpace(prefix).firings("nightly")


def claims_on(redis: Redis, name: str = "a", **options: float) -> FiringClaims:
    return FiringClaims(redis, name, **options)


async def test_a_new_schedule_wins_only_its_current_slot(client: Redis, key: str) -> None:
    claims = claims_on(client)
    claim = await claims.claim(key, claims.new_attempt(), [10, 20, 30], TTL_MS)
    assert (claim.verdict, claim.slot, claim.previous) == ("won", 30, None)


async def test_a_late_tick_wins_the_earliest_unsent_slot(client: Redis, key: str) -> None:
    claims = claims_on(client)
    first = claims.new_attempt()
    assert (await claims.claim(key, first, [10], TTL_MS)).slot == 10
    assert await claims.confirm(key, first, 10, TTL_MS)
    late = await claims.claim(key, claims.new_attempt(), [10, 20, 30], TTL_MS)
    assert (late.verdict, late.slot, late.previous) == ("won", 20, 10)


async def test_sent_slots_are_not_won_again(client: Redis, key: str) -> None:
    claims = claims_on(client)
    attempt = claims.new_attempt()
    await claims.claim(key, attempt, [10, 20], TTL_MS)
    await claims.confirm(key, attempt, 20, TTL_MS)
    again = await claims_on(client, "b").claim(key, "b#1", [10, 20], TTL_MS)
    assert (again.verdict, again.slot, again.holder) == ("sent", 20, attempt)


async def test_a_live_pending_claim_makes_others_wait(client: Redis, key: str) -> None:
    holder = claims_on(client, "a", pending_lease=100_000)
    attempt = holder.new_attempt()
    await holder.claim(key, attempt, [10], TTL_MS)
    other = await claims_on(client, "b").claim(key, "b#1", [10], TTL_MS)
    assert (other.verdict, other.slot, other.holder) == ("pending", 10, attempt)
    # In seconds, by Redis's clock: a long lease so that a wrong unit shows.
    assert 99_990 < other.lease_left <= 100_000


async def test_a_win_names_a_rival_that_found_a_slot_taken_or_sent_the_last(
    client: Redis, key: str
) -> None:
    """docs/DESIGN.md: 'looked' and the cursor's sender tell a winner another scheduler
    is running (timing only)."""
    a, b = claims_on(client, "a"), claims_on(client, "b")

    async def won_by(claims: FiringClaims, slot: int) -> str:
        """``claims`` wins and sends ``slot``; the rival its win named."""
        attempt = claims.new_attempt()
        claim = await claims.claim(key, attempt, [slot], TTL_MS)
        assert claim.won
        assert await claims.confirm(key, attempt, slot, TTL_MS)
        return claim.holder

    assert await won_by(a, 10) == ""  # a new state
    pending = a.new_attempt()
    assert (await a.claim(key, pending, [20], TTL_MS)).holder == ""  # a sent 10, unlooked
    assert (await b.claim(key, "b#1", [20], TTL_MS)).verdict == "pending"  # b looks at 20
    assert await client.hget(key, "looked") == b"20 b#1"
    assert await a.confirm(key, pending, 20, TTL_MS)
    assert (await b.claim(key, "b#2", [20], TTL_MS)).verdict == "sent"  # and again
    assert await won_by(a, 30) == "b#2"
    # b's look at 20, before the cursor (30), is no rival; a sent 30 itself
    assert await won_by(a, 40) == ""
    # the cursor's sender, another holder, is a rival; a holder's own is not
    sender_of_40 = await client.hget(key, "sent_by")
    assert await won_by(b, 50) == sender_of_40.decode()
    await client.hdel(key, "looked")
    assert await won_by(b, 60) == ""  # history, no look, sent by b
    # a waiter that wins after the pending claim's release names its own look
    held = a.new_attempt()
    assert (await a.claim(key, held, [70], TTL_MS)).won
    assert (await b.claim(key, "b#3", [70], TTL_MS)).verdict == "pending"
    assert await a.release(key, held)
    assert (await b.claim(key, "b#3", [70], TTL_MS)).holder == "b#3"
    # a state lost with Redis's data names none
    await client.delete(key)
    assert await won_by(a, 80) == ""
    # a catch-up claim of a state with no history writes nothing
    await client.delete(key)
    assert (await b.claim(key, "b#4", [90], TTL_MS, fresh=False)).verdict == "sent"
    assert not await client.exists(key)


async def test_a_waiters_looks_again_at_one_slot_write_nothing(client: Redis, key: str) -> None:
    """docs/DESIGN.md: 'looked' is written once per looker and slot, not at every re-look."""
    a, b = claims_on(client, "a", pending_lease=30), claims_on(client, "b")
    await a.claim(key, a.new_attempt(), [10], TTL_MS)  # pending

    async def hsets() -> int:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_hset", {}).get("calls", 0))

    before = await hsets()
    for _ in range(5):  # one waiter's looks on the wait grid
        assert (await b.claim(key, "b#1", [10], TTL_MS)).verdict == "pending"
    assert await hsets() - before == 1
    assert (await b.claim(key, "b#2", [10], TTL_MS)).verdict == "pending"
    assert await hsets() - before == 2  # another attempt's look is recorded
    assert await client.hget(key, "looked") == b"10 b#2"


async def test_a_look_refused_by_a_full_redis_leaves_the_verdict_standing(
    client: Redis, key: str
) -> None:
    """docs/DESIGN.md: the 'looked' write is timing only; out of memory, losers still lose."""
    a, b = claims_on(client, "a", pending_lease=30), claims_on(client, "b")
    sent = a.new_attempt()
    await a.claim(key, sent, [10], TTL_MS)
    await a.confirm(key, sent, 10, TTL_MS)
    await client.config_set("maxmemory-policy", "noeviction")

    async def full(claim: Awaitable[Claim]) -> Claim:
        await client.config_set("maxmemory", "1")  # every write is refused now
        try:
            return await claim
        finally:
            await client.config_set("maxmemory", "0")

    assert (await full(b.claim(key, "b#1", [10], TTL_MS))).verdict == "sent"
    await a.claim(key, a.new_attempt(), [20], TTL_MS)  # pending
    assert (await full(b.claim(key, "b#2", [20], TTL_MS))).verdict == "pending"
    assert await client.hget(key, "looked") is None  # never written, and no error


async def test_a_new_schedule_wins_the_current_slot_it_is_given(client: Redis, key: str) -> None:
    """A cron tick within the clock skew offers a slot still ahead: ``current`` names
    the one a schedule with no history starts from."""
    claims = claims_on(client)
    claim = await claims.claim(key, claims.new_attempt(), [10, 20, 30], TTL_MS, current=20)
    assert (claim.verdict, claim.slot, claim.previous) == ("won", 20, None)


async def test_the_default_holder_names_host_and_process(client: Redis, key: str) -> None:
    holder = claims_on(client, default_holder())
    attempt = holder.new_attempt()
    await holder.claim(key, attempt, [10], TTL_MS)
    other = await claims_on(client, "b").claim(key, "b#1", [10], TTL_MS)
    assert other.holder.startswith(f"{socket.gethostname()}:{os.getpid()}#")


async def test_a_holder_that_is_not_utf8_is_read_not_raised(client: Redis, key: str) -> None:
    """A state written by something else (a corrupt or foreign holder) still gets an
    answer: the scheduler waits for it instead of failing the tick."""
    far = 2**50
    await client.hset(key, mapping={"slot": 10, "holder": b"\xffhost", "lease_until": far})
    other = await claims_on(client, "b").claim(key, "b#1", [10], TTL_MS)
    assert (other.verdict, other.holder) == ("pending", "\ufffdhost")


async def test_a_lapsed_pending_claim_is_taken_over(client: Redis, key: str) -> None:
    holder = claims_on(client, "a", pending_lease=0.3)
    attempt = holder.new_attempt()
    await holder.claim(key, attempt, [10], TTL_MS)  # the holder dies here
    other = claims_on(client, "b")
    replies = []

    async def taken_over() -> bool:
        replies.append(await other.claim(key, "b#1", [10], TTL_MS))
        return replies[-1].won

    await eventually(taken_over, timeout=5)
    assert replies[0].verdict == "pending"  # not before the lease lapsed by Redis's clock
    assert (replies[-1].verdict, replies[-1].slot, replies[-1].holder) == ("takeover", 10, attempt)


async def test_a_released_claim_is_won_at_once(client: Redis, key: str) -> None:
    holder = claims_on(client, "a", pending_lease=30)
    attempt = holder.new_attempt()
    await holder.claim(key, attempt, [10], TTL_MS)
    assert not await holder.release(key, "someone-else")
    assert await holder.release(key, attempt)  # the send failed
    assert not await holder.release(key, attempt)  # a retried release changes nothing
    other = await claims_on(client, "b").claim(key, "b#1", [10], TTL_MS)
    assert (other.verdict, other.slot) == ("won", 10)


async def test_confirm_after_a_takeover_moves_the_cursor_and_keeps_the_new_holder(
    client: Redis, key: str
) -> None:
    first = claims_on(client, "a", pending_lease=0.2)
    attempt = first.new_attempt()
    await first.claim(key, attempt, [10], TTL_MS)
    second = claims_on(client, "b", pending_lease=30)

    async def won() -> bool:
        return (await second.claim(key, "b#1", [10], TTL_MS)).won

    await eventually(won, timeout=5)
    assert not await first.confirm(key, attempt, 10, TTL_MS)  # it did send: a second copy
    fields = await client.hgetall(key)
    assert fields[b"sent"] == b"10"
    assert fields[b"holder"] == b"b#1"
    assert await second.confirm(key, "b#1", 10, TTL_MS)
    assert b"holder" not in await client.hgetall(key)


async def test_a_late_retried_confirm_does_not_move_the_cursor_back(
    client: Redis, key: str
) -> None:
    claims = claims_on(client)
    first = claims.new_attempt()
    await claims.claim(key, first, [10], TTL_MS)
    assert await claims.confirm(key, first, 10, TTL_MS)
    second = claims.new_attempt()
    await claims.claim(key, second, [10, 20], TTL_MS)
    assert await claims.confirm(key, second, 20, TTL_MS)
    await claims.confirm(key, first, 10, TTL_MS)  # a retry of the first, delivered late
    again = await claims_on(client, "b").claim(key, "b#1", [10, 20], TTL_MS)
    assert (again.verdict, again.slot) == ("sent", 20)


async def test_confirm_recreates_a_state_lost_with_its_data(client: Redis, key: str) -> None:
    claims = claims_on(client)
    attempt = claims.new_attempt()
    await claims.claim(key, attempt, [10], TTL_MS)
    await client.delete(key)  # a Redis restart without persistence
    assert await claims.confirm(key, attempt, 10, TTL_MS)
    assert TTL_MS - 30_000 < await client.pttl(key) <= TTL_MS  # made anew with its lifetime
    assert (await claims_on(client, "b").claim(key, "b#1", [10], TTL_MS)).verdict == "sent"


async def test_the_state_lives_its_ttl_by_redis_clock_and_is_never_shortened(
    client: Redis, key: str
) -> None:
    claims = claims_on(client)
    attempt = claims.new_attempt()
    await claims.claim(key, attempt, [10], 50_000)
    assert 45_000 < await client.pttl(key) <= 50_000
    await claims.confirm(key, attempt, 10, 1_000)  # a shorter TTL does not cut it
    assert 45_000 < await client.pttl(key) <= 50_000
    later = claims.new_attempt()
    await claims.claim(key, later, [10, 20], 90_000)
    assert 85_000 < await client.pttl(key) <= 90_000
    await claims.confirm(key, later, 20, 90_000)
    await claims.claim(key, claims.new_attempt(), [20, 30], 1_000)  # nor by a claim
    assert 85_000 < await client.pttl(key) <= 90_000


async def test_a_short_ttl_really_expires(client: Redis, key: str) -> None:
    claims = claims_on(client)
    attempt = claims.new_attempt()
    await claims.claim(key, attempt, [10], 300)
    await claims.confirm(key, attempt, 10, 300)

    async def gone() -> bool:
        return not await client.exists(key)

    await eventually(gone, timeout=5)
    fresh = await claims.claim(key, claims.new_attempt(), [10], TTL_MS)
    assert (fresh.verdict, fresh.slot) == ("won", 10)


async def test_every_script_is_safe_to_retry_after_a_lost_reply(
    proxy: LatencyProxy, key: str
) -> None:
    async with Redis.from_url(proxy.url) as redis:
        claims = claims_on(redis, "a", pending_lease=30)
        loading = claims.new_attempt()
        await claims.claim(key, loading, [5], TTL_MS)  # scripts loaded
        await claims.release(key, "nobody")
        await claims.confirm(key, loading, 5, TTL_MS)
        attempt = claims.new_attempt()
        proxy.drop_next_reply()
        claim = await claims.claim(key, attempt, [10], TTL_MS)  # retried on a new connection
        assert (claim.verdict, claim.slot) == ("won", 10)
        proxy.drop_next_reply()
        assert await claims.renew(key, attempt)  # the retry finds its claim: renewed again
        proxy.drop_next_reply()
        assert await claims.confirm(key, attempt, 10, TTL_MS)  # the retry still says "mine"


async def test_a_claim_on_a_hung_redis_fails_within_its_deadline(
    own_redis: RedisServer, key: str
) -> None:
    async with Redis.from_url(own_redis.url, socket_timeout=5) as redis:
        claims = claims_on(redis, "a", retry_window=1.0)
        await claims.claim(key, claims.new_attempt(), [5], TTL_MS)
        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(Exception, match=r"no reply within 1\.0s \(TimeoutError\)"):
                await claims.claim(key, claims.new_attempt(), [10], TTL_MS)
            elapsed = time.monotonic() - started
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
    # The socket timeout alone is 5 s and the client retries it: the deadline cut it.
    assert elapsed < 3


async def test_refused_connections_are_retried_with_doubling_pauses_until_the_window_ends(
    own_redis: RedisServer, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``CLAIM_RETRY_FIRST_DELAY`` then twice as long each time; the last pause that
    would end past the default 5 s ``retry_window`` is not taken: the error is raised."""
    async with Redis.from_url(own_redis.url, retry=Retry(NoBackoff(), 0)) as redis:
        claims = claims_on(redis, "a")
        await claims.claim(key, claims.new_attempt(), [5], TTL_MS)  # loads the script
        own_redis.kill()  # every call is now refused at once
        caplog.set_level(logging.DEBUG, logger="taskiq_dedup.claims")
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(claims.claim(key, claims.new_attempt(), [10], TTL_MS), 20)
    retried = re.compile(
        rf"Claim call on {re.escape(key)} failed \((?!None\)).+\); retrying in (\S+)s",
    )
    pauses = [retried.fullmatch(r.getMessage()) for r in caplog.records]
    assert all(pauses), [r.getMessage() for r in caplog.records]
    # 0.1 + 0.2 + 0.4 + 0.8 + 1.6 = 3.1 s of pauses; the next (3.2 s) would end past 5 s.
    assert [m.group(1) for m in pauses if m] == ["0.1", "0.2", "0.4", "0.8", "1.6"]


async def test_a_slow_reply_is_awaited_even_with_no_retry_window(
    proxy: LatencyProxy, key: str
) -> None:
    """``MIN_CALL_TIMEOUT``: a busy Redis gets half a second, however little is left."""
    async with Redis.from_url(proxy.url) as redis:
        claims = claims_on(redis, "a", retry_window=0)
        await claims.claim(key, claims.new_attempt(), [5], TTL_MS)  # loads the script
        proxy.set_delay(0.1, 0.1)
        claim = await claims.claim(key, claims.new_attempt(), [10], TTL_MS)
    assert (claim.verdict, claim.slot) == ("pending", 5)


async def test_the_default_pending_lease_is_5_s(client: Redis, key: str) -> None:
    """README.md: a sender that dies after claiming is taken over after 5 s."""
    holder = claims_on(client, "a")
    await holder.claim(key, holder.new_attempt(), [10], TTL_MS)
    other = await claims_on(client, "b").claim(key, "b#1", [10], TTL_MS)
    assert other.verdict == "pending"
    assert 4 < other.lease_left <= 5


async def test_a_burst_has_one_winner_per_schedule_over_few_connections(
    own_redis: RedisServer,
) -> None:
    keys = KeySpace("burst")
    clients = [Redis.from_url(own_redis.url) for _ in range(3)]
    try:
        schedulers = [claims_on(c, f"scheduler-{i}") for i, c in enumerate(clients)]
        firing_keys = [keys.firings(f"s{i}") for i in range(3000)]
        claims = [
            (key, scheduler, scheduler.new_attempt())
            for key in firing_keys
            for scheduler in schedulers
        ]
        results = await asyncio.gather(
            *(scheduler.claim(key, attempt, [60], TTL_MS) for key, scheduler, attempt in claims),
        )
        winners: dict[str, set[str]] = {}
        for (key, _, attempt), result in zip(claims, results, strict=True):
            if result.won:
                winners.setdefault(key, set()).add(attempt)
        assert sorted(winners) == sorted(firing_keys)
        assert all(len(holders) == 1 for holders in winners.values())
        losers = [r for r in results if not r.won]
        assert len(losers) == 2 * len(firing_keys)
        assert all(r.verdict == "pending" and r.holder.startswith("scheduler-") for r in losers)
        info = await clients[0].info("clients")
        assert info["connected_clients"] <= 3 * 2 + 1  # batched: not one connection per claim
    finally:
        for client in clients:
            await client.aclose()


async def test_a_single_claim_is_one_round_trip(client: Redis, key: str) -> None:
    claims = claims_on(client, "me")
    first = claims.new_attempt()
    await claims.claim(key, first, [60], TTL_MS)
    await claims.confirm(key + "-warm", "x", 1, TTL_MS)  # loads the script once
    await client.config_resetstat()
    second = await claims.claim(key, claims.new_attempt(), [60], TTL_MS)
    await claims.confirm(key, first, 60, TTL_MS)
    stats = await client.info("commandstats")
    assert second.verdict == "pending"
    # One EVALSHA per decision on the wire (commandstats also counts the commands
    # run inside the scripts): no SET, no script reload.
    assert stats["cmdstat_evalsha"]["calls"] == 2, stats
    assert not {"cmdstat_set", "cmdstat_eval", "cmdstat_script", "cmdstat_script|load"} & set(stats)


async def test_a_lapsed_first_send_is_taken_over_from_its_own_slot(client: Redis, key: str) -> None:
    """Found by the randomized model: with no cursor yet, a takeover used to take the
    current slot, silently dropping the dead sender's earlier one."""
    dead = claims_on(client, "a", pending_lease=0.2)
    attempt = dead.new_attempt()
    assert (await dead.claim(key, attempt, [10], TTL_MS)).slot == 10
    other = claims_on(client, "b")
    replies = []

    async def taken_over() -> bool:
        replies.append(await other.claim(key, "b#1", [10, 20, 30], TTL_MS))
        return replies[-1].won

    await eventually(taken_over, timeout=5)
    assert (replies[-1].verdict, replies[-1].slot, replies[-1].previous) == ("takeover", 10, 9)


async def test_a_failed_first_send_keeps_its_slot_next_in_line(client: Redis, key: str) -> None:
    """Found in review: releasing a schedule's first claim emptied the hash, so the
    next claim had no history, took the current slot and dropped the released one."""
    claims = claims_on(client, "a", pending_lease=30)
    attempt = claims.new_attempt()
    assert (await claims.claim(key, attempt, [10], TTL_MS)).slot == 10
    assert await claims.release(key, attempt)  # the kick raised
    retry = await claims.claim(key, claims.new_attempt(), [10, 20, 30], TTL_MS)
    assert (retry.verdict, retry.slot, retry.previous) == ("won", 10, 9)


async def test_missed_slots_are_reported_to_one_winner_only(client: Redis, key: str) -> None:
    """Found in review: a slot released (or lapsed) after a claim that skipped missed
    slots was won again with the old cursor, so the same slots were reported twice."""
    claims = claims_on(client, "a", pending_lease=0.2)
    first = claims.new_attempt()
    await claims.claim(key, first, [10], TTL_MS)
    await claims.confirm(key, first, 10, TTL_MS)
    gap = await claims.claim(key, (attempt := claims.new_attempt()), [40, 50], TTL_MS)
    assert (gap.slot, gap.previous) == (40, 10)  # 20 and 30 fell out of the window
    retried = await claims.claim(key, attempt, [40, 50], TTL_MS)  # its reply was lost
    assert (retried.slot, retried.previous) == (40, 10)  # the retry still reports them
    assert await claims.release(key, attempt)
    rewon = await claims.claim(key, claims.new_attempt(), [40, 50], TTL_MS)
    assert (rewon.slot, rewon.previous) == (40, 39)  # nothing missed between 39 and 40
    replies = []

    async def taken_over() -> bool:  # its holder dies: the takeover reports nothing either
        replies.append(await claims_on(client, "b").claim(key, "b#1", [40, 50], TTL_MS))
        return replies[-1].won

    await eventually(taken_over, timeout=5)
    assert (replies[-1].verdict, replies[-1].slot, replies[-1].previous) == ("takeover", 40, 39)


async def test_a_lapsed_claims_slot_past_the_window_is_unconfirmed_not_missed(
    client: Redis, key: str
) -> None:
    """Found by the fault model: a sender died after claiming 20 (perhaps after its
    kick), and 20 left the window before anyone took it over. The takeover's reply
    names 20 apart from the slots it passes, so 20 is not reported missed; 30, which
    nobody claimed, still is."""
    claims = claims_on(client, "a", pending_lease=0.2)
    first = claims.new_attempt()
    await claims.claim(key, first, [10], TTL_MS)
    await claims.confirm(key, first, 10, TTL_MS)
    dead = await claims.claim(key, claims.new_attempt(), [20], TTL_MS)
    assert (dead.slot, dead.unconfirmed) == (20, None)
    replies = []

    async def taken_over() -> bool:
        replies.append(await claims_on(client, "b").claim(key, "b#1", [40, 50], TTL_MS))
        return replies[-1].won

    await eventually(taken_over, timeout=5)
    taken = replies[-1]
    assert (taken.verdict, taken.slot, taken.previous, taken.unconfirmed) == (
        "takeover",
        40,
        19,
        20,
    )
    retried = await claims_on(client, "b").claim(key, "b#1", [40, 50], TTL_MS)  # reply lost
    assert (retried.slot, retried.previous, retried.unconfirmed) == (40, 19, 20)
    assert await claims_on(client, "b").confirm(key, "b#1", 40, TTL_MS, takeover=True)
    assert await client.hget(key, "unconfirmed") is None  # gone with the claim


async def test_a_takeover_of_the_lapsed_slot_reports_none_and_its_release_keeps_it_unconfirmed(
    client: Redis, key: str
) -> None:
    """A takeover that re-sends the lapsed slot passes nothing. If its send fails
    (a release), the first sender may still have sent the slot: found by the fault
    model, the claim that passes it later reports it unconfirmed, not missed."""
    claims = claims_on(client, "a", pending_lease=0.2)
    first = claims.new_attempt()
    await claims.claim(key, first, [10], TTL_MS)
    await claims.confirm(key, first, 10, TTL_MS)
    await claims.claim(key, claims.new_attempt(), [20], TTL_MS)
    replies = []

    async def taken_over() -> bool:
        replies.append(await claims_on(client, "b").claim(key, "b#1", [20, 30], TTL_MS))
        return replies[-1].won

    await eventually(taken_over, timeout=5)
    assert (replies[-1].verdict, replies[-1].slot, replies[-1].unconfirmed) == (
        "takeover",
        20,
        None,
    )
    assert await claims_on(client, "b").release(key, "b#1")  # its send failed
    rewon = await claims.claim(key, claims.new_attempt(), [40], TTL_MS)
    assert (rewon.verdict, rewon.slot, rewon.previous, rewon.unconfirmed) == ("won", 40, 19, 20)


async def test_a_released_claims_slot_past_the_window_is_missed(client: Redis, key: str) -> None:
    """A send that failed, with no lapsed claim before it, sent nothing: missed."""
    claims = claims_on(client, "a")
    first = claims.new_attempt()
    await claims.claim(key, first, [10], TTL_MS)
    await claims.confirm(key, first, 10, TTL_MS)
    failed = claims.new_attempt()
    await claims.claim(key, failed, [20], TTL_MS)
    assert await claims.release(key, failed)
    later = await claims.claim(key, claims.new_attempt(), [40], TTL_MS)
    assert (later.verdict, later.slot, later.previous, later.unconfirmed) == ("won", 40, 19, None)


async def test_a_lapsed_claim_whose_slot_a_late_confirm_sent_has_none_unconfirmed(
    client: Redis, key: str
) -> None:
    """a claims 20 and stalls; b takes 20 over and dies; a's late confirm moves the
    cursor to 20. 20 is sent, so the claim that passes b's lapsed claim reports nothing."""
    claims = claims_on(client, "a", pending_lease=0.2)
    stalled = claims.new_attempt()
    await claims.claim(key, stalled, [20], TTL_MS)
    replies = []

    async def taken_over() -> bool:
        replies.append(await claims.claim(key, "b#1", [20], TTL_MS))
        return replies[-1].won

    await eventually(taken_over, timeout=5)
    assert not await claims.confirm(key, stalled, 20, TTL_MS)  # b holds it: 0, cursor 20
    replies.clear()

    async def passed() -> bool:
        replies.append(await claims.claim(key, "c#1", [40], TTL_MS))
        return replies[-1].won

    await eventually(passed, timeout=5)
    assert (replies[-1].verdict, replies[-1].previous, replies[-1].unconfirmed) == (
        "takeover",
        20,
        None,
    )


async def test_a_retry_that_finds_its_own_claim_restarts_the_lease(client: Redis, key: str) -> None:
    claims = claims_on(client, "a", pending_lease=30)
    attempt = claims.new_attempt()
    await claims.claim(key, attempt, [10], TTL_MS)
    await client.hset(key, "lease_until", 0)  # the retries took the whole lease
    again = await claims.claim(key, attempt, [10], TTL_MS)
    assert again.won
    other = await claims_on(client, "b").claim(key, "b#1", [10], TTL_MS)
    assert other.verdict == "pending"  # not taken over under the retried holder


async def test_nothing_left_to_send_without_a_cursor_reads_as_sent(client: Redis, key: str) -> None:
    """Found in review: a lapsed first send at a slot after every candidate made the
    script answer 'sent' with no slot, and the reply failed to parse."""
    dead = claims_on(client, "a", pending_lease=0.2)
    await dead.claim(key, dead.new_attempt(), [20], TTL_MS)
    other = claims_on(client, "b")
    replies = []

    async def answered() -> bool:
        replies.append(await other.claim(key, "b#1", [10], TTL_MS))
        return replies[-1].verdict != "pending"

    await eventually(answered, timeout=5)
    assert (replies[-1].verdict, replies[-1].won) == ("sent", False)


async def test_a_call_queued_behind_a_hung_round_trip_keeps_its_own_deadline(
    own_redis: RedisServer, key: str
) -> None:
    """Found in review: a call queued behind a hung batch waited out that batch's
    timeout before its own began."""
    async with Redis.from_url(own_redis.url, socket_timeout=10) as redis:
        slow = claims_on(redis, "a", retry_window=0)
        await slow.claim(key, slow.new_attempt(), [5], TTL_MS)  # loads the script
        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            pipeline = slow._pipeline
            first = asyncio.ensure_future(
                pipeline.run(slow._confirm, [key], ["x", 1, TTL_MS], timeout=4.0),
            )
            await asyncio.sleep(0.05)  # the first call is on the wire
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await pipeline.run(slow._confirm, [key], ["y", 1, TTL_MS], timeout=0.5)
            queued_for = time.monotonic() - started
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        assert await first == 0  # answered once Redis resumed, within its own 4 s
    # Its own 0.5 s, not the 4 s of the call ahead of it.
    assert queued_for < 2.0


# ------------------------------------------------------------------ renewal


async def test_a_renewed_claim_outlives_its_lease_and_lapses_once_renewals_stop(
    client: Redis, key: str
) -> None:
    holder = claims_on(client, "a", pending_lease=0.3)
    attempt = holder.new_attempt()
    await holder.claim(key, attempt, [10], TTL_MS)
    other = claims_on(client, "b")
    for _ in range(6):  # 0.6 s: two leases, renewed every third of one
        await asyncio.sleep(0.1)
        assert await holder.renew(key, attempt)
        assert (await other.claim(key, "b#1", [10], TTL_MS)).verdict == "pending"
    replies = []

    async def taken_over() -> bool:  # the holder dies: no more renewals
        replies.append(await other.claim(key, "b#1", [10], TTL_MS))
        return replies[-1].won

    await eventually(taken_over, timeout=5)
    assert (replies[-1].verdict, replies[-1].holder) == ("takeover", attempt)
    lease = await client.hget(key, "lease_until")
    assert not await holder.renew(key, attempt)  # a late renewal: not its claim any more
    assert await client.hget(key, "lease_until") == lease  # the taker's lease untouched
    assert await client.hget(key, "holder") == b"b#1"


async def test_a_renewal_after_confirm_release_or_loss_writes_nothing(
    client: Redis, key: str
) -> None:
    claims = claims_on(client, "a", pending_lease=30)
    confirmed = claims.new_attempt()
    await claims.claim(key, confirmed, [10], TTL_MS)
    await claims.confirm(key, confirmed, 10, TTL_MS)
    before = await client.hgetall(key)
    assert not await claims.renew(key, confirmed)
    released = claims.new_attempt()
    await claims.claim(key, released, [20], TTL_MS)
    await claims.release(key, released)
    assert not await claims.renew(key, released)
    assert {k: v for k, v in (await client.hgetall(key)).items() if k != b"log"} == {
        k: v for k, v in before.items() if k != b"log"
    } | {b"sent": b"19", b"sent_by": before[b"sent_by"]}
    await client.delete(key)  # Redis lost its data
    assert not await claims.renew(key, released)
    assert not await client.exists(key)  # a renewal never recreates a state
