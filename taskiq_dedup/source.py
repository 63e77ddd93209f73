"""CompositeScheduleSource: every schedule once, every firing claimed once.

It wraps any schedule sources (``LabelScheduleSource``, taskiq-redis sources, your
own), names each schedule by its content (:func:`taskiq_dedup.schedule_id_for`),
merges the copies, and before a firing is sent claims ``(schedule id, slot)`` with
one atomic Redis script, so any number of ``taskiq scheduler`` processes send it
once. A lost claim raises taskiq's ``ScheduledTaskCancelledError``: the stock
scheduler logs it and moves on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from redis.exceptions import RedisError
from taskiq import ScheduledTask, ScheduleSource
from taskiq.exceptions import ScheduledTaskCancelledError
from taskiq.serializers import PickleSerializer
from taskiq.utils import maybe_awaitable

from taskiq_dedup import log_filter
from taskiq_dedup.claims import CLAIM_RETRY_WINDOW, FiringClaimer, default_holder
from taskiq_dedup.clock import Clock, utc_now
from taskiq_dedup.connection import resolve_redis
from taskiq_dedup.errors import (
    ConfigurationError,
    InvalidScheduleError,
    ScheduleInCodeError,
)
from taskiq_dedup.identity import schedule_id_for
from taskiq_dedup.keys import DEFAULT_PREFIX, KeySpace
from taskiq_dedup.labels import SCHEDULE_ID_LABEL, SLOT_LABEL
from taskiq_dedup.locks import release_lock
from taskiq_dedup.triggers import (
    OneOffTrigger,
    Trigger,
    describe,
    epoch_seconds,
    parse_trigger,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from redis.asyncio import Redis

logger = logging.getLogger("taskiq_dedup.source")

OnClaimError = Literal["skip", "send"]

DEFAULT_ONE_OFF_GRACE = timedelta(days=1)
"""A one-off is still fired this long after its time (schedulers were down); past
that it is stale and skipped, so its claim need not be kept forever."""

ADD_LOCK_TTL = timedelta(seconds=30)
"""Serialises concurrent ``add_schedule`` calls for one schedule: long enough for
one fetch of every child and one write, short enough that a crashed caller does
not block a re-registration at the next start-up."""

MIN_CLAIM_TTL_MS = 1000
"""A claim lives at least this long even when its slot's window has nearly passed."""


@dataclass(frozen=True)
class Origin:
    """One copy of a schedule: the child source holding it and the child's own task."""

    source: ScheduleSource
    task: ScheduledTask


@dataclass
class MergedSchedule:
    """One schedule under its deterministic id, with every copy it was merged from."""

    schedule_id: str
    task: ScheduledTask
    trigger: Trigger
    origins: list[Origin] = field(default_factory=list)

    @property
    def in_code(self) -> bool:
        """True if a copy lives in a source that cannot delete (a decorator label)."""
        return any(not _can_delete(origin.source) for origin in self.origins)


@dataclass
class _Identified:
    """A child's schedule with its parsed trigger and id, kept from fetch to fetch."""

    task: ScheduledTask
    trigger: Trigger
    id: str
    merged_task: ScheduledTask | None = None
    """The copy under the deterministic id, when this schedule's copy is the one sent."""


@dataclass
class SourceStats:
    """Counters of one ``CompositeScheduleSource`` since it was made."""

    claimed: int = 0
    """Firings this process claimed (and so is sending)."""
    fired: int = 0
    """Firings sent to the broker after a won claim (``post_send`` reached)."""
    duplicates_cancelled: int = 0
    """Firings another scheduler had claimed: not sent."""
    claim_errors: int = 0
    """Claims that failed on Redis errors after retrying."""
    sent_without_claim: int = 0
    """Of those, firings sent anyway (``on_claim_error="send"``)."""
    child_fetch_errors: int = 0
    """Child ``get_schedules`` calls that raised (their last good list was kept)."""
    invalid_schedules: int = 0
    """Schedules skipped at a fetch for a bad cron, timezone, interval or argument."""
    stale_one_offs: int = 0
    """One-offs skipped at a fetch for being older than ``one_off_grace``."""


def _overrides(source: ScheduleSource, method: str) -> bool:
    return getattr(type(source), method) is not getattr(ScheduleSource, method)


def _can_add(source: ScheduleSource) -> bool:
    return _overrides(source, "add_schedule")


def _can_delete(source: ScheduleSource) -> bool:
    return _overrides(source, "delete_schedule")


def _pickles(source: ScheduleSource) -> bool:
    serializer = getattr(source, "_serializer", None) or getattr(source, "serializer", None)
    return isinstance(serializer, PickleSerializer)


class CompositeScheduleSource(ScheduleSource):
    """Merges child schedule sources and claims each firing once across schedulers.

    :param sources: the child sources, e.g. ``[LabelScheduleSource(broker),
        ListRedisScheduleSource(url, serializer=JSONSerializer())]``. When copies
        of one schedule differ in labels, the first child's copy is sent.
    :param redis_url: URL of the Redis that holds the claims (or pass ``redis``).
    :param redis: an existing ``redis.asyncio`` client (plain, Sentinel-made or
        cluster); it stays yours to close.
    :param prefix: every key lives under it; use one per environment.
    :param add_to: the child ``add_schedule`` writes to; default: the first child
        that can add schedules.
    :param on_claim_error: when Redis stays unreachable for ``claim_retry_window``
        seconds: ``"skip"`` the firing (default: never a duplicate) or ``"send"`` it
        without a claim (never a miss; a ``DedupMiddleware`` still guards workers).
    :param one_off_grace: how late a one-off may still be fired.
    :param clock: returns "now"; replace it in tests.
    :param holder: names this scheduler in claims (default ``host:pid``).
    :param claim_retry_window: seconds a claim is retried through Redis errors.
    :param connection_kwargs: passed to ``Redis.from_url`` with ``redis_url``.
    """

    def __init__(
        self,
        sources: Sequence[ScheduleSource],
        *,
        redis_url: str | None = None,
        redis: Redis | None = None,
        prefix: str = DEFAULT_PREFIX,
        add_to: ScheduleSource | None = None,
        on_claim_error: OnClaimError = "skip",
        one_off_grace: timedelta = DEFAULT_ONE_OFF_GRACE,
        clock: Clock = utc_now,
        holder: str | None = None,
        claim_retry_window: float = CLAIM_RETRY_WINDOW,
        **connection_kwargs: Any,  # noqa: ANN401 -- forwarded to redis-py
    ) -> None:
        self.sources = list(sources)
        if not self.sources or not all(isinstance(s, ScheduleSource) for s in self.sources):
            raise ConfigurationError(
                detail=f"sources must be a non-empty list of ScheduleSource, got {sources!r}",
            )
        if add_to is not None and add_to not in self.sources:
            raise ConfigurationError(detail=f"add_to={add_to!r} is not one of the sources")
        if on_claim_error not in ("skip", "send"):
            raise ConfigurationError(
                detail=f"on_claim_error must be 'skip' or 'send', got {on_claim_error!r}",
            )
        if one_off_grace <= timedelta(0):
            raise ConfigurationError(
                detail=f"one_off_grace must be positive, got {one_off_grace!r}",
            )
        if claim_retry_window < 0:
            raise ConfigurationError(
                detail=f"claim_retry_window must be >= 0, got {claim_retry_window!r}",
            )
        self.keys = KeySpace(prefix)
        self.redis, self._owns_redis = resolve_redis(redis_url, redis, connection_kwargs)
        self.add_to = add_to
        self.on_claim_error = on_claim_error
        self.one_off_grace = one_off_grace
        self.clock = clock
        self.claimer = FiringClaimer(
            self.redis,
            holder or default_holder(),
            retry_window=claim_retry_window,
        )
        self._schedules: dict[str, MergedSchedule] = {}
        self._last_good: dict[int, list[ScheduledTask]] = {}
        self._reported: set[str] = set()
        self._known: dict[tuple[int, str], _Identified] = {}
        self._stats = SourceStats()

    @property
    def stats(self) -> SourceStats:
        """A snapshot of the counters."""
        return dataclasses.replace(self._stats)

    @property
    def schedules(self) -> Mapping[str, MergedSchedule]:
        """The merged schedules of the last fetch, by deterministic id."""
        return dict(self._schedules)

    async def startup(self) -> None:
        """Start every child, in order; stop the started ones if one fails."""
        log_filter.install(self)  # one INFO line per lost claim, not three
        started: list[ScheduleSource] = []
        try:
            for source in self.sources:
                await source.startup()
                started.append(source)
        except BaseException:
            for source in reversed(started):
                await source.shutdown()
            raise

    async def shutdown(self) -> None:
        """Stop every child; close the Redis client if this source made it."""
        for source in self.sources:
            try:
                await source.shutdown()
            except Exception:
                logger.exception("Schedule source %r failed to shut down", source)
        if self._owns_redis:
            await self.redis.aclose()

    async def get_schedules(self) -> list[ScheduledTask]:
        """Fetch every child concurrently and return each schedule once."""
        return [merged.task for merged in (await self.refresh()).values()]

    async def refresh(self) -> Mapping[str, MergedSchedule]:
        """Fetch every child and rebuild the merged schedules.

        A child that raises keeps its last good schedules (logged and counted), so
        a passing Redis error does not unschedule everything it holds.
        """
        fetched = await asyncio.gather(
            *(source.get_schedules() for source in self.sources),
            return_exceptions=True,
        )
        for index, (source, result) in enumerate(zip(self.sources, fetched, strict=True)):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                self._stats.child_fetch_errors += 1
                logger.warning(
                    "Schedule source %s failed (%s: %s); keeping its %d schedules "
                    "from the last good fetch",
                    type(source).__name__,
                    type(result).__name__,
                    result,
                    len(self._last_good.get(index, [])),
                )
            else:
                self._last_good[index] = result
        self._schedules = self._merge()
        return self._schedules

    def _merge(self) -> dict[str, MergedSchedule]:
        now = self.clock()
        merged: dict[str, MergedSchedule] = {}
        reported: set[str] = set()
        known: dict[tuple[int, str], _Identified] = {}
        for index, source in enumerate(self.sources):
            for fetched in self._last_good.get(index, []):
                identified = self._identify(index, source, fetched, reported)
                if identified is None:
                    continue
                known[index, fetched.schedule_id] = identified
                task, trigger, schedule_id = identified.task, identified.trigger, identified.id
                if isinstance(trigger, OneOffTrigger) and now - trigger.at > self.one_off_grace:
                    self._report(
                        reported,
                        f"stale {schedule_id}",
                        "Skipping %s: its time passed more than one_off_grace=%s ago",
                        describe(task),
                        self.one_off_grace,
                    )
                    self._stats.stale_one_offs += 1
                    continue
                entry = merged.get(schedule_id)
                if entry is None:
                    if identified.merged_task is None:
                        identified.merged_task = task.model_copy(
                            update={"schedule_id": schedule_id}
                        )
                    entry = merged[schedule_id] = MergedSchedule(
                        schedule_id=schedule_id,
                        task=identified.merged_task,
                        trigger=trigger,
                    )
                entry.origins.append(Origin(source, task))
        self._known = known
        self._reported = reported
        return merged

    def _identify(
        self,
        index: int,
        source: ScheduleSource,
        task: ScheduledTask,
        reported: set[str],
    ) -> _Identified | None:
        """Parse and name ``task``, reusing the last fetch's work if it is unchanged.

        Redis children return new but equal objects at every fetch: comparing
        with the last fetch's copy is far cheaper than hashing again, and keeps
        one set of objects alive instead of two.
        """
        previous = self._known.get((index, task.schedule_id))
        if previous is not None and (previous.task is task or previous.task == task):
            return previous
        try:
            trigger = parse_trigger(task)
            return _Identified(task, trigger, schedule_id_for(task, trigger))
        except InvalidScheduleError as exc:
            self._report(reported, str(exc), "Skipping %s", exc)
        except Exception as exc:  # one malformed entry must not hide the rest
            self._report(
                reported,
                f"malformed {index} {task!r}",
                "Skipping a malformed schedule from %s (%s: %s): %r",
                type(source).__name__,
                type(exc).__name__,
                exc,
                task,
            )
        self._stats.invalid_schedules += 1
        return None

    def _report(self, reported: set[str], key: str, message: str, *args: object) -> None:
        """Log a WARNING once while the same problem persists across fetches."""
        reported.add(key)
        if key not in self._reported:
            logger.warning(message, *args)

    async def pre_send(self, task: ScheduledTask) -> None:
        """Claim the firing; raise ``ScheduledTaskCancelledError`` if it is not ours."""
        entry = self._schedules.get(task.schedule_id)
        if entry is None:
            logger.info(
                "Schedule %s is gone since the last fetch; not sending",
                task.schedule_id,
            )
            raise ScheduledTaskCancelledError
        for origin in entry.origins:
            await maybe_awaitable(origin.source.pre_send(origin.task))
        now = self.clock()
        slot = entry.trigger.slot(now)
        key = self.keys.claim(entry.schedule_id, slot)
        try:
            result = await self.claimer.claim(key, self._claim_ttl_ms(entry.trigger, slot, now))
        except RedisError as exc:
            self._stats.claim_errors += 1
            if self.on_claim_error == "send":
                self._stats.sent_without_claim += 1
                logger.error(  # noqa: TRY400 -- one line, no traceback: the cause is named
                    "Cannot claim %s (%s: %s); sending without a claim (on_claim_error='send')",
                    key,
                    type(exc).__name__,
                    exc,
                )
                self._mark_firing(task, entry.schedule_id, slot)
                return
            logger.error(  # noqa: TRY400
                "Cannot claim %s (%s: %s); firing skipped (on_claim_error='skip')",
                key,
                type(exc).__name__,
                exc,
            )
            raise ScheduledTaskCancelledError from exc
        if not result.won:
            self._stats.duplicates_cancelled += 1
            logger.info("Firing %s was claimed by %s; not sending it again", key, result.holder)
            raise ScheduledTaskCancelledError
        self._stats.claimed += 1
        self._mark_firing(task, entry.schedule_id, slot)

    def _claim_ttl_ms(self, trigger: Trigger, slot: int, now: Any) -> int:  # noqa: ANN401
        if isinstance(trigger, OneOffTrigger):
            expiry = trigger.claim_expiry(slot, self.one_off_grace)
        else:
            expiry = trigger.claim_expiry(slot)
        return max(MIN_CLAIM_TTL_MS, (expiry - epoch_seconds(now)) * 1000)

    @staticmethod
    def _mark_firing(task: ScheduledTask, schedule_id: str, slot: int) -> None:
        """Put (schedule, slot) on the message and give the firing a stable task id."""
        task.labels = {**task.labels, SCHEDULE_ID_LABEL: schedule_id, SLOT_LABEL: slot}
        if task.task_id is None or task.task_id.startswith(f"{schedule_id}-"):
            task.task_id = f"{schedule_id}-{slot}"

    async def post_send(self, task: ScheduledTask) -> None:
        """Pass ``post_send`` to every copy's child with the child's own task."""
        self._stats.fired += 1
        entry = self._schedules.get(task.schedule_id)
        if entry is None:
            return
        for origin in entry.origins:
            try:
                await maybe_awaitable(origin.source.post_send(origin.task))
            except Exception:
                logger.exception(
                    "post_send of %s failed for %s",
                    type(origin.source).__name__,
                    describe(origin.task),
                )
        if isinstance(entry.trigger, OneOffTrigger):
            self._schedules.pop(entry.schedule_id, None)

    async def add_schedule(self, schedule: ScheduledTask) -> None:
        """Add ``schedule`` under its deterministic id unless it already exists.

        Sets ``schedule.schedule_id`` to the deterministic id, so the
        ``CreatedSchedule`` returned by ``schedule_by_cron`` & co. carries it.
        Concurrent calls for one schedule (every web worker's start-up) write it
        at most once.

        :raises InvalidScheduleError: bad trigger or arguments, naming them.
        :raises ConfigurationError: no child can add, or it would pickle.
        """
        target = self._add_target()
        schedule.schedule_id = schedule_id_for(schedule, parse_trigger(schedule))
        lock_key = self.keys.add_lock(schedule.schedule_id)
        token = uuid.uuid4().hex
        ttl_ms = int(ADD_LOCK_TTL.total_seconds() * 1000)
        if not await self.redis.set(lock_key, token, nx=True, px=ttl_ms):
            logger.debug("Schedule %s is being added by another process", schedule.schedule_id)
            return
        try:
            if schedule.schedule_id in await self.refresh():
                logger.debug("Schedule %s exists; not adding it again", schedule.schedule_id)
                return
            await target.add_schedule(schedule.model_copy(deep=True))
            logger.info("Added %s to %s", describe(schedule), type(target).__name__)
        finally:
            await release_lock(self.redis, lock_key, token)

    def _add_target(self) -> ScheduleSource:
        target = self.add_to or next((s for s in self.sources if _can_add(s)), None)
        if target is None:
            raise ConfigurationError(
                detail="no child source can add schedules "
                f"({', '.join(type(s).__name__ for s in self.sources)})",
            )
        if _pickles(target):
            raise ConfigurationError(
                detail=f"{type(target).__name__} would pickle schedules; create it with "
                "serializer=JSONSerializer() (taskiq.serializers)",
            )
        return target

    async def delete_schedule(self, schedule_id: str) -> None:
        """Delete every copy of a schedule, by deterministic id or any child's id.

        An id no child reports (e.g. a one-off not yet due) is passed to every
        child that can delete, as taskiq-redis's own sources do.

        :raises ScheduleInCodeError: a copy is declared in a task decorator.
        """
        merged = await self.refresh()
        entry = merged.get(schedule_id) or next(
            (
                candidate
                for candidate in merged.values()
                if any(origin.task.schedule_id == schedule_id for origin in candidate.origins)
            ),
            None,
        )
        if entry is None:
            for source in self.sources:
                if _can_delete(source):
                    await source.delete_schedule(schedule_id)
            return
        if entry.in_code:
            raise ScheduleInCodeError(
                detail=f"{describe(entry.task)} is declared in code (the task's schedule "
                "label); remove it from the decorator to delete it",
            )
        for origin in entry.origins:
            await origin.source.delete_schedule(origin.task.schedule_id)
        self._schedules.pop(entry.schedule_id, None)
