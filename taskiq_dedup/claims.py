"""The claim protocol: which scheduler sends a firing, confirmed once it is queued.

Each schedule has one *firing state* key (a hash, ``KeySpace.firings``) changed
only by the four scripts below. Its fields:

- ``sent``: the cursor: every slot at or before it is sent, or was given up as
  missed. A claim moves it to just before the slot it wins; a confirm, to the slot;
- ``slot``, ``holder``, ``lease_until``: the slot one attempt is sending now
  (*pending*), the attempt's token and its lease deadline in Redis server time;
- ``sent_by``: the attempt that confirmed ``sent``, for logs;
- ``from``: the cursor before the pending attempt's claim (its missed slots follow
  it), returned again to a retry of that claim;
- ``unconfirmed``: the slot of a lapsed claim the pending attempt's claim passed
  (``''`` if none), returned again to a retry of that claim;
- ``lapsed``: the slot of a lapsed claim the pending (or released) attempt took
  over to send again (``''`` if none): its dead sender may have sent it, so a
  later claim that passes it unsent reports it unconfirmed, not missed;
- ``looked``: ``"<slot> <token>"`` of the last attempt that found a slot taken
  (pending or sent): it tells the next winner another scheduler is running, so
  that it keeps staggering its first claims (``firing.STAGGER_STEPS``). Timing
  only: no decision reads it, and its write may fail (``pcall``: an out-of-memory
  Redis) without failing the claim;
- ``log``: the firing ledger (``ledger``), appended by confirm and release, read by
  no script.

A scheduler passes the slots it could fire now (``candidates``: ascending, the
current slot last) and wins the **earliest unsent** one, so a late or drifting
tick never skips a slot, and a restart never re-sends one. The winner's claim is
pending under a short lease until ``post_send`` confirms that the broker took the
message (``CONFIRM_SCRIPT``); a send that fails releases it (``RELEASE_SCRIPT``),
and one whose process died lapses. While the send waits its turn in a live process
(a burst), that process renews the lease (``RENEW_SCRIPT``), for a bounded time.
Another scheduler that meets a live pending claim waits for it, and takes the slot
over once it is released or lapsed. A
takeover whose first sender did kick (and died before confirming) sends a second
copy, which the worker guard drops: it keys on the same (schedule, slot).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from redis.exceptions import RedisError, ResponseError

from taskiq_dedup.ledger import LEDGER_LUA, missed_for_ledger
from taskiq_dedup.pipelining import ScriptPipeline
from taskiq_dedup.replication import ReplicasMissingError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

logger = logging.getLogger("taskiq_dedup.claims")

CLAIM_SCRIPT = """
-- KEYS[1] = the schedule's firing state (a hash)
-- ARGV[1] = this attempt's token (host:pid#random), the same on every retry
-- ARGV[2] = pending lease in milliseconds
-- ARGV[3] = time to live of the state in milliseconds
-- ARGV[4] = the slot to take when the state has no history (the current slot),
--           or '' to take none (a catch-up: nothing was ever sent to catch up on)
-- ARGV[5..n] = candidate slots, ascending
-- returns "verdict slot sent-before lease-left-ms unconfirmed other-holder", one
-- string (one reply element parses far faster than six; the holder, last, may hold
-- spaces; sent-before and unconfirmed are empty when there is none):
--   'won'      this attempt now holds slot, pending (also a retry of a claim
--              whose reply was lost); other-holder: a rival, the last attempt that
--              found the cursor's slot or a later one taken ('looked'; perhaps this
--              process's own), else the cursor's sender if another holder's; ''
--              if none (or a retry): no other scheduler ran the last slot
--   'takeover' as 'won', after the other holder's pending lease had lapsed
--   'pending'  the other holder is sending slot under a live lease
--   'sent'     every candidate is sent already (slot = the cursor; 0 when the
--              state has no history and ARGV[4] is '')
-- 'pending' and 'sent' (of a state that exists) record this attempt in 'looked',
-- once per slot (a waiter's re-looks write nothing); that write is timing only, so
-- pcall: refused (out of memory), the verdict stands.
-- unconfirmed: '' or, for a claim that passes a lapsed claim's own slot (it left
--   the candidates), that slot: after 'sent before', before slot, and perhaps sent
--   by the lapsed sender, which died after its kick or before it. The lapsed claim
--   is the holder's, or one a released claim had taken over ('lapsed').
local function looked(h, slot)
  local seen = slot .. ' ' .. ARGV[1]
  if h[9] ~= seen then
    redis.pcall('HSET', KEYS[1], 'looked', seen)
  end
end
local function reply(verdict, slot, before, holder, left, unconfirmed)
  return table.concat(
    {verdict, slot, before, string.format('%d', left), unconfirmed, holder}, ' ')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'sent', 'slot', 'holder', 'lease_until', 'sent_by', 'from',
  'unconfirmed', 'lapsed', 'looked')
local sent, holder = h[1], h[3]
if holder == ARGV[1] then  -- a retry whose first reply was lost: the lease starts now
  redis.call('HSET', KEYS[1], 'lease_until', string.format('%.0f', now + tonumber(ARGV[2])))
  return reply('won', h[2], h[6] or '', '', 0, h[7] or '')
end
if holder and tonumber(h[4]) > now then
  looked(h, h[2])
  return reply('pending', h[2], sent or '', holder, tonumber(h[4]) - now, '')
end
local after = sent
local pick = false
if not after then
  if ARGV[4] == '' then
    return reply('sent', '0', '', '', 0, '')
  end
  pick = ARGV[4]  -- no history (new schedule, or data lost): the current slot only
else
  for i = 5, #ARGV do
    if tonumber(ARGV[i]) > tonumber(after) then
      pick = ARGV[i]
      break
    end
  end
end
if not pick then
  looked(h, after)
  return reply('sent', after, after, h[5] or '', 0, '')
end
-- A lapsed claim's slot that this claim passes is not missed: its sender may have
-- kicked it before dying. (Its own missed slots were reported when it claimed.)
-- One that this claim takes over is remembered ('lapsed') until it is sent or
-- passed: a release of this claim (a failed send) does not make it missed.
local lapsed = h[8]
if holder then  -- lapsed: a live one answered 'pending' above
  lapsed = h[2]
end
local unconfirmed, keep = '', ''
if lapsed and lapsed ~= '' and after and tonumber(lapsed) > tonumber(after) then
  if tonumber(lapsed) < tonumber(pick) then
    unconfirmed = lapsed
  elseif tonumber(lapsed) == tonumber(pick) then
    keep = lapsed
  end
end
-- The cursor moves to just before the slot won: every earlier slot is sent or is
-- reported missed by this claim's winner (the cursor it moved from is kept in
-- 'from' for a retry whose reply was lost), so a takeover or a re-win after a
-- release starts from the won slot and never reports the same slots again.
redis.call('HSET', KEYS[1], 'slot', pick, 'holder', ARGV[1],
  'lease_until', string.format('%.0f', now + tonumber(ARGV[2])),
  'sent', string.format('%.0f', tonumber(pick) - 1), 'from', after or '',
  'unconfirmed', unconfirmed, 'lapsed', keep)
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
if holder then
  return reply('takeover', pick, after or '', holder, 0, unconfirmed)
end
local rival = ''
if h[9] and after then
  local slot, token = string.match(h[9], '^(%d+) (.*)$')
  if slot and tonumber(slot) >= tonumber(after) then
    rival = token
  end
end
if rival == '' and h[5] and string.match(h[5], '^(.*)#') ~= string.match(ARGV[1], '^(.*)#') then
  rival = h[5]
end
return reply('won', pick, after or '', rival, 0, unconfirmed)
"""

CONFIRM_SCRIPT = (
    LEDGER_LUA
    + """
-- KEYS[1] = the schedule's firing state
-- ARGV[1] = the attempt's token
-- ARGV[2] = the slot it sent
-- ARGV[3] = time to live of the state in milliseconds
-- ARGV[4] = "1" if the attempt took the slot over from a lapsed sender, else "0"
-- ARGV[5] = the lapsed claim's slot the claim passed (its 'unconfirmed'), or ''
-- ARGV[6..n] = slots the claim skipped as missed, for the ledger
-- returns 1 if this attempt's claim is now sent (also a retry whose first
-- reply was lost), 0 if another attempt had taken it over (both sent: the
-- worker guard drops the second copy). The cursor moves forward either way:
-- the broker holds the firing. A state lost with its data is made anew.
-- The ledger ('log') is written once per confirmed claim and never read here.
local h = redis.call('HMGET', KEYS[1], 'holder', 'sent', 'sent_by')
local mine = h[1] == ARGV[1] or h[3] == ARGV[1]
local first = h[1] == ARGV[1] or (not h[1] and h[3] ~= ARGV[1])
if not h[2] or tonumber(ARGV[2]) > tonumber(h[2]) then
  redis.call('HSET', KEYS[1], 'sent', ARGV[2], 'sent_by', ARGV[1])
  mine = mine or not h[1]
end
if h[1] == ARGV[1] then  -- after the HSET: a hash left empty would be deleted
  redis.call('HDEL', KEYS[1], 'slot', 'holder', 'lease_until', 'from', 'unconfirmed')
end
if mine and first then
  local outcome = 'sent'
  if ARGV[4] == '1' then
    outcome = 'taken_over'
  end
  ledger_append(KEYS[1], ARGV[1], ARGV[5], 6, ARGV[2], outcome)
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
if mine then
  return 1
end
return 0
"""
)

RELEASE_SCRIPT = (
    LEDGER_LUA
    + """
-- KEYS[1] = the schedule's firing state
-- ARGV[1] = the attempt's token
-- ARGV[2] = the lapsed claim's slot the claim passed, or ''
-- ARGV[3..n] = slots the claim skipped as missed, for the ledger
-- returns 1 if this attempt's pending claim was dropped (its send failed), so a
-- waiting scheduler takes the slot at once; 0 if it no longer held it. The cursor
-- the claim left just before the slot keeps the slot next in line.
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'slot', 'holder', 'lease_until', 'from', 'unconfirmed')
  ledger_append(KEYS[1], ARGV[1], ARGV[2], 3, false, false)
  return 1
end
return 0
"""
)

RENEW_SCRIPT = """
-- KEYS[1] = the schedule's firing state
-- ARGV[1] = the attempt's token
-- ARGV[2] = pending lease in milliseconds
-- returns 1 if this attempt still holds its pending claim, whose lease now ends
-- ARGV[2] ms from now (Redis time); 0 if it does not (confirmed, released, taken
-- over, or the state was lost): nothing is written then.
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'lease_until', string.format('%.0f', now + tonumber(ARGV[2])))
return 1
"""

PENDING_LEASE = 5.0
"""Seconds a won claim stays pending before another scheduler may take it over.
A healthy broker takes a message in milliseconds; a send still running after 5 s
has most likely hung, and a takeover's second copy is dropped by the worker guard.
A failed send releases its claim at once, so this bounds only a dead sender. A live
process renews the leases of its sends still queued behind others (a burst) for a
bounded time (``firing.MAX_RENEWED``), so a busy sender is not taken over."""

CLAIM_RETRY_WINDOW = 5.0
"""Seconds a claim is retried through Redis errors: a failover or restart usually
ends within it, and it is well inside the shortest slot worth retrying in. It is a
deadline on the whole claim: each call's timeout is what is left of it."""

CLAIM_RETRY_FIRST_DELAY = 0.1
"""Seconds before the first retry; each later retry waits twice as long."""

MIN_CALL_TIMEOUT = 0.5
"""Seconds any one call may take even when the window is nearly used up (or 0, no
retries): a healthy Redis answers a script in well under a millisecond, a busy one
within this."""

Verdict = Literal["won", "takeover", "pending", "sent"]


def default_holder() -> str:
    """``host:pid``, telling an operator which scheduler claimed."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Claim:
    """One reply of ``CLAIM_SCRIPT``."""

    verdict: Verdict
    slot: int
    """The slot won, pending, or the cursor when every candidate is sent."""
    previous: int | None
    """The cursor before this claim (or just before a lapsed first send's slot):
    slots after it and before ``slot`` were missed, except ``unconfirmed``."""
    holder: str
    """The other attempt: pending, taken over, or the sender of the cursor. For
    'won', a rival: the last attempt that found the cursor's slot or a later one
    taken (perhaps this process's own), else the cursor's sender if another
    holder's; '' if none (or a retry of a claim whose reply was lost)."""
    lease_left: float
    """Seconds the other attempt's pending lease has left ('pending' only)."""
    unconfirmed: int | None = None
    """The slot of the lapsed claim this takeover passed: its sender died after
    claiming it, perhaps after sending it. Between ``previous`` and ``slot``."""

    @property
    def won(self) -> bool:
        """Whether this attempt now holds ``slot`` and must send it."""
        return self.verdict in ("won", "takeover")


@dataclass(frozen=True)
class Confirm:
    """The arguments of one ``FiringClaims.confirm``, for ``confirm_many``."""

    key: str
    attempt: str
    slot: int
    ttl_ms: int
    takeover: bool = False
    missed: Sequence[int] = ()
    unconfirmed: int | None = None


class ClaimDeadlineError(RedisError):
    """A claim could not be decided before its deadline (Redis down or hung)."""


class FiringClaims:
    """Runs the claim protocol's scripts on one client, each within a deadline.

    Concurrent calls share round trips (``ScriptPipeline``): 10k crons due at one
    minute boundary cost a few round trips over one connection.
    """

    def __init__(
        self,
        redis: Redis,
        holder: str,
        *,
        retry_window: float = CLAIM_RETRY_WINDOW,
        pending_lease: float = PENDING_LEASE,
        min_replicas: int = 0,
    ) -> None:
        self.holder = holder
        self.retry_window = retry_window
        self.pending_lease_ms = round(pending_lease * 1000)
        self._claim = redis.register_script(CLAIM_SCRIPT)
        self._confirm = redis.register_script(CONFIRM_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)
        self._renew = redis.register_script(RENEW_SCRIPT)
        self._pipeline = ScriptPipeline(redis, min_replicas=min_replicas, same_turn=True)

    def new_attempt(self) -> str:
        """Return a token for one firing attempt: this scheduler's name and a random part."""
        return f"{self.holder}#{secrets.token_hex(4)}"

    async def claim(
        self,
        key: str,
        attempt: str,
        candidates: Sequence[int],
        ttl_ms: int,
        *,
        current: int | None = None,
        fresh: bool = True,
    ) -> Claim:
        """Claim the earliest unsent of ``candidates`` for ``attempt``.

        ``current`` is the slot taken when the schedule has no history (default:
        the last candidate): a new schedule does not send the window's older slots.
        ``fresh=False`` takes none then (verdict ``sent``, slot 0): catch-up.

        :raises RedisError: Redis failed for the whole ``retry_window``.
        """
        reply = await self._call(
            self._claim,
            key,
            [
                attempt,
                self.pending_lease_ms,
                ttl_ms,
                "" if not fresh else candidates[-1] if current is None else current,
                *candidates,
            ],
        )
        verdict, slot, previous, left, unconfirmed, holder = _text(reply).split(" ", 5)
        return Claim(
            verdict=cast("Verdict", verdict),
            slot=int(slot),
            previous=int(previous) if previous else None,
            holder=holder,
            lease_left=int(left) / 1000,
            unconfirmed=int(unconfirmed) if unconfirmed else None,
        )

    async def confirm(
        self,
        key: str,
        attempt: str,
        slot: int,
        ttl_ms: int,
        *,
        takeover: bool = False,
        missed: Sequence[int] = (),
        unconfirmed: int | None = None,
    ) -> bool:
        """Record that ``attempt`` put ``slot`` in the broker; False if taken over.

        ``takeover``, ``unconfirmed`` (``Claim.unconfirmed``) and ``missed`` (the
        slots its claim skipped) go to the ledger.
        """
        args: list[object] = [attempt, slot, ttl_ms, "1" if takeover else "0", unconfirmed or ""]
        return bool(await self._call(self._confirm, key, [*args, *missed_for_ledger(missed)]))

    async def confirm_many(self, confirms: Sequence[Confirm]) -> list[bool | BaseException]:
        """``confirm`` each of ``confirms`` in one group of calls; each one's outcome, in order.

        Each is its own ``CONFIRM_SCRIPT`` call (one atomic decision per key), sent
        together; one failing (after retrying transient errors for ``retry_window``,
        as ``confirm``) leaves the others standing: its error is returned in its place.
        """
        calls: list[tuple[AsyncScript, str, list[object]]] = [
            (
                self._confirm,
                c.key,
                [
                    c.attempt,
                    c.slot,
                    c.ttl_ms,
                    "1" if c.takeover else "0",
                    c.unconfirmed or "",
                    *missed_for_ledger(c.missed),
                ],
            )
            for c in confirms
        ]
        return [
            reply if isinstance(reply, BaseException) else bool(reply)
            for reply in await self._call_many(calls)
        ]

    async def release(
        self,
        key: str,
        attempt: str,
        *,
        missed: Sequence[int] = (),
        unconfirmed: int | None = None,
    ) -> bool:
        """Drop ``attempt``'s pending claim after a failed send (the rest: as ``confirm``)."""
        args: list[object] = [attempt, unconfirmed or "", *missed_for_ledger(missed)]
        return bool(await self._call(self._release, key, args))

    async def renew(self, key: str, attempt: str) -> bool:
        """Restart ``attempt``'s pending lease; False if it no longer holds its claim."""
        return bool(await self._call(self._renew, key, [attempt, self.pending_lease_ms]))

    async def _call(self, script: AsyncScript, key: str, args: list[object]) -> Any:  # noqa: ANN401 -- a script's reply
        """Run one script, retrying Redis errors until ``retry_window`` has passed.

        Every call is bounded by what is left of the window (the client's own
        reconnect retries included), so a hung Redis fails the operation on time.
        """
        deadline = time.monotonic() + self.retry_window
        delay = CLAIM_RETRY_FIRST_DELAY
        while True:
            left = max(deadline - time.monotonic(), MIN_CALL_TIMEOUT)
            try:
                return await self._pipeline.run(script, [key], args, timeout=left)
            except (ResponseError, ReplicasMissingError):
                # the command itself failed (a forged key, an OOM), or its write may
                # not survive a failover (WAIT already waited): not transient
                raise
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                if time.monotonic() + delay > deadline:
                    if isinstance(exc, RedisError):
                        raise
                    raise ClaimDeadlineError(
                        f"no reply within {self.retry_window}s ({type(exc).__name__})",
                    ) from exc
                logger.debug("Claim call on %s failed (%s); retrying in %.1fs", key, exc, delay)
                await asyncio.sleep(delay)
                delay *= 2

    async def _call_many(self, calls: Sequence[tuple[AsyncScript, str, list[object]]]) -> list[Any]:
        """Run script calls together, retrying the transient errors as ``_call`` does.

        Returns each call's reply, or its error once retrying is over (a
        ``ResponseError`` or ``ReplicasMissingError`` at once, as ``_call``).
        """
        deadline = time.monotonic() + self.retry_window
        delay = CLAIM_RETRY_FIRST_DELAY
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        while True:
            left = max(deadline - time.monotonic(), MIN_CALL_TIMEOUT)
            batch = [(calls[i][0], [calls[i][1]], calls[i][2]) for i in todo]
            try:
                got: list[Any] = await self._pipeline.run_many(batch, timeout=left)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                got = [exc] * len(todo)
            retry = []
            for index, reply in zip(todo, got, strict=True):
                replies[index] = reply
                if _transient(reply):
                    retry.append(index)
            if not retry:
                return replies
            if time.monotonic() + delay > deadline:
                for index in retry:
                    error = replies[index]
                    if not isinstance(error, RedisError):
                        replies[index] = ClaimDeadlineError(
                            f"no reply within {self.retry_window}s ({type(error).__name__})",
                        )
                return replies
            logger.debug("%d claim calls failed; retrying in %.1fs", len(retry), delay)
            await asyncio.sleep(delay)
            delay *= 2
            todo = retry


def _transient(reply: object) -> bool:
    """Whether a call's error is worth retrying (as ``FiringClaims._call`` decides)."""
    return isinstance(reply, (RedisError, OSError, asyncio.TimeoutError)) and not isinstance(
        reply, (ResponseError, ReplicasMissingError)
    )


def _text(value: object) -> str:
    """Return a reply element as text (the scripts reply with strings and integers, never nil)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
