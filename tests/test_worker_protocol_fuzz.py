"""A seeded randomized fault test of the worker-side protocol (hypothesis stateful).

Simulated kickers and workers drive the real scripts (bind, confirm, claim,
heartbeat, finish, release) on a real redis-server: sends fail, replies are
lost (the script ran, its caller retries), messages are delivered twice,
workers stall or die mid-task. Checked:

- at most one live execution per key at any time (a worker whose lease was
  let lapse - dead or stalled - is not live), and at most one finished;
- an echo is answered only by a task whose message was sent;
- no key is stuck: once every worker has finished or died, every lease and
  pending window has lapsed and the queue is drained, a new kick of every key
  either runs or is answered by a task that finished.

Two broker kinds: one that redelivers a dead worker's message (a stream) and one
that loses it (a list queue, where a later kick re-runs a lost run).

Time is injected, so every run is the same: leases and pending windows are long,
and the rule ``time_passes`` makes the leases of dead or stalled workers and
the pending windows of failed sends lapse by writing their deadlines into the
past - what the passing of ``lease_ttl`` does to them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from taskiq_dedup.keys import KeySpace
from taskiq_dedup.leases import Leases

T = TypeVar("T")

KEYS = ("a",)
"""One key: every step meets the others on it."""
LEASE_MS = 600_000
"""Long: a lease lapses only when ``time_passes`` says so."""
PENDING_MS = 600_000
RETENTION_MS = 3_600_000


@dataclass
class Holder:
    key: str
    token: str
    task_id: str
    message: tuple[str, str]


class WorkerProtocol(RuleBasedStateMachine):
    """Kicks, deliveries, renewals, finishes, failures and deaths on a few keys."""

    redis_url = ""
    redelivers = True

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = Redis.from_url(self.redis_url)
        self.leases = Leases(self.redis)
        self.space = KeySpace(f"fuzz-{uuid.uuid4().hex[:12]}")
        self.queue: list[tuple[str, str]] = []  # (key, task id) of sent messages
        self.sent: set[str] = set()
        self.holders: list[Holder] = []
        self.gone: list[Holder] = []  # dead or stalled: nobody renews their leases
        self.finished: dict[str, list[str]] = {self.key(name): [] for name in KEYS}
        self.kicked: set[str] = set()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def key(self, name: str) -> str:
        return self.space.idempotency("task", name)

    # ------------------------------------------------------------ rules

    def _bind(self, key: str, task_id: str, lose_reply: bool) -> tuple[str, str]:
        async def call() -> tuple[str, str]:
            binding = await self.leases.bind(
                key,
                task_id,
                retention_ms=RETENTION_MS,
                pending_ms=PENDING_MS,
                rerun_lost=not self.redelivers,
            )
            return binding.verdict, binding.task_id

        if lose_reply:
            self.run(call())  # ran; the reply never arrived
        return self.run(call())

    @rule(name=st.sampled_from(KEYS), sent=st.booleans(), lose=st.booleans())
    def kick(self, name: str, sent: bool, lose: bool) -> None:
        key = self.key(name)
        self.kicked.add(name)
        task_id = uuid.uuid4().hex
        verdict, owner = self._bind(key, task_id, lose)
        if verdict == "echo":
            assert owner in self.sent, "an echo must be answered by a task that was sent"
            return
        if verdict == "wait" or not sent:
            return  # the kick waits (modelled as giving up) or its send fails
        assert owner == task_id
        self.queue.append((key, task_id))
        self.sent.add(task_id)

        async def confirm() -> str:
            return await self.leases.confirm(key, task_id, retention_ms=RETENTION_MS)

        if lose:
            self.run(confirm())
        answer = self.run(confirm())
        assert answer in self.sent, "a handle must follow a task that was sent"

    @precondition(lambda self: bool(self.queue))
    @rule(data=st.data(), lose=st.booleans())
    def deliver(self, data: st.DataObject, lose: bool) -> None:
        if not self.queue:
            return
        message = self.queue.pop(data.draw(st.integers(0, len(self.queue) - 1)))
        key, task_id = message
        token = uuid.uuid4().hex
        verdict, holder_task_id = self._claim(message, token, lose=lose, once=False)
        if verdict in {"claimed", "takeover", "superseded"}:
            self.holders.append(Holder(key, token, task_id, message))
        elif verdict == "running" and holder_task_id == task_id:
            self.queue.append(message)  # "deferred": it comes back later (skip.settle)

    def _claim(
        self, message: tuple[str, str], token: str, *, lose: bool, once: bool
    ) -> tuple[str, str]:
        """Claim ``message``'s key (an idempotency key, or a firing claimed once)."""
        key, task_id = message

        async def claim() -> tuple[str, str]:
            outcome = await self.leases.claim(
                key,
                token=token,
                task_id=task_id,
                generation=0,
                worker="fuzz",
                lease_ms=LEASE_MS,
                retention_ms=RETENTION_MS,
                bound=not once,
                once=once,
            )
            return outcome.verdict, outcome.holder_task_id

        if lose:
            self.run(claim())  # ran; the reply never arrived
        return self.run(claim())

    @precondition(lambda self: bool(self.holders or self.queue))
    @rule(data=st.data())
    def copy(self, data: st.DataObject) -> None:
        """A message is delivered twice (a producer's retry, an at-least-once broker)."""
        if self.holders:
            holder = self.holders[data.draw(st.integers(0, len(self.holders) - 1))]
            self.queue.append(holder.message)
        elif self.queue:
            self.queue.append(self.queue[data.draw(st.integers(0, len(self.queue) - 1))])

    @precondition(lambda self: bool(self.holders))
    @rule(data=st.data(), lose=st.booleans())
    def finish(self, data: st.DataObject, lose: bool) -> None:
        if not self.holders:
            return
        holder = self.holders.pop(data.draw(st.integers(0, len(self.holders) - 1)))

        async def call() -> bool:
            return await self.leases.finish(holder.key, holder.token, retention_ms=RETENTION_MS)

        if lose:
            self.run(call())
        if self.run(call()):
            self.finished[holder.key].append(holder.task_id)

    @precondition(lambda self: bool(self.holders))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        """The task raised: release the key; a retry (same task id) is queued."""
        if not self.holders:
            return
        holder = self.holders.pop(data.draw(st.integers(0, len(self.holders) - 1)))
        self.run(self.leases.release(holder.key, holder.token))
        self.queue.append(holder.message)

    @precondition(lambda self: bool(self.holders))
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        if not self.holders:
            return
        holder = self.holders[data.draw(st.integers(0, len(self.holders) - 1))]
        self.run(
            self.leases.extend(
                holder.key, holder.token, lease_ms=LEASE_MS, retention_ms=RETENTION_MS
            )
        )

    @precondition(lambda self: bool(self.holders))
    @rule(data=st.data())
    def die(self, data: st.DataObject) -> None:
        """The worker is killed mid-task: a stream redelivers its message, a list loses it."""
        if not self.holders:
            return
        holder = self.holders.pop(data.draw(st.integers(0, len(self.holders) - 1)))
        self.gone.append(holder)
        if self.redelivers:
            self.queue.append(holder.message)

    @precondition(lambda self: bool(self.holders))
    @rule(data=st.data())
    def stall(self, data: st.DataObject) -> None:
        """A live worker's event loop blocks: its lease may lapse under it."""
        if not self.holders:
            return
        self.gone.append(self.holders[data.draw(st.integers(0, len(self.holders) - 1))])

    @rule()
    def time_passes(self) -> None:
        """Leases nobody renews and pending windows of failed sends lapse."""

        async def lapse() -> None:
            for name in KEYS:
                key = self.key(name)
                owner, phase = await self.redis.hmget(key, "owner", "phase")
                if owner is not None and any(h.token == owner.decode() for h in self.gone):
                    await self.redis.hset(key, "lease_until", "0")
                if phase == b"pending":
                    await self.redis.hset(key, "pending_until", "0")

        self.run(lapse())

    # -------------------------------------------------------- invariants

    @invariant()
    def at_most_one_live_execution_per_key(self) -> None:
        for name in KEYS:
            key = self.key(name)
            live = [h for h in self.holders if h.key == key and h not in self.gone]
            assert len(live) <= 1, f"{key} runs {len(live)} times at once"

    @invariant()
    def at_most_one_finished_execution_per_key(self) -> None:
        for key, tasks in self.finished.items():
            assert len(tasks) <= 1, f"{key} finished {len(tasks)} times: {tasks}"

    # ------------------------------------------------------------ teardown

    def teardown(self) -> None:
        try:
            self._check_nothing_stuck()
        finally:
            self.run(self._cleanup())
            self.loop.close()

    def _check_nothing_stuck(self) -> None:
        for holder in list(self.holders):  # live workers finish
            if self.run(self.leases.finish(holder.key, holder.token, retention_ms=RETENTION_MS)):
                self.finished[holder.key].append(holder.task_id)
        self.holders.clear()
        self.time_passes()
        rounds = 0
        while self.queue:  # drain: every sent message is delivered and finishes
            rounds += 1
            assert rounds < 1000
            self.deliver_all()
        self.at_most_one_finished_execution_per_key()
        for name in self.kicked:
            key = self.key(name)
            verdict, owner = self._bind(key, uuid.uuid4().hex, lose_reply=False)
            assert verdict in {"bound", "echo"}, f"{name} is stuck: {verdict} {owner}"
            if verdict == "echo":
                state = self.run(self.redis.hmget(key, "state", "task_id"))
                assert state == [b"done", owner.encode()], (
                    f"{name} answered by {owner}, which never finished: {state}"
                )

    def deliver_all(self) -> None:
        while self.queue:
            key, task_id = self.queue.pop(0)
            token = uuid.uuid4().hex
            claim = self.run(
                self.leases.claim(
                    key,
                    token=token,
                    task_id=task_id,
                    generation=0,
                    worker="fuzz",
                    lease_ms=LEASE_MS,
                    retention_ms=RETENTION_MS,
                    bound=True,
                )
            )
            if claim.won and self.run(self.leases.finish(key, token, retention_ms=RETENTION_MS)):
                self.finished[key].append(task_id)
            elif claim.verdict == "running" and claim.holder_task_id == task_id:
                raise AssertionError(f"{key} still running under a finished or lapsed holder")

    async def _cleanup(self) -> None:
        keys = [key async for key in self.redis.scan_iter(match=self.space.pattern())]
        if keys:
            await self.redis.delete(*keys)
        await self.redis.aclose()


@pytest.mark.parametrize("redelivers", [True, False], ids=["stream", "list-queue"])
def test_worker_protocol_under_faults(redis_url: str, redelivers: bool) -> None:
    machine = type(
        f"WorkerProtocol_{'stream' if redelivers else 'list'}",
        (WorkerProtocol,),
        {"redis_url": redis_url, "redelivers": redelivers},
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,  # seeded: the same runs every time
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


class OnceFirings(WorkerProtocol):
    """Firings on a broker that cannot redeliver: once claims, no lease, no finish.

    A firing's copies share its task id (a scheduler's takeover re-sends it) or not
    (another sender's copy); a failed run releases its key and is retried with the
    same task id. Checked: at most one live and one finished execution per key, a
    copy is never deferred (pushed back while a holder runs), and once the queue
    is drained every firing whose worker did not die ran to its end once.
    """

    redelivers = False

    def key(self, name: str) -> str:
        return self.space.firing(name, 60)

    @rule(name=st.sampled_from(KEYS), same_task=st.booleans())
    def kick(self, name: str, same_task: bool) -> None:  # type: ignore[override]
        key = self.key(name)
        self.kicked.add(name)
        task_id = f"firing-{name}" if same_task else uuid.uuid4().hex
        self.queue.append((key, task_id))
        self.sent.add(task_id)

    @precondition(lambda self: bool(self.queue))
    @rule(data=st.data(), lose=st.booleans())
    def deliver(self, data: st.DataObject, lose: bool) -> None:
        if not self.queue:
            return
        message = self.queue.pop(data.draw(st.integers(0, len(self.queue) - 1)))
        self._claim_once(message, lose)

    def _claim_once(self, message: tuple[str, str], lose: bool) -> None:
        key, task_id = message
        token = uuid.uuid4().hex
        verdict, _ = self._claim(message, token, lose=lose, once=True)
        assert verdict != "running", f"{key}: a once-claimed key was found leased"
        if verdict in {"claimed", "takeover", "superseded"}:
            self.holders.append(Holder(key, token, task_id, message))

    @precondition(lambda self: bool(self.holders))
    @rule(data=st.data())
    def finish(self, data: st.DataObject, lose: bool = False) -> None:  # type: ignore[override]
        """The task returned: nothing is written (no finish call)."""
        if not self.holders:
            return
        holder = self.holders.pop(data.draw(st.integers(0, len(self.holders) - 1)))
        self.finished[holder.key].append(holder.task_id)

    def _check_nothing_stuck(self) -> None:
        died = {h.key for h in self.gone if h not in self.holders}  # their runs are lost
        for holder in list(self.holders):  # live (and stalled) workers finish
            self.finished[holder.key].append(holder.task_id)
        self.holders.clear()
        self.time_passes()  # writes lease deadlines into the past: a started key ignores them
        while self.queue:
            self._claim_once(self.queue.pop(0), lose=False)
            for holder in list(self.holders):
                self.finished[holder.key].append(holder.task_id)
            self.holders.clear()
        self.at_most_one_finished_execution_per_key()
        for name in self.kicked:  # a failed run's release let its retry run
            key = self.key(name)
            if key not in died:
                assert len(self.finished[key]) == 1, f"{key} never ran to its end"


def test_once_claimed_firings_under_faults(redis_url: str) -> None:
    run_state_machine_as_test(
        type("OnceFirings_list", (OnceFirings,), {"redis_url": redis_url}),
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,  # seeded: the same runs every time
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
