"""Overlap policies: what a firing does while its schedule's previous run still runs.

Per schedule through the label ``dedup_overlap`` (or ``DedupMiddleware(overlap=)``):

- ``allow`` (default): every firing runs, as without a policy;
- ``skip``: a firing meeting a live run of its schedule is not executed: its key
  is marked done, the delivery acknowledged, one INFO line, ``skipped_overlap``;
- ``buffer_one``: one firing may wait for the live run to end, in the worker
  that received it (polling every ``TURN_POLL``); a further firing while one
  waits is skipped as above.

Each schedule has one *running key* (``KeySpace.running``), a hash with the
fields of a dedup key (``state``, ``owner``, ``lease_until``, ``task_id``,
``worker``), so the lease scripts of ``leases`` renew and release it unchanged:
the firing's hold renews it in the same heartbeat round as the firing's key, the
finish releases it, and a crashed run's lease lapses. ``queued`` and
``queued_until`` name the buffered firing and how long its claim to the next
turn lasts without a look (one lease). The key is taken only after the firing's
own key was won, in a second script: the two keys do not share a Redis Cluster
hash slot (the firing keys' shape predates this), so one script cannot hold both.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast, get_args

from taskiq_dedup.deadlines import REDIS_ERRORS, within
from taskiq_dedup.errors import ConfigurationError
from taskiq_dedup.labels import OVERLAP_LABEL
from taskiq_dedup.pipelining import ScriptPipeline

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from redis.asyncio import Redis
    from taskiq.message import TaskiqMessage

    from taskiq_dedup.holding import Hold, Holds
    from taskiq_dedup.keys import KeySpace
    from taskiq_dedup.leases import Leases
    from taskiq_dedup.stats import Counter

logger = logging.getLogger(__name__)

OverlapPolicy = Literal["allow", "skip", "buffer_one"]
POLICIES: tuple[OverlapPolicy, ...] = get_args(OverlapPolicy)
TurnVerdict = Literal["run", "takeover", "queued", "busy"]

RUNNING_RETENTION_LEASES = 4
"""A running key expires this many leases after its last claim or renewal: long
enough that a lapsed lease is *seen* as lapsed (and counted as a takeover), short
enough that a schedule that stopped firing leaves nothing behind for long."""

TURN_POLL = 0.25
"""Seconds between a buffered firing's looks at the running key. Each look also
renews its place (``queued_until``, one lease), so a dead waiter's place lapses."""

TURN_SCRIPT = """
-- KEYS[1] = the schedule's running key (a hash with a dedup key's state fields)
-- ARGV[1] = owner token (the token of the firing's own claim)
-- ARGV[2] = lease in milliseconds
-- ARGV[3] = retention of the key in milliseconds
-- ARGV[4] = the firing asking (its dedup key), kept in 'queued' while it waits
-- ARGV[5] = "1" to wait as the buffered firing (buffer_one), "0" not to (skip)
-- ARGV[6] = task id of the message
-- ARGV[7] = the worker (host:pid)
-- returns {verdict, holder task id, holder worker}: "run" (this firing holds the
--   schedule's turn; also a retry whose reply was lost), "takeover" (as "run",
--   after a run's lease had lapsed), "queued" (this firing is the buffered one:
--   ask again), "busy" (a run is live, or another firing waits: not executed)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'state', 'owner', 'lease_until', 'task_id', 'worker',
  'queued', 'queued_until')
local task_id, worker = h[4] or '', h[5] or ''
if h[1] == 'running' and h[2] == ARGV[1] then
  return {'run', task_id, worker}
end
local live = h[1] == 'running' and tonumber(h[3] or '0') > now
local waiter = h[6] and h[6] ~= ARGV[4] and tonumber(h[7] or '0') > now
if live then
  if ARGV[5] == '1' and not waiter then
    redis.call('HSET', KEYS[1], 'queued', ARGV[4],
      'queued_until', string.format('%.0f', now + tonumber(ARGV[2])))
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return {'queued', task_id, worker}
  end
  return {'busy', task_id, worker}
end
if waiter then
  return {'busy', h[6], ''}  -- the buffered firing has the next turn
end
redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[1],
  'lease_until', string.format('%.0f', now + tonumber(ARGV[2])),
  'task_id', ARGV[6], 'worker', ARGV[7])
redis.call('HDEL', KEYS[1], 'queued', 'queued_until')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if h[1] == 'running' then
  return {'takeover', task_id, worker}
end
return {'run', task_id, worker}
"""


def parse_overlap(value: object, *, where: str) -> OverlapPolicy:
    """Return ``value`` as a policy, or raise ``ConfigurationError`` naming ``where``."""
    text = value if isinstance(value, str) else None
    if text not in POLICIES:
        raise ConfigurationError(
            detail=f"{where}: {OVERLAP_LABEL} must be one of "
            f"{', '.join(repr(p) for p in POLICIES)}, got {value!r}",
        )
    return text


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@dataclass(frozen=True)
class Turn:
    """Outcome of asking for a schedule's turn to run."""

    verdict: TurnVerdict
    holder_task_id: str
    holder_worker: str

    @property
    def won(self) -> bool:
        """Whether the firing now holds its schedule's running key."""
        return self.verdict in ("run", "takeover")


class OverlapPolicies:
    """Resolves a message's policy and asks for its schedule's turn."""

    def __init__(self, redis: Redis, default: OverlapPolicy) -> None:
        self.default = parse_overlap(default, where="DedupMiddleware(overlap=...)")
        self._script = redis.register_script(TURN_SCRIPT)
        self._pipeline = ScriptPipeline(redis)
        self._reported: set[tuple[str, str]] = set()

    def policy(self, schedule_id: str, labels: Mapping[str, object]) -> OverlapPolicy:
        """Return the policy of a firing: its label, else the default.

        A bad label logs one ERROR per (schedule, value) and falls back to the
        default: a worker never crashes on a message.
        """
        if OVERLAP_LABEL not in labels:
            return self.default
        try:
            return parse_overlap(labels[OVERLAP_LABEL], where=f"schedule {schedule_id}")
        except ConfigurationError as exc:
            seen = (schedule_id, repr(labels[OVERLAP_LABEL]))
            if seen not in self._reported:
                self._reported.add(seen)
                logger.error("%s; using the default %r", exc.detail, self.default)  # noqa: TRY400
            return self.default

    async def take(
        self,
        running_key: str,
        *,
        firing_key: str,
        token: str,
        wait: bool,
        lease_ms: int,
        task_id: str,
        worker: str,
    ) -> Turn:
        """Ask once for the schedule's turn (see ``TURN_SCRIPT``)."""
        reply = await self._pipeline.run(
            self._script,
            [running_key],
            [
                token,
                lease_ms,
                lease_ms * RUNNING_RETENTION_LEASES,
                firing_key,
                "1" if wait else "0",
                task_id,
                worker,
            ],
        )
        verdict, holder_task_id, holder_worker = (_text(part) for part in reply)
        return Turn(cast("TurnVerdict", verdict), holder_task_id, holder_worker)


Outcome = Literal["run", "skipped", "unavailable"]


class OverlapGate:
    """Applies a firing's overlap policy in ``pre_execute``, after its key was won.

    ``enter`` returns ``run`` (the firing runs; under a policy its hold now also
    holds the schedule's running key), ``skipped`` (its key is marked done and
    its hold dropped: acknowledge without running) or ``unavailable`` (Redis
    failed: ``on_error`` was told; the caller applies ``on_redis_error``).
    """

    def __init__(
        self,
        policies: OverlapPolicies,
        leases: Leases,
        holds: Holds,
        keys: KeySpace,
        *,
        lease_ms: int,
        deadline: float,
        count: Callable[[Counter], None],
        on_error: Callable[[str, str, BaseException], None],
    ) -> None:
        self.policies = policies
        self._leases = leases
        self._holds = holds
        self._keys = keys
        self._lease_ms = lease_ms
        self._deadline = deadline
        self._count = count
        self._on_error = on_error

    def applies(self, message: TaskiqMessage) -> bool:
        """Whether ``message`` may have a policy other than ``allow`` (else ``enter`` runs it)."""
        return self.policies.default != "allow" or OVERLAP_LABEL in message.labels

    async def enter(self, message: TaskiqMessage, schedule_id: str, worker: str) -> Outcome:
        """Decide whether ``message`` (holding its firing key) runs now, waits or is skipped."""
        policy = self.policies.policy(schedule_id, message.labels)
        hold = self._holds.get(message)
        if policy == "allow" or hold is None:
            return "run"
        running_key = self._keys.running(schedule_id)
        asked = 0

        async def ask() -> Turn:
            nonlocal asked
            asked += 1
            return await within(
                self._deadline,
                lambda: self.policies.take(
                    running_key,
                    firing_key=hold.key,
                    token=hold.token,
                    wait=policy == "buffer_one",
                    lease_ms=self._lease_ms,
                    task_id=message.task_id,
                    worker=worker,
                ),
            )

        try:
            turn = await wait_for_turn(ask)
        except REDIS_ERRORS as exc:
            self._on_error("take the running key", running_key, exc)
            return "unavailable"
        if asked > 1:
            self._count("overlap_waits")
        if turn.won:
            hold.also = ((running_key, self._lease_ms * RUNNING_RETENTION_LEASES),)
            if turn.verdict == "takeover":
                logger.info(
                    "Took over %s from task %s on %s, whose lease had lapsed",
                    running_key,
                    turn.holder_task_id,
                    turn.holder_worker,
                )
            return "run"
        self._count("skipped_overlap")
        logger.info(
            "Firing %s of schedule %s not executed (%s=%s): task %s%s still runs or waits",
            message.task_id,
            schedule_id,
            OVERLAP_LABEL,
            policy,
            turn.holder_task_id,
            f" on {turn.holder_worker}" if turn.holder_worker else "",
        )
        self._holds.pop(message)
        try:
            await within(
                self._deadline,
                lambda: self._leases.finish(
                    hold.key, hold.token, retention_ms=hold.retention_ms, outcome="skipped_overlap"
                ),
            )
        except REDIS_ERRORS as exc:  # the firing key's lease lapses; a copy may run later
            self._on_error("finish", hold.key, exc)
        return "skipped"

    async def leave(self, hold: Hold) -> None:
        """Release the running keys ``hold`` took with its firing."""
        for key, _ in hold.also:
            try:
                await within(
                    self._deadline, functools.partial(self._leases.release, key, hold.token)
                )
            except REDIS_ERRORS as exc:  # its lease lapses on its own
                self._on_error("release", key, exc)


async def wait_for_turn(ask: Callable[[], Awaitable[Turn]]) -> Turn:
    """Ask until the answer is not ``queued`` (the buffered firing), pausing ``TURN_POLL``.

    Bounded by the live run: it ends (released) or its lease lapses (taken over).
    """
    while True:
        turn = await ask()
        if turn.verdict != "queued":
            return turn
        await asyncio.sleep(TURN_POLL)
