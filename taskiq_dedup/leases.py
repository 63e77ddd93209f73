"""The state of one dedup key in Redis, changed only by atomic Lua scripts.

A dedup key is a hash. Its ``state`` field moves free (absent) -> ``running``
(an owner token and a lease deadline) -> ``done``; a failed run goes back to
free. A *once* claim (a firing on a broker that cannot redeliver, where a lease
and a finish add nothing to the guarantee) moves free -> ``started`` in one
decision: no lease, no finish; it refuses every later copy, except the holder's
own retry, until the retention ends or a failed run releases it.

The lease deadline is a field in Redis server time rather than the key's own
expiry, so a claim can *see* an expired lease (and count a takeover) instead
of finding the key gone. The key's expiry is the retention, refreshed by every
claim, heartbeat and finish, so it never lapses under a live holder.

Fields: ``state``, ``owner`` (token of the running attempt), ``lease_until``
(ms), ``task_id`` and ``gen`` (the holder message's task id and generation),
``worker`` (host:pid, for logs) and ``attempts`` (claims so far). For the
firing ledger only (``ledger``; no script reads them to decide): ``started_at``
and ``last_worker`` (the last claim), ``finished_at`` and ``outcome`` (``ran`` on
finish, ``failed`` on release) and ``dupes`` (claims refused as duplicates).

An idempotency key is bound to one kick before it is sent, in two phases:
``phase`` is ``pending`` (with ``pending_until``, ms) from ``bind`` until the
broker accepted the message (``confirm``, or a worker claiming it), then
``sent``. Only a sent kick answers later kicks as an echo; a pending binding
that lapsed was a send that failed, and the next kick takes the key. The state
tables are in docs/DESIGN.md ("The worker-side protocols").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal, cast

from redis.asyncio import Redis

from taskiq_dedup.pipelining import ScriptPipeline

Verdict = Literal["claimed", "takeover", "superseded", "running", "started", "done", "other"]
BindVerdict = Literal["bound", "wait", "echo"]
WON: frozenset[Verdict] = frozenset({"claimed", "takeover", "superseded"})

CLAIM_SCRIPT = """
-- KEYS[1] = the dedup key (a hash)
-- ARGV[1] = owner token of this attempt
-- ARGV[2] = lease in milliseconds
-- ARGV[3] = retention of the key in milliseconds
-- ARGV[4] = task id of the message
-- ARGV[5] = generation of the message (retries + requeues)
-- ARGV[6] = the claiming worker (host:pid), shown as holder in others' logs
-- ARGV[7] = "1" for an idempotency key (bound to one kick's task id), else "0"
-- ARGV[8] = "1" for a once claim: state "started", no lease and no finish to come
-- returns {verdict, holder task id, holder worker}, or just "claimed" (was
--   free, or already this attempt's: the reply of nearly every claim, kept
--   short as it is parsed once per message); verdict is "takeover" (a running lease had
--   expired), "superseded" (the running holder's own retry: same task id,
--   higher generation), "running" (a live lease), "started" (a once claim),
--   "done", or "other" (an
--   idempotency key whose confirmed kick is another task: that task answers)
-- For the ledger only (never read to decide): a claim sets started_at and
-- last_worker; a refusal counts in dupes.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'state', 'task_id', 'worker', 'lease_until', 'gen',
  'owner', 'phase')
local state, task_id, worker = h[1], h[2] or '', h[3] or ''
local verdict = 'claimed'
if (state == 'running' or state == 'started') and h[6] == ARGV[1] then
  return 'claimed'  -- a retry of this attempt, whose reply was lost
elseif state == 'done' then
  redis.call('HINCRBY', KEYS[1], 'dupes', 1)
  return {'done', task_id, worker}
elseif state == 'started' then
  if task_id == ARGV[4] and tonumber(ARGV[5]) > tonumber(h[5] or '0') then
    verdict = 'superseded'
  else
    redis.call('HINCRBY', KEYS[1], 'dupes', 1)
    return {'started', task_id, worker}
  end
elseif ARGV[7] == '1' and task_id ~= '' and task_id ~= ARGV[4] and h[7] ~= 'pending' then
  -- a pending binding may be a send that failed; this message exists, so it takes the key
  redis.call('HINCRBY', KEYS[1], 'dupes', 1)
  return {'other', task_id, worker}
elseif state == 'running' then
  if tonumber(h[4] or '0') <= now then
    verdict = 'takeover'
  elseif task_id == ARGV[4] and tonumber(ARGV[5]) > tonumber(h[5] or '0') then
    verdict = 'superseded'
  else
    redis.call('HINCRBY', KEYS[1], 'dupes', 1)
    return {'running', task_id, worker}
  end
end
redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[1],
  'task_id', ARGV[4], 'gen', ARGV[5], 'worker', ARGV[6],
  'started_at', string.format('%.0f', now), 'last_worker', ARGV[6])
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[1], 'state', 'started')
  redis.call('HDEL', KEYS[1], 'finished_at', 'outcome', 'lease_until')
else
  redis.call('HSET', KEYS[1], 'lease_until', string.format('%.0f', now + tonumber(ARGV[2])))
  redis.call('HDEL', KEYS[1], 'finished_at', 'outcome')
end
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[1], 'phase', 'sent')
  redis.call('HDEL', KEYS[1], 'pending_until')
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if verdict == 'claimed' then
  return 'claimed'
end
return {verdict, task_id, worker}
"""

HEARTBEAT_SCRIPT = """
-- KEYS[1] = the dedup key
-- ARGV[1] = owner token
-- ARGV[2] = lease in milliseconds
-- ARGV[3] = retention of the key in milliseconds
-- returns 1 if the lease was extended, 0 if this token no longer holds it
local h = redis.call('HMGET', KEYS[1], 'owner', 'state')
if h[1] ~= ARGV[1] or h[2] ~= 'running' then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'lease_until', string.format('%.0f', now + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

FINISH_SCRIPT = """
-- KEYS[1] = the dedup key
-- ARGV[1] = owner token
-- ARGV[2] = retention of the key in milliseconds
-- ARGV[3] = the ledger outcome: 'ran', or 'skipped_overlap' for a firing not run
-- returns 1 if the key is now done by this token (also on a retry whose first
--   reply was lost: the owner is kept), 0 if this token no longer holds it
-- (finished_at and outcome are for the ledger only)
local h = redis.call('HMGET', KEYS[1], 'owner', 'state')
if h[1] ~= ARGV[1] or (h[2] ~= 'running' and h[2] ~= 'started' and h[2] ~= 'done') then
  return 0
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'state', 'done', 'outcome', ARGV[3] or 'ran',
  'finished_at', string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
redis.call('HDEL', KEYS[1], 'lease_until')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

RELEASE_SCRIPT = """
-- KEYS[1] = the dedup key
-- ARGV[1] = owner token
-- returns 1 if the key is free again, 0 if this token no longer holds it
-- (running, or started by a once claim)
-- (task_id, gen and attempts stay: an idempotency key keeps its task id;
-- finished_at and outcome are for the ledger only)
local h = redis.call('HMGET', KEYS[1], 'owner', 'state')
if h[1] ~= ARGV[1] or (h[2] ~= 'running' and h[2] ~= 'started') then
  return 0
end
redis.call('HDEL', KEYS[1], 'state', 'owner', 'lease_until', 'worker')
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'outcome', 'failed',
  'finished_at', string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
return 1
"""

BIND_SCRIPT = """
-- KEYS[1] = an idempotency key (the hash a worker later claims)
-- ARGV[1] = task id of the message being sent (also this attempt's token)
-- ARGV[2] = retention of the key in milliseconds
-- ARGV[3] = how long a binding stays pending without confirmation, ms
-- ARGV[4] = "1" if a lost run may be run again by this kick (the broker
--           cannot redeliver a dead worker's message), else "0"
-- returns {verdict, task id}: "bound" (ARGV[1] now holds the key, pending
--   until confirmed; also a retry of this call), "wait" (another kick is
--   pending and may still be sent: ask again) or "echo" (that task answers)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'task_id', 'phase', 'pending_until', 'state', 'lease_until')
local bind = false
if not h[1] then
  bind = true
elseif h[1] == ARGV[1] then
  return {'bound', ARGV[1]}
elseif h[2] == 'pending' then
  if tonumber(h[3] or '0') > now then
    return {'wait', h[1]}
  end
  bind = true  -- that kick never reached the queue in time: treat it as never sent
elseif ARGV[4] == '1' and h[4] == 'running' and tonumber(h[5] or '0') <= now then
  redis.call('HDEL', KEYS[1], 'state', 'owner', 'lease_until', 'worker')
  bind = true  -- its worker died and nothing will deliver it again
end
if not bind then
  return {'echo', h[1]}
end
redis.call('HSET', KEYS[1], 'task_id', ARGV[1], 'phase', 'pending',
  'pending_until', string.format('%.0f', now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'bound', ARGV[1]}
"""

CONFIRM_SCRIPT = """
-- KEYS[1] = an idempotency key
-- ARGV[1] = task id of a kick the broker has accepted
-- ARGV[2] = retention of the key in milliseconds
-- returns the task id that answers the key: ARGV[1] if this kick's binding
--   held (now "sent"), else the task that took it meanwhile
local h = redis.call('HMGET', KEYS[1], 'task_id', 'phase')
if h[1] and h[1] ~= ARGV[1] then
  return h[1]
end
if h[2] ~= 'sent' then
  redis.call('HSET', KEYS[1], 'task_id', ARGV[1], 'phase', 'sent')
  redis.call('HDEL', KEYS[1], 'pending_until')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return ARGV[1]
"""


def _text(value: object) -> str:
    """Decode a reply of a client with or without ``decode_responses``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@dataclass(frozen=True)
class Claim:
    """Outcome of a claim: the verdict and who held the key before it."""

    verdict: Verdict
    holder_task_id: str
    holder_worker: str

    @property
    def won(self) -> bool:
        """Whether this attempt now holds the key and may execute."""
        return self.verdict in WON


@dataclass(frozen=True)
class Binding:
    """Outcome of binding an idempotency key: what to do and which task answers."""

    verdict: BindVerdict
    task_id: str


CLAIMED = Claim("claimed", "", "")
"""A won claim of a free key (or a retry finding its own): the common reply."""

BATCH_WINDOW = 0.002
"""Seconds a decision made within this long of the previous send waits to be
sent with the others made meanwhile (``pipelining``). A busy worker makes
thousands a second, and one script call for several of them costs the client
about what one call costs alone; 2 ms is small next to any task's run, and a
decision after a quiet spell is sent at once."""


class Leases:
    """Runs the dedup-key scripts on one client (each registered once).

    ``min_replicas``: claims, finishes, releases and bindings wait for that many
    replicas (``replication``); heartbeats do not.
    """

    def __init__(self, redis: Redis, *, min_replicas: int = 0) -> None:
        self._redis = redis
        self._pipeline = ScriptPipeline(redis, min_replicas=min_replicas, window=BATCH_WINDOW)
        self._claim = redis.register_script(CLAIM_SCRIPT)
        self._heartbeat = redis.register_script(HEARTBEAT_SCRIPT)
        self._finish = redis.register_script(FINISH_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)
        self._bind = redis.register_script(BIND_SCRIPT)
        self._confirm = redis.register_script(CONFIRM_SCRIPT)

    async def claim(
        self,
        key: str,
        *,
        token: str,
        task_id: str,
        generation: int,
        worker: str,
        lease_ms: int,
        retention_ms: int,
        bound: bool = False,
        once: bool = False,
    ) -> Claim:
        """Try to take ``key`` for one execution attempt.

        ``bound``: ``key`` is an idempotency key, answered by one kick's task id.
        ``once``: take it as ``started``, without a lease (``lease_ms`` unused),
        for a run whose end is not recorded (see the module docstring).
        """
        reply = await self._pipeline.run(
            self._claim,
            [key],
            [
                token,
                lease_ms,
                retention_ms,
                task_id,
                generation,
                worker,
                "1" if bound else "0",
                "1" if once else "0",
            ],
        )
        if not isinstance(reply, list):
            return CLAIMED
        verdict, holder_task_id, holder_worker = (_text(part) for part in reply)
        return Claim(cast("Verdict", verdict), holder_task_id, holder_worker)

    async def extend(self, key: str, token: str, *, lease_ms: int, retention_ms: int) -> bool:
        """Push the lease deadline forward if ``token`` still holds ``key``."""
        return bool(
            await self._pipeline.run(self._heartbeat, [key], [token, lease_ms, retention_ms]),
        )

    async def extend_many(self, leases: list[tuple[str, str, int]], *, lease_ms: int) -> list[bool]:
        """Extend every ``(key, token, retention_ms)`` in one pipelined round.

        Returns, in order, whether each token still held its key. A Redis error
        of the round is raised (every call is safe to repeat).
        """
        if not leases:
            return []
        client: object = self._redis  # typed Redis, but a cluster client also works
        if not isinstance(client, Redis):  # its pipelines run no scripts
            return list(
                await asyncio.gather(
                    *(
                        self.extend(key, token, lease_ms=lease_ms, retention_ms=retention_ms)
                        for key, token, retention_ms in leases
                    ),
                ),
            )
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, token, retention_ms in leases:
                await self._heartbeat(keys=[key], args=[token, lease_ms, retention_ms], client=pipe)
            replies = await pipe.execute(raise_on_error=True)
        return [bool(reply) for reply in replies]

    async def finish(
        self, key: str, token: str, *, retention_ms: int, outcome: str = "ran"
    ) -> bool:
        """Mark ``key`` done if ``token`` still holds it; ``outcome`` is for the ledger."""
        return bool(await self._pipeline.run(self._finish, [key], [token, retention_ms, outcome]))

    async def release(self, key: str, token: str) -> bool:
        """Free ``key`` for another attempt if ``token`` still holds it."""
        return bool(await self._pipeline.run(self._release, [key], [token]))

    async def bind(
        self,
        key: str,
        task_id: str,
        *,
        retention_ms: int,
        pending_ms: int,
        rerun_lost: bool,
    ) -> Binding:
        """Bind idempotency ``key`` to ``task_id`` as pending, unless a task answers it.

        ``rerun_lost``: a run whose lease lapsed may be replaced by this kick
        (for brokers that cannot redeliver a dead worker's message).
        """
        reply = await self._pipeline.run(
            self._bind,
            [key],
            [task_id, retention_ms, pending_ms, "1" if rerun_lost else "0"],
        )
        verdict, owner = (_text(part) for part in reply)
        return Binding(cast("BindVerdict", verdict), owner)

    async def confirm(self, key: str, task_id: str, *, retention_ms: int) -> str:
        """Mark ``task_id``'s binding sent; return the task that answers ``key``."""
        return _text(await self._pipeline.run(self._confirm, [key], [task_id, retention_ms]))
