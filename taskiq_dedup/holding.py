"""The keys this process holds, and the one heartbeat loop renewing their leases.

One ``Holds`` per middleware keeps a ``Hold`` per running message, found by the
message object (the receiver hands the same object to ``pre_execute`` and
``post_execute`` / ``on_error``). Memory stays bounded whatever the receiver:

- no per-message callbacks or tasks: a hold refers to its message weakly and is
  dropped when the message is gone, also on paths where neither
  ``post_execute`` nor ``on_error`` runs (a middleware raised, the task was
  cancelled) - its lease then lapses, the safe outcome for an unknown end;
- one loop per process renews every held lease in one pipelined round per
  period (``lease / HEARTBEATS_PER_LEASE``), and ends when nothing is held.

A round that fails is tried again, each try bounded (``deadlines.within``),
until the earliest lease among the holds would lapse: a slow or restarting
Redis costs retries, not a live holder's lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskiq_dedup.deadlines import ATTEMPT_TIMEOUT, REDIS_ERRORS, within

if TYPE_CHECKING:
    from collections.abc import Callable

    from taskiq.message import TaskiqMessage

    from taskiq_dedup.leases import Leases

logger = logging.getLogger(__name__)

HEARTBEATS_PER_LEASE = 3
"""Renewal rounds per lease: a round may fail (and be retried) for up to two
periods before any lease lapses."""


@dataclass(eq=False)
class Hold:
    """A key this process holds for one running message."""

    key: str
    token: str
    retention_ms: int
    generation: int
    renewed_at: float = field(default_factory=time.monotonic)
    """``time.monotonic()`` when the last successful claim or renewal was sent:
    the lease runs at least until ``renewed_at + lease``."""
    lost: bool = False
    leased: bool = True
    """False for a once claim (``leases``): nothing to renew, nothing to finish;
    the hold only lets a failed run release the key."""
    also: tuple[tuple[str, int], ...] = ()
    """Further ``(key, retention_ms)`` held with the same token and lease (a
    schedule's running key, ``overlap``), renewed in the same round."""
    message_ref: weakref.ReferenceType[TaskiqMessage] | None = None


class Holds:
    """Running holds by message, renewed by one loop while any exists."""

    def __init__(
        self,
        leases: Leases,
        *,
        lease_ms: int,
        on_lost: Callable[[Hold], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._leases = leases
        self._lease = lease_ms / 1000
        self._on_lost = on_lost
        self._on_error = on_error
        self._holds: dict[int, Hold] = {}
        self._loop: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Return how many messages hold a key."""
        return len(self._holds)

    @property
    def period(self) -> float:
        """Seconds between renewal rounds."""
        return self._lease / HEARTBEATS_PER_LEASE

    def add(self, message: TaskiqMessage, hold: Hold) -> None:
        """Hold ``hold`` for ``message`` until ``pop`` or until the message is gone."""
        index = id(message)

        def gone(_: object) -> None:
            if self._holds.get(index) is hold:
                del self._holds[index]

        hold.message_ref = weakref.ref(message, gone)
        self._holds[index] = hold
        if hold.leased and (self._loop is None or self._loop.done()):
            self._loop = asyncio.create_task(self._run(), name="taskiq-dedup-heartbeat")

    def get(self, message: TaskiqMessage) -> Hold | None:
        """Return the hold of ``message``, if it holds a key."""
        hold = self._holds.get(id(message))
        if hold is None or hold.message_ref is None or hold.message_ref() is not message:
            return None
        return hold

    def pop(self, message: TaskiqMessage) -> Hold | None:
        """Stop renewing ``message``'s key; return its hold."""
        hold = self.get(message)
        if hold is not None:
            del self._holds[id(message)]
        return hold

    async def close(self) -> None:
        """Stop the loop (leases then lapse) and forget every hold."""
        self._holds.clear()
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None

    async def _run(self) -> None:
        while any(hold.leased for hold in self._holds.values()):
            await asyncio.sleep(self.period)
            await self.renew()

    async def renew(self) -> None:
        """One round: extend every live hold's lease, retrying until one would lapse."""
        holds = [hold for hold in self._holds.values() if hold.leased and not hold.lost]
        if not holds:
            return
        batches = [_leases_of(hold) for hold in holds]  # ``also`` may grow during the round
        started = time.monotonic()
        left = min(hold.renewed_at for hold in holds) + self._lease - started
        try:
            held = await within(
                # at least one try, also for a lease that may have lapsed already
                # (a blocked event loop): it is renewed if nobody took it over
                max(left, ATTEMPT_TIMEOUT),
                lambda: self._leases.extend_many(
                    [lease for batch in batches for lease in batch],
                    lease_ms=round(self._lease * 1000),
                ),
            )
        except REDIS_ERRORS as exc:
            self._on_error(exc)
            return
        current = {id(hold) for hold in self._holds.values()}
        replies = iter(held)
        for hold, batch in zip(holds, batches, strict=True):
            replied = [next(replies) for _ in batch]  # consume every reply of the hold
            still_held = all(replied)
            if still_held:
                hold.renewed_at = started
            elif id(hold) in current and not hold.lost:
                # (a hold finished or released during the round is not lost)
                hold.lost = True
                self._on_lost(hold)


def _leases_of(hold: Hold) -> list[tuple[str, str, int]]:
    """Every ``(key, token, retention_ms)`` the hold renews: its key first."""
    return [(hold.key, hold.token, hold.retention_ms)] + [
        (key, hold.token, retention_ms) for key, retention_ms in hold.also
    ]
