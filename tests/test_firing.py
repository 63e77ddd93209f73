"""``FiringCoordinator``: how long a firing state lives, what each outcome logs and counts.

Read from Redis's own clock (``PTTL``): the fake ``now`` given to the coordinator
moves only the slot arithmetic, so these checks do not depend on today's date.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from taskiq import ScheduledTask

from taskiq_dedup import firing
from taskiq_dedup.claims import FiringClaims
from taskiq_dedup.firing import FiringCoordinator, _Turns
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.ledger import history
from taskiq_dedup.triggers import Trigger, parse_trigger
from tests.support.redis_server import RedisServer

DAY_MS = 24 * 3600 * 1000
"""docs/DESIGN.md: a firing state lives at least a day after its last claim."""
SLACK_MS = 30_000
"""Time that may pass between the claim and the read: far less than a day."""
NOW = datetime(2026, 3, 10, 9, 0, 30, tzinfo=timezone.utc)


@pytest.fixture
def coordinator(redis: Redis, prefix: str) -> FiringCoordinator:
    claims = FiringClaims(redis, "a")
    return FiringCoordinator(claims, KeySpace(prefix), one_off_grace=timedelta(days=1))


def cron(expression: str) -> ScheduledTask:
    return ScheduledTask(task_name="app:job", labels={}, args=[], kwargs={}, cron=expression)


async def test_an_every_minute_state_lives_a_day_by_redis_clock(
    coordinator: FiringCoordinator, redis: Redis
) -> None:
    trigger = parse_trigger(cron("* * * * *"))
    attempt = await coordinator.acquire("minutely", trigger, NOW)
    assert attempt is not None
    assert DAY_MS - SLACK_MS < await redis.pttl(attempt.key) <= DAY_MS
    await coordinator.confirm(attempt)
    assert DAY_MS - SLACK_MS < await redis.pttl(attempt.key) <= DAY_MS


async def test_a_weekly_state_outlives_its_next_firing(
    coordinator: FiringCoordinator, redis: Redis
) -> None:
    """A period longer than a day keeps the state past the next firing's late window."""
    trigger = parse_trigger(cron("0 9 * * 2"))  # NOW is a Tuesday, 09:00:30
    attempt = await coordinator.acquire("weekly", trigger, NOW)
    assert attempt is not None
    expected_ms = (trigger.state_expiry(attempt.slot) - int(NOW.timestamp())) * 1000
    assert expected_ms > 7 * DAY_MS
    assert expected_ms - SLACK_MS < await redis.pttl(attempt.key) <= expected_ms


# ------------------------------------------------ what each outcome logs and counts


def coordinator_on(redis: Redis, prefix: str, name: str, **options: float) -> FiringCoordinator:
    lease = options.pop("pending_lease", 30.0)
    claims = FiringClaims(redis, name, pending_lease=lease, **options)
    return FiringCoordinator(claims, KeySpace(prefix), one_off_grace=timedelta(days=1))


def minutely() -> Trigger:
    return parse_trigger(cron("* * * * *"))


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


SLOT = int(datetime(2026, 3, 10, 9, 0, tzinfo=timezone.utc).timestamp())
"""The cron slot of ``NOW``."""


async def test_a_firing_sent_elsewhere_is_not_sent_and_says_by_whom(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    sender = coordinator_on(redis, prefix, "a")
    other = coordinator_on(redis, prefix, "b")
    caplog.set_level(logging.INFO, logger="taskiq_dedup.firing")
    for schedule in ("s1", "s2"):
        attempt = await sender.acquire(schedule, minutely(), NOW)
        assert attempt is not None
        await sender.confirm(attempt)
        assert await other.acquire(schedule, minutely(), NOW) is None
        assert messages(caplog, logging.INFO)[-1] == (
            f"Firing {SLOT} of schedule {schedule} was sent by {attempt.token}; "
            "not sending it again"
        )
    assert (other.stats.duplicates_cancelled, sender.stats.confirmed) == (2, 2)
    assert sender.stats.claimed == 2


async def test_a_lapsed_sender_is_taken_over_and_its_late_confirm_is_logged(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    dying = coordinator_on(redis, prefix, "a", pending_lease=0.2)
    other = coordinator_on(redis, prefix, "b")
    caplog.set_level(logging.INFO, logger="taskiq_dedup.firing")
    for schedule in ("s1", "s2"):
        first = await dying.acquire(schedule, minutely(), NOW)
        assert first is not None
        await dying.close()  # the process dies: nothing renews its lease
        taken = await other.acquire(schedule, minutely(), NOW)
        assert taken is not None
        assert (taken.takeover, taken.slot) == (True, SLOT)
        assert messages(caplog, logging.WARNING)[-1] == (
            f"Took over firing {SLOT} of schedule {schedule} from {first.token}, whose "
            "send did not confirm within its lease"
        )
        await other.confirm(taken)
        caplog.clear()
        await dying.confirm(first)  # it did send: a second copy, for the worker guard
        assert messages(caplog, logging.INFO) == [
            f"Firing {SLOT} of schedule {schedule} was taken over while this send ran; "
            "the worker guard drops the second copy"
        ]
    assert other.stats.takeovers == 2


async def test_a_late_slot_is_sent_late_and_says_how_late(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = coordinator_on(redis, prefix, "a")
    caplog.set_level(logging.INFO, logger="taskiq_dedup.firing")
    for schedule in ("s1", "s2"):
        attempt = await coordinator.acquire(schedule, minutely(), NOW)
        assert attempt is not None
        await coordinator.confirm(attempt)
        late = await coordinator.acquire(schedule, minutely(), NOW + timedelta(minutes=2))
        assert late is not None
        assert (late.slot, late.behind) == (SLOT + 60, True)
        assert messages(caplog, logging.WARNING)[-1] == (
            f"Sending firing {SLOT + 60} of schedule {schedule} late (90s after its time)"
        )
    assert coordinator.stats.sent_late == 2


async def test_slots_past_the_window_are_reported_missed_with_their_utc_time(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = coordinator_on(redis, prefix, "a")
    attempt = await coordinator.acquire("s1", minutely(), NOW)
    assert attempt is not None
    await coordinator.confirm(attempt)
    caplog.set_level(logging.INFO, logger="taskiq_dedup.firing")
    won = await coordinator.acquire("s1", minutely(), NOW + timedelta(minutes=10))
    assert won is not None
    assert won.slot == SLOT + 8 * 60  # the oldest slot still in the 2 min window
    expected = [
        f"Firing {SLOT + m * 60} (2026-03-10T09:0{m}:00+00:00) of schedule s1 was never "
        "sent: every scheduler was down, blocked or failing past the late window"
        for m in range(1, 8)
    ]
    assert messages(caplog, logging.ERROR) == expected
    assert coordinator.stats.missed == 7


async def test_a_dead_senders_slot_past_the_window_is_unconfirmed_and_the_gap_missed(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/DESIGN.md, the row "send -> confirm, and the slot leaves every scheduler's
    candidates": a sender claims 09:01 and dies unconfirmed (perhaps after its kick);
    nobody claims the schedule until 09:10. 09:01 is reported unconfirmed (WARNING,
    its own counter and ledger outcome), the unclaimed 09:02-09:07 missed."""
    dying = coordinator_on(redis, prefix, "a", pending_lease=0.2)
    later = coordinator_on(redis, prefix, "b")
    first = await dying.acquire("s1", minutely(), NOW)
    assert first is not None
    await dying.confirm(first)
    dead = await dying.acquire("s1", minutely(), NOW + timedelta(minutes=1))
    assert dead is not None  # its kick may have happened; it never confirms
    await dying.close()  # the process is gone, and with it the loop renewing its lease
    caplog.set_level(logging.INFO, logger="taskiq_dedup.firing")
    won = await later.acquire("s1", minutely(), NOW + timedelta(minutes=10))
    assert won is not None
    assert (won.slot, won.takeover, won.unconfirmed) == (SLOT + 8 * 60, True, SLOT + 60)
    assert won.missed == tuple(SLOT + m * 60 for m in range(2, 8))
    assert (
        f"Firing {SLOT + 60} (2026-03-10T09:01:00+00:00) of schedule s1 is unconfirmed: "
        f"its sender {dead.token} claimed it and stopped before confirming, perhaps "
        "after sending it (the worker guard runs it at most once); too late to send it again"
    ) in messages(caplog, logging.WARNING)
    assert [r.slot for r in caplog.records if r.levelno == logging.ERROR] == list(won.missed)  # type: ignore[attr-defined]
    assert (later.stats.unconfirmed, later.stats.missed) == (1, 6)
    await later.confirm(won)
    entries = await history(redis, KeySpace(prefix), "s1")
    assert [(e.slot, e.outcome, e.taken_over) for e in entries] == [
        (SLOT, "sent", False),
        (SLOT + 60, "unconfirmed", False),
        *((slot, "missed", False) for slot in won.missed),
        (SLOT + 8 * 60, "sent", True),
    ]
    unconfirmed = entries[1]
    assert unconfirmed.claimed_by == won.token
    assert (unconfirmed.sent_at, unconfirmed.detected_at is not None) == (None, True)


async def test_an_unconfirmed_slot_passed_by_a_win_names_no_rival_as_its_sender(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A win's ``Claim.holder`` is a rival (another scheduler's look), not the sender of
    the lapsed slot it passes: the WARNING must not blame the scheduler that looked."""
    dying = coordinator_on(redis, prefix, "x", pending_lease=0.2)
    first = await dying.acquire("s1", minutely(), NOW, stagger=False)
    assert first is not None
    await dying.confirm(first)
    assert await dying.acquire("s1", minutely(), NOW + timedelta(minutes=1)) is not None
    await dying.close()  # died unconfirmed
    taker = coordinator_on(redis, prefix, "y")
    taken = await taker.acquire("s1", minutely(), NOW + timedelta(minutes=1))
    assert taken is not None
    assert taken.takeover
    looker = coordinator_on(redis, prefix, "z").claims
    look = await looker.claim(taken.key, "z#1", [taken.slot], 60_000)
    assert look.verdict == "pending"  # z looked at the taken-over slot
    await taker.release(taken)  # its send failed: the slot stays perhaps sent by x
    caplog.set_level(logging.INFO, logger="taskiq_dedup.firing")
    later = coordinator_on(redis, prefix, "w")
    won = await later.acquire("s1", minutely(), NOW + timedelta(minutes=10))
    assert won is not None
    assert won.unconfirmed == SLOT + 60
    (warning,) = [m for m in messages(caplog, logging.WARNING) if "is unconfirmed" in m]
    assert "z#1" not in warning
    assert "is unconfirmed: its sender (not recorded) claimed it" in warning  # a win's passed slot
    await taker.close()
    await later.close()


async def test_a_wait_for_a_live_sender_gives_up_after_its_limit(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    sender = coordinator_on(redis, prefix, "a")
    impatient = coordinator_on(redis, prefix, "b")
    impatient.wait = 0.2
    caplog.set_level(logging.INFO, logger="taskiq_dedup.firing")
    for schedule in ("s1", "s2"):
        attempt = await sender.acquire(schedule, minutely(), NOW)
        assert attempt is not None
        assert await impatient.acquire(schedule, minutely(), NOW) is None
        assert messages(caplog, logging.WARNING)[-1] == (
            f"Firing {SLOT} of schedule {schedule} is still being sent by {attempt.token} "
            "after 0.2s; leaving it to that sender (a later tick takes it over if it died)"
        )
    assert impatient.stats.waits_given_up == 2


async def test_a_released_slot_is_won_at_once_and_counted(redis: Redis, prefix: str) -> None:
    failing = coordinator_on(redis, prefix, "a")
    other = coordinator_on(redis, prefix, "b")
    for schedule in ("s1", "s2"):
        attempt = await failing.acquire(schedule, minutely(), NOW)
        assert attempt is not None
        await failing.release(attempt)
        retried = await other.acquire(schedule, minutely(), NOW)
        assert retried is not None
        assert (retried.slot, retried.takeover) == (SLOT, False)
    assert failing.stats.send_failures == 2


async def test_claim_errors_are_counted_and_raised(own_redis: RedisServer, prefix: str) -> None:
    async with Redis.from_url(own_redis.url) as redis:
        coordinator = coordinator_on(redis, prefix, "a", retry_window=0)
        own_redis.kill()
        for schedule in ("s1", "s2"):
            with pytest.raises(RedisError):
                await coordinator.acquire(schedule, minutely(), NOW)
    assert coordinator.stats.claim_errors == 2


# ------------------------------------ a claim offers only the slots after the last cursor


def every_second() -> Trigger:
    return parse_trigger(
        ScheduledTask(task_name="app:job", labels={}, args=[], kwargs={}, interval=1)
    )


async def test_after_a_confirm_a_claim_offers_only_the_slots_after_it(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1 s interval's window is ~120 slots: sent at every tick, they cost more than the claim."""
    coordinator = coordinator_on(redis, prefix, "a")
    offered: list[list[int]] = []
    claim = coordinator.claims.claim

    async def spy(
        key: str, attempt: str, candidates: list[int], ttl_ms: int, **kw: object
    ) -> object:
        offered.append(list(candidates))
        return await claim(key, attempt, candidates, ttl_ms, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(coordinator.claims, "claim", spy)
    first = await coordinator.acquire("s1", every_second(), NOW)
    assert first is not None
    await coordinator.confirm(first)
    second = await coordinator.acquire("s1", every_second(), NOW + timedelta(seconds=3))
    assert second is not None
    assert len(offered[0]) > 100
    assert offered[1] == [first.slot + 1, first.slot + 2, first.slot + 3]
    assert second.slot == first.slot + 1  # still the earliest unsent: nothing skipped


async def test_a_state_lost_after_the_cursor_was_seen_still_takes_the_current_slot(
    redis: Redis, prefix: str
) -> None:
    coordinator = coordinator_on(redis, prefix, "a")
    first = await coordinator.acquire("s1", every_second(), NOW)
    assert first is not None
    await coordinator.confirm(first)
    await redis.delete(first.key)  # Redis lost its data
    later = await coordinator.acquire("s1", every_second(), NOW + timedelta(seconds=5))
    assert later is not None
    assert later.slot == first.slot + 5  # no history: the current slot only


async def test_a_cursor_seen_sent_elsewhere_is_remembered(redis: Redis, prefix: str) -> None:
    sender = coordinator_on(redis, prefix, "a")
    other = coordinator_on(redis, prefix, "b")
    attempt = await sender.acquire("s1", every_second(), NOW)
    assert attempt is not None
    await sender.confirm(attempt)
    assert await other.acquire("s1", every_second(), NOW) is None
    assert other._cursors[attempt.key] == attempt.slot


async def test_the_renewal_loop_holds_only_unconfirmed_claims_and_ends_with_them(
    redis: Redis, prefix: str
) -> None:
    coordinator = coordinator_on(redis, prefix, "a", pending_lease=0.3)
    kept = await coordinator.acquire("s1", minutely(), NOW)
    released = await coordinator.acquire("s2", minutely(), NOW)
    assert kept is not None
    assert released is not None
    await coordinator.release(released)
    await asyncio.sleep(0.5)  # past the lease: renewed meanwhile
    other = FiringClaims(redis, "b")
    assert (await other.claim(kept.key, "b#1", [kept.slot], DAY_MS)).verdict == "pending"
    await coordinator.confirm(kept)
    assert coordinator._held == {}
    await asyncio.sleep(0.2)  # the loop's next round finds nothing and ends
    assert coordinator._renewer is not None
    assert coordinator._renewer.done()
    assert coordinator.stats.renewals >= 1


async def test_a_waiter_keeps_waiting_for_a_renewing_holder_past_its_own_limit(
    redis: Redis, prefix: str
) -> None:
    holder = coordinator_on(redis, prefix, "a", pending_lease=0.3)
    waiter = coordinator_on(redis, prefix, "b")
    waiter.wait = 0.2  # for a holder that does not renew
    attempt = await holder.acquire("s1", minutely(), NOW)
    assert attempt is not None

    async def confirm_late() -> None:
        await asyncio.sleep(1.0)  # a send queued behind others: renewed meanwhile
        await holder.confirm(attempt)

    confirming = asyncio.create_task(confirm_late())
    assert await waiter.acquire("s1", minutely(), NOW) is None
    await confirming
    assert (waiter.stats.duplicates_cancelled, waiter.stats.waits_given_up) == (1, 0)
    assert waiter.stats.takeovers == 0


def count_claims(
    monkeypatch: pytest.MonkeyPatch, coordinator: FiringCoordinator
) -> Callable[[], int]:
    """Count ``coordinator``'s claim calls from now on; return a reader of the count."""
    calls = 0
    claim = coordinator.claims.claim

    async def counted(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return await claim(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(coordinator.claims, "claim", counted)
    return lambda: calls


async def test_many_waits_together_look_no_more_often_than_the_process_rate(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("taskiq_dedup.firing.MAX_WAIT_POLLS_PER_SECOND", 10)
    holder = coordinator_on(redis, prefix, "a")  # a 30 s lease, renewed every 10 s
    waiter = coordinator_on(redis, prefix, "b")
    waiter.wait = 1.0
    for n in range(5):
        assert await holder.acquire(f"s{n}", minutely(), NOW) is not None
    calls = count_claims(monkeypatch, waiter)
    waits = [waiter.acquire(f"s{n}", minutely(), NOW) for n in range(5)]
    assert await asyncio.gather(*waits) == [None] * 5
    # 5 first looks, at most 10 a second for the 1 s wait, 5 last looks at its end;
    # uncapped, each would look at 0, 0.05, 0.15, 0.35, 0.75 and 1 s: 30
    assert calls() <= 5 + 10 + 5
    assert waiter.stats.waits_given_up == 5
    await holder.close()


async def test_a_process_waiters_look_again_together_in_one_call(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/DESIGN.md: waits end on a shared grid, so one process's looks share a call."""
    monkeypatch.setattr("taskiq_dedup.firing.STAGGER_STEPS", 1)  # every first look at once
    holder = coordinator_on(redis, prefix, "a")  # a 30 s lease: live all along
    waiter = coordinator_on(redis, prefix, "b")
    count = 200
    won = await asyncio.gather(*(holder.acquire(f"s{n}", minutely(), NOW) for n in range(count)))
    looks = count_claims(monkeypatch, waiter)
    waits = asyncio.gather(*(waiter.acquire(f"s{n}", minutely(), NOW) for n in range(count)))
    deadline = time.monotonic() + 5
    while looks() < count or waiter._waiting < count:  # every first look answered: pending
        assert time.monotonic() < deadline, (looks(), waiter._waiting)
        await asyncio.sleep(0.001)
    first_looks, before = looks(), await _evalsha_calls(redis)
    await asyncio.sleep(0.5)
    relooks, calls = looks() - first_looks, await _evalsha_calls(redis) - before
    assert relooks >= count  # each looked again at least once meanwhile
    # one call per grid point at most (0.5 s / WAIT_GRID = 10); a call per waiter
    # woken at its own microsecond would be hundreds
    assert calls <= 11, (relooks, calls)
    await asyncio.gather(*(holder.confirm(attempt) for attempt in won if attempt is not None))
    assert await waits == [None] * count
    assert waiter.stats.duplicates_cancelled == count
    await holder.close()


@pytest.mark.parametrize(
    ("holders", "schedule_id"),
    [
        (("a", "b", "c"), "s{n}"),
        # one length each: a linear hash (CRC32) gave such pairs one step for every id
        (("host:1000", "host:1001", "host:1002"), "{n:032x}"),
    ],
)
def test_stagger_steps_make_each_scheduler_first_for_a_share_of_schedules(
    holders: tuple[str, ...], schedule_id: str
) -> None:
    """docs/DESIGN.md: each scheduler's step is the only earliest one for a share of ids."""
    ids = [schedule_id.format(n=n) for n in range(300)]
    first = [0] * len(holders)
    for schedule in ids:
        steps = [firing._stagger_step(holder, schedule) for holder in holders]
        if steps.count(min(steps)) == 1:
            first[steps.index(min(steps))] += 1
    # uniform steps: each is the only earliest for ~1/5 of ids; never for none
    assert min(first) >= len(ids) // 10, first


async def test_first_claims_go_in_step_order(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/DESIGN.md: a tick's first claims are made step by step, each step together."""
    coordinator = coordinator_on(redis, prefix, "a")
    made: list[str] = []  # the schedule of each claim call, in the order made
    claim = coordinator.claims.claim

    async def recorded(key: str, *args: object, **kwargs: object) -> object:
        made.append(key)
        return await claim(key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(coordinator.claims, "claim", recorded)
    # Steps count from the next step boundary after each claim's start: claims started
    # on either side of a boundary share timer times (step n of one, n + 1 of the other).
    # A long step, entered just past a boundary, keeps all 40 starts in one window.
    monkeypatch.setattr("taskiq_dedup.firing.STAGGER_STEP", 0.1)
    step = firing.STAGGER_STEP
    await firing._sleep_until(math.ceil(asyncio.get_running_loop().time() / step) * step)
    schedules = [f"s{n}" for n in range(40)]
    won = await asyncio.gather(*(coordinator.acquire(s, minutely(), NOW) for s in schedules))
    assert all(attempt is not None for attempt in won)
    step_of = {coordinator.key(s): firing._stagger_step("a", s) for s in schedules}
    steps = [step_of[key] for key in made]
    assert steps == sorted(steps)  # no claim of a later step before one of an earlier step
    assert len(set(steps)) == firing.STAGGER_STEPS  # 40 schedules use every step
    await coordinator.close()


@pytest.mark.parametrize("other", ["b", "a"], ids=["other-name", "same-name"])
async def test_a_lone_scheduler_stops_staggering_and_staggers_again_once_another_looks(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch, other: str
) -> None:
    """docs/DESIGN.md: alone, only a schedule's first claim waits for its step; with two
    schedulers (two processes, even of one holder name) every first claim does."""
    stepped: list[str] = []  # which coordinator's claims waited for their step
    sleep_to_step = firing._sleep_to_step

    def counting(name: str) -> Callable[[int], Awaitable[None]]:
        async def counted(step: int) -> None:
            stepped.append(name)
            await sleep_to_step(step)

        return counted

    a, b = coordinator_on(redis, prefix, "a"), coordinator_on(redis, prefix, other)
    minute = timedelta(minutes=1)

    async def tick(coordinator: FiringCoordinator, now: datetime) -> bool:
        name = "a" if coordinator is a else "b"
        monkeypatch.setattr("taskiq_dedup.firing._sleep_to_step", counting(name))
        attempt = await coordinator.acquire("s", minutely(), now)
        if attempt is not None:
            await coordinator.confirm(attempt)
        return attempt is not None

    for n in range(3):  # a alone: the first claim is staggered, the next ones are not
        assert await tick(a, NOW + n * minute)
    assert stepped == ["a"]
    assert not await tick(b, NOW + 2 * minute)  # b starts, and looks at a's firing
    assert await tick(a, NOW + 3 * minute)  # claimed at once; its win names b's look
    assert await tick(a, NOW + 4 * minute)  # staggered again
    assert stepped == ["a", "b", "a"]
    assert not await tick(b, NOW + 4 * minute)
    # b wins the next two (a misses them): after a loss, a win is never alone
    assert await tick(b, NOW + 5 * minute)
    assert await tick(b, NOW + 6 * minute)
    assert stepped == ["a", "b", "a", "b", "b", "b"]
    await a.close()
    await b.close()


async def test_a_claim_cancelled_during_its_stagger_step_claims_nothing(
    redis: Redis, prefix: str
) -> None:
    """docs/DESIGN.md: a send task cancelled (or a process dying) while it waits for its
    step has made no claim: nothing is left to lapse, and another scheduler wins at once."""
    first = coordinator_on(redis, prefix, "a")
    schedule = next(f"s{n}" for n in range(100) if firing._stagger_step("a", f"s{n}") == 3)
    waiting = asyncio.create_task(first.acquire(schedule, minutely(), NOW))
    await asyncio.sleep(0)  # it runs up to its step's sleep
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await redis.exists(first.key(schedule)) == 0  # no claim was made
    other = coordinator_on(redis, prefix, "b")
    started = time.monotonic()
    attempt = await other.acquire(schedule, minutely(), NOW, stagger=False)
    assert attempt is not None  # won at once: no pending claim to wait out
    assert time.monotonic() - started < 1
    await other.close()


async def test_claims_beyond_the_in_flight_limit_are_not_staggered(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/DESIGN.md: a burst's turns interleave the schedulers' claims; no step is added."""
    monkeypatch.setattr("taskiq_dedup.firing.MAX_CLAIMS_IN_FLIGHT", 5)
    coordinator = coordinator_on(redis, prefix, "a")
    staggered: list[bool] = []  # per staggered claim: whether every turn was taken
    sleep_to_step = firing._sleep_to_step

    async def counted(step: int) -> None:
        staggered.append(coordinator._in_flight.taken)
        await sleep_to_step(step)

    monkeypatch.setattr("taskiq_dedup.firing._sleep_to_step", counted)
    won = await asyncio.gather(*(coordinator.acquire(f"s{n}", minutely(), NOW) for n in range(50)))
    assert all(attempt is not None for attempt in won)
    # the first claims take the 5 turns; once they are all taken the rest queue unstaggered
    assert staggered, "the first claims are staggered"
    assert not any(staggered), "no claim is staggered once every turn is taken"
    assert len(staggered) < 50
    await coordinator.close()


async def test_turns_serve_waiters_in_order_and_pass_on_a_cancelled_turn() -> None:
    turns = _Turns(1)
    order: list[int] = []

    async def use(n: int, hold: float) -> None:
        async with turns:
            order.append(n)
            await asyncio.sleep(hold)

    first = asyncio.create_task(use(0, 0.05))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(use(1, 0))
    later = [asyncio.create_task(use(n, 0)) for n in (2, 3)]
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(first, *later)
    assert order == [0, 2, 3]
    async with turns:  # every turn was given back
        pass


async def test_a_burst_has_at_most_its_limit_of_claims_in_flight(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims beyond the limit wait before their call, so no deadline runs out queued."""
    monkeypatch.setattr("taskiq_dedup.firing.MAX_CLAIMS_IN_FLIGHT", 5)
    coordinator = coordinator_on(redis, prefix, "a", retry_window=0)
    in_flight = most = 0
    claim = coordinator.claims.claim

    async def counted(*args: object, **kwargs: object) -> object:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            return await claim(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            in_flight -= 1

    monkeypatch.setattr(coordinator.claims, "claim", counted)
    won = await asyncio.gather(*(coordinator.acquire(f"s{n}", minutely(), NOW) for n in range(50)))
    assert all(attempt is not None for attempt in won)
    assert most == 5
    await coordinator.close()


async def _evalsha_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_ticks_confirms_go_together_after_its_last_send(redis: Redis, prefix: str) -> None:
    """docs/DESIGN.md: confirms wait for the process's other sends, then go as one call."""
    coordinator = coordinator_on(redis, prefix, "a")
    warm = await asyncio.gather(
        *(coordinator.acquire(f"w{i}", every_second(), NOW) for i in (1, 2))
    )
    await asyncio.gather(*(coordinator.confirm(a) for a in warm if a is not None))  # batch form
    attempts = await asyncio.gather(
        *(coordinator.acquire(f"s{i}", every_second(), NOW) for i in range(5))
    )
    assert all(attempts)
    won = [attempt for attempt in attempts if attempt is not None]
    first = asyncio.create_task(coordinator.confirm(won[0]))
    await asyncio.sleep(0.02)  # well within the hold
    assert not first.done()  # four sends still in flight: held
    assert await redis.hget(won[0].key, "holder") is not None  # not confirmed in Redis yet
    before = await _evalsha_calls(redis)
    await asyncio.gather(*(coordinator.confirm(attempt) for attempt in won[1:]))
    await first
    assert await _evalsha_calls(redis) - before == 1  # the five confirms in one call
    for attempt in won:
        assert await redis.hget(attempt.key, "sent") == str(attempt.slot).encode()
        assert await redis.hget(attempt.key, "holder") is None
    assert coordinator._held == {}


async def test_a_confirm_is_held_no_longer_than_the_hold_for_a_send_still_in_flight(
    redis: Redis, prefix: str
) -> None:
    coordinator = coordinator_on(redis, prefix, "a")
    slow = await coordinator.acquire("slow", every_second(), NOW)
    quick = await coordinator.acquire("quick", every_second(), NOW)
    assert slow is not None
    assert quick is not None
    started = time.monotonic()
    await asyncio.wait_for(coordinator.confirm(quick), 2.0)  # "slow" never reaches post_send
    assert 0.05 < time.monotonic() - started < 1.0  # held for CONFIRM_HOLD, then sent
    assert await redis.hget(quick.key, "sent") == str(quick.slot).encode()
    await coordinator.release(slow)
    await coordinator.close()
