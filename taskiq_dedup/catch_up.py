"""Catch-up: firing, once across replicas, the slots that fell while every scheduler was down.

Per schedule through the label ``dedup_catch_up`` (seconds; off by default):
when a scheduler starts, or its loop resumes after a gap longer than
``LATE_WINDOW`` (the regular claim's own reach back), it looks for slots of the
schedule whose time came within the window (the current one included) and after
the cursor ``sent`` of its firing state (``claims``) - slots never sent. By default
only the latest of them is fired (coalesced, as APScheduler's ``coalesce``); with
``dedup_catch_up_all`` every one, oldest first. Each is claimed under its own slot
with the claim protocol, so one replica sends it and the worker guard keys on it.

A schedule with no firing state (new, or its state expired: ``MIN_STATE_TTL_MS``
after its last claim) has no cursor, so nothing is caught up: a new schedule never
fires past slots. One-offs have ``one_off_grace`` instead and ignore the label.

This module knows schedules by id and trigger only (no taskiq): the adapter
passes a ``send`` callable per schedule.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskiq_dedup.errors import ConfigurationError
from taskiq_dedup.labels import CATCH_UP_ALL_LABEL, CATCH_UP_LABEL
from taskiq_dedup.triggers import (
    LATE_WINDOW,
    MAX_CANDIDATES,
    OneOffTrigger,
    SlotTrigger,
    Trigger,
    epoch_seconds,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence
    from datetime import datetime

    from taskiq_dedup.firing import FiringCoordinator

logger = logging.getLogger("taskiq_dedup.catch_up")

RESUME_GAP = LATE_WINDOW.total_seconds()
"""Seconds between two fetches after which the loop counts as resumed and
catch-up runs again: a gap longer than the regular claim's reach back may have
left slots that no tick will offer again."""

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass(frozen=True)
class CatchUpPolicy:
    """How far back a schedule's missed slots are fired, and whether all of them."""

    window: int
    """Seconds back from now; a slot older than this is never caught up."""
    every_slot: bool = False


def parse_catch_up(labels: Mapping[str, object], *, where: str) -> CatchUpPolicy | None:
    """Read the catch-up labels (values may arrive as strings), or ``None`` when off.

    :raises ConfigurationError: a bad value, naming ``where`` and the label.
    """
    raw = labels.get(CATCH_UP_LABEL)
    every = labels.get(CATCH_UP_ALL_LABEL, False)
    every_text = str(every).strip().lower()
    if every_text not in _TRUE | _FALSE:
        raise ConfigurationError(
            detail=f"{where}: {CATCH_UP_ALL_LABEL} must be true or false, got {every!r}",
        )
    if raw is None:
        if every_text in _TRUE:
            raise ConfigurationError(
                detail=f"{where}: {CATCH_UP_ALL_LABEL} needs {CATCH_UP_LABEL} (seconds)",
            )
        return None
    try:
        window = float(str(raw)) if not isinstance(raw, bool) else float("nan")
    except ValueError:
        window = float("nan")
    if not (math.isfinite(window) and window >= 0 and window == int(window)):
        raise ConfigurationError(
            detail=f"{where}: {CATCH_UP_LABEL} must be a whole number of seconds >= 0 "
            f"(0: off), got {raw!r}",
        )
    if window == 0:
        return None
    return CatchUpPolicy(int(window), every_slot=every_text in _TRUE)


def missed_slots(trigger: Trigger | SlotTrigger, now: datetime, window: int) -> list[int]:
    """Slots whose time came within the last ``window`` seconds (up to ``now``), ascending.

    The current slot counts when its time has passed: an hourly cron restarted at
    12:20 is not fired by the loop before 13:00, nor reached by its late window.
    At most ``MAX_CANDIDATES``, the latest kept (one claim's size).
    """
    end = epoch_seconds(now) + 1
    after = end - window - 2
    found = trigger.slots_between(after, end)
    while len(found) >= MAX_CANDIDATES:  # cut at the earliest: walk on, keep the latest
        more = trigger.slots_between(found[-1], end)
        if not more:
            break
        found = (found + more)[-MAX_CANDIDATES:]
    return found


@dataclass
class CatchUpStats:
    """Counters of catch-up since the source was made."""

    caught_up: int = 0
    """Missed slots this process claimed and sent."""
    catch_up_failures: int = 0
    """Catch-up sends or claims that failed (each logged at ERROR)."""


@dataclass(frozen=True)
class CatchUpTarget:
    """One schedule to catch up: its id, trigger, policy and how to send a slot."""

    schedule_id: str
    trigger: Trigger | SlotTrigger
    policy: CatchUpPolicy
    send: Callable[[int], Awaitable[None]]


class CatchUp:
    """Finds and fires missed slots through the claim protocol."""

    def __init__(self, coordinator: FiringCoordinator) -> None:
        self._coordinator = coordinator
        self._last_fetch: float | None = None
        self.stats = CatchUpStats()

    def due(self) -> bool:
        """Whether this fetch should catch up: the first one, or one after a gap."""
        now = time.monotonic()
        last, self._last_fetch = self._last_fetch, now
        return last is None or now - last > RESUME_GAP

    async def run(self, targets: Sequence[CatchUpTarget], now: datetime) -> None:
        """Catch up every target, concurrently; errors are logged, not raised.

        Concurrent calls share round trips, and a Redis outage costs one claim
        retry window (5 s) in all, not one per schedule. Ends with one INFO line
        (when there are targets) saying how many slots this process sent.
        """
        before = self.stats.caught_up
        targets = [t for t in targets if not isinstance(t.trigger, OneOffTrigger)]
        await asyncio.gather(*(self._logged(target, now) for target in targets))
        if targets:
            logger.info(
                "Catch-up checked %d schedules; this scheduler sent %d missed slots",
                len(targets),
                self.stats.caught_up - before,
            )

    async def _logged(self, target: CatchUpTarget, now: datetime) -> None:
        try:
            await self._one(target, now)
        except Exception as exc:
            self.stats.catch_up_failures += 1
            logger.error(  # noqa: TRY400 -- one line naming the cause
                "Catch-up of schedule %s failed (%s: %s); a later start retries",
                target.schedule_id,
                type(exc).__name__,
                exc,
            )

    async def _one(self, target: CatchUpTarget, now: datetime) -> None:
        missed = missed_slots(target.trigger, now, target.policy.window)
        if not missed:
            return
        candidates = missed if target.policy.every_slot else missed[-1:]
        coordinator = self._coordinator
        key = coordinator.keys.firings(target.schedule_id)
        ttl_ms = coordinator.state_ttl_ms(target.trigger, candidates[-1], now)
        while True:
            token = coordinator.claims.new_attempt()
            claim = await coordinator.claims.claim(key, token, candidates, ttl_ms, fresh=False)
            if not claim.won:
                return  # all sent, no history, or another replica is sending
            try:
                await target.send(claim.slot)
            except Exception:
                await coordinator.claims.release(key, token)
                raise
            await coordinator.claims.confirm(key, token, claim.slot, ttl_ms)
            self.stats.caught_up += 1
            passed = (
                len(target.trigger.slots_between(claim.previous, claim.slot))
                if claim.previous is not None
                else 0
            )
            logger.warning(
                "Caught up firing %s of schedule %s (%ds late, %s=%ds); %d earlier "
                "missed slots not sent (%s)",
                claim.slot,
                target.schedule_id,
                epoch_seconds(now) - claim.slot,
                CATCH_UP_LABEL,
                target.policy.window,
                passed,
                "coalesced or older than the window"
                if not target.policy.every_slot
                else "older than the window",
            )
            if claim.slot >= candidates[-1]:
                return
