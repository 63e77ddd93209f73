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
import functools
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from redis.exceptions import RedisError
from taskiq import AsyncBroker, ScheduledTask, ScheduleSource
from taskiq.exceptions import ScheduledTaskCancelledError
from taskiq.kicker import AsyncKicker
from taskiq.serializers import PickleSerializer
from taskiq.utils import maybe_awaitable

from taskiq_dedup import log_filter
from taskiq_dedup.catch_up import CatchUp, CatchUpTarget, parse_catch_up
from taskiq_dedup.checks import check_server
from taskiq_dedup.claims import (
    CLAIM_RETRY_WINDOW,
    PENDING_LEASE,
    FiringClaims,
    default_holder,
)
from taskiq_dedup.clock import Clock, utc_now
from taskiq_dedup.connection import check_min_replicas, resolve_redis
from taskiq_dedup.errors import (
    ConfigurationError,
    InvalidScheduleError,
    ScheduleInCodeError,
)
from taskiq_dedup.firing import Attempt, FiringCoordinator, due_slots
from taskiq_dedup.identity import schedule_id_for
from taskiq_dedup.keys import DEFAULT_PREFIX, KeySpace
from taskiq_dedup.labels import SCHEDULE_ID_LABEL, SLOT_LABEL
from taskiq_dedup.locks import acquire_lock, release_lock
from taskiq_dedup.log_fields import decision
from taskiq_dedup.merge import MergedSchedule, Merger, can_delete, user_set_id
from taskiq_dedup.metrics import MetricsOption, serve, track
from taskiq_dedup.triggers import (
    LATE_WINDOW,
    OneOffTrigger,
    describe,
    parse_trigger,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterable, Mapping, Sequence

    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

logger = logging.getLogger("taskiq_dedup.source")

OnClaimError = Literal["skip", "send"]

DEFAULT_ONE_OFF_GRACE = timedelta(days=1)
"""A one-off is still fired this long after its time (schedulers were down); past
that it is stale and skipped, so its claim need not be kept forever."""

ADD_LOCK_TTL = timedelta(seconds=30)
"""Serialises concurrent ``add_schedule`` calls for one schedule: long enough for
one fetch of every child and one write, short enough that a crashed caller does
not block a re-registration at the next start-up."""

ADD_WAIT = ADD_LOCK_TTL + timedelta(seconds=5)
"""How long an ``add_schedule`` that met another caller's lock waits for its
outcome: the lock's whole life, so a crashed holder's lock has lapsed by then."""

ADD_WAIT_POLL = 0.1
"""Seconds between looks at another caller's ``add_schedule`` lock."""

RESEND_FIRST_DELAY = 1.0
"""Seconds before this process retries a firing whose send failed (doubling after
each failure): a broker blip is usually over by then, and a waiting replica has
already had the released slot if its own broker is healthy."""


@dataclass
class SourceStats:
    """Counters of one ``CompositeScheduleSource`` since it was made."""

    claimed: int = 0
    """Firings this process claimed (and so is sending)."""
    fired: int = 0
    """Claimed firings confirmed in the broker (``post_send`` reached)."""
    duplicates_cancelled: int = 0
    """Firings another scheduler had sent or was sending: not sent here."""
    takeovers: int = 0
    """Firings taken over from a scheduler whose send did not confirm in time."""
    send_failures: int = 0
    """Claimed firings whose send failed; released and sent again (here or elsewhere)."""
    sent_late: int = 0
    """Firings sent after a later slot was already due (a late or skipped tick)."""
    missed: int = 0
    """Firings never sent within the late window, each logged at ERROR."""
    unconfirmed: int = 0
    """Firings whose sender died after claiming them, perhaps after sending them,
    and that left the late window before a takeover; each logged at WARNING."""
    waits_given_up: int = 0
    """Firings left to another scheduler whose send outlasted the longest wait."""
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
    caught_up: int = 0
    """Missed slots this process sent by catch-up (``dedup_catch_up``)."""
    catch_up_failures: int = 0
    """Catch-up claims or sends that failed (each logged at ERROR)."""


def _overrides(source: ScheduleSource, method: str) -> bool:
    return getattr(type(source), method) is not getattr(ScheduleSource, method)


def _can_add(source: ScheduleSource) -> bool:
    return _overrides(source, "add_schedule")


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
    :param claim_retry_window: seconds a claim is retried through Redis errors: a
        deadline on each claim, confirm and release.
    :param pending_lease: seconds a claimed firing may take to reach the broker
        before another scheduler may take it over.
    :param broker: the broker late firings are sent through: a firing whose send
        failed (retried here), and a slot a busy tick skipped. Default: the broker
        of the first child that has one (``LabelScheduleSource``); without one, a
        later tick sends them.
    :param metrics: export the counters to Prometheus (docs/METRICS.md): ``True``
        (default) to the default registry when ``prometheus_client`` is installed,
        ``False`` not at all, or a ``CollectorRegistry``.
    :param metrics_port: serve the default registry on this port from
        ``startup`` (the scheduler process has no metrics server of its own); a
        port in use is logged at ERROR and the scheduler runs on without it.
    :param min_replicas: after each claim, confirm and release, wait for this
        many replicas to acknowledge it (``WAIT``, ``replication``); fewer in time
        is handled as Redis being unavailable (``on_claim_error``). Default 0: off.
    :param connection_kwargs: passed to ``Redis.from_url`` with ``redis_url``.
    """

    def __init__(
        self,
        sources: Sequence[ScheduleSource],
        *,
        redis_url: str | None = None,
        redis: Redis | RedisCluster | None = None,
        prefix: str = DEFAULT_PREFIX,
        add_to: ScheduleSource | None = None,
        on_claim_error: OnClaimError = "skip",
        one_off_grace: timedelta = DEFAULT_ONE_OFF_GRACE,
        clock: Clock = utc_now,
        holder: str | None = None,
        claim_retry_window: float = CLAIM_RETRY_WINDOW,
        pending_lease: float = PENDING_LEASE,
        broker: AsyncBroker | None = None,
        metrics: MetricsOption = True,
        metrics_port: int | None = None,
        min_replicas: int = 0,
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
        if not pending_lease > 0:
            raise ConfigurationError(
                detail=f"pending_lease must be positive, got {pending_lease!r}",
            )
        self.keys = KeySpace(prefix)
        self.redis, self._owns_redis = resolve_redis(redis_url, redis, connection_kwargs)
        self.min_replicas = check_min_replicas(min_replicas)
        self.add_to = add_to
        self.on_claim_error = on_claim_error
        self.one_off_grace = one_off_grace
        self.clock = clock
        self.claims = FiringClaims(
            self.redis,
            holder or default_holder(),
            retry_window=claim_retry_window,
            pending_lease=pending_lease,
            min_replicas=self.min_replicas,
        )
        self.firings = FiringCoordinator(
            self.claims,
            self.keys,
            one_off_grace=one_off_grace,
        )
        self.broker = broker or next(
            (
                b
                for b in (getattr(s, "broker", None) for s in self.sources)
                if isinstance(b, AsyncBroker)
            ),
            None,
        )
        self._sending: dict[str, tuple[ScheduledTask, Attempt, asyncio.Task[Any] | None]] = {}
        self._late_senders: dict[str, asyncio.Task[None]] = {}
        self._releases: set[asyncio.Task[None]] = set()
        self._closing = False
        self._merger = Merger(one_off_grace)
        self._schedules: dict[str, MergedSchedule] = {}
        """By public id: what ``get_schedules`` returns as ``ScheduledTask.schedule_id``."""
        self._last_good: dict[int, list[ScheduledTask]] = {}
        self._stats = SourceStats()
        self.metrics_port = metrics_port
        track("scheduler", self, metrics)
        self.catch_up = CatchUp(self.firings)
        self._bad_labels: set[str] = set()

    @property
    def stats(self) -> SourceStats:
        """A snapshot of the counters."""
        firing = self.firings.stats
        return dataclasses.replace(
            self._stats,
            claimed=firing.claimed,
            fired=firing.confirmed,
            duplicates_cancelled=firing.duplicates_cancelled,
            takeovers=firing.takeovers,
            send_failures=firing.send_failures,
            sent_late=firing.sent_late,
            missed=firing.missed,
            unconfirmed=firing.unconfirmed,
            waits_given_up=firing.waits_given_up,
            claim_errors=firing.claim_errors,
            caught_up=self.catch_up.stats.caught_up,
            catch_up_failures=self.catch_up.stats.catch_up_failures,
        )

    def _fields(self, entry: MergedSchedule) -> dict[str, object]:
        """Return the ``extra=`` of a log line about ``entry`` before a slot is won."""
        return decision(
            schedule_id=entry.schedule_id,
            key=self.firings.key(entry.schedule_id),
            holder=self.claims.holder,
        )

    @property
    def schedules(self) -> Mapping[str, MergedSchedule]:
        """The merged schedules of the last fetch, by public id."""
        return dict(self._schedules)

    async def startup(self) -> None:
        """Check the claims' Redis (one WARNING per finding), then start every child.

        Children start in order; the started ones are stopped if one fails.
        """
        await check_server(self.redis, logger)
        if self.metrics_port is not None:
            try:
                serve(self.metrics_port)
            except OSError as exc:  # the schedule matters more than its metrics
                logger.error("Metrics not served on port %s: %s", self.metrics_port, exc)  # noqa: TRY400
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
        """Stop late sends and every child; close the Redis client if this source made it.

        A claim won but not confirmed (a send still in flight) is released, so
        another scheduler sends the firing without waiting out its lease.
        """
        self._closing = True  # no late sender starts from here on
        for sender in list(self._late_senders.values()):
            sender.cancel()
        await asyncio.gather(*self._late_senders.values(), return_exceptions=True)
        await asyncio.gather(*self._releases, return_exceptions=True)
        for _, attempt, owner in list(self._sending.values()):
            if owner is not None:
                owner.remove_done_callback(self._send_ended)
            try:
                await self.firings.release(attempt)
            except RedisError:
                logger.debug("Release at shutdown failed; the pending lease lapses on its own")
        self._sending.clear()
        await self.firings.close()
        for source in self.sources:
            try:
                await source.shutdown()
            except Exception:
                logger.exception("Schedule source %r failed to shut down", source)
        if self._owns_redis:
            await self.redis.aclose()

    async def get_schedules(self) -> list[ScheduledTask]:
        """Fetch every child concurrently and return each schedule once.

        The first fetch, and one after a pause of the loop, first catches up the
        schedules labelled ``dedup_catch_up`` (``catch_up``).
        """
        merged = await self.refresh()
        if self.catch_up.due():
            await self.catch_up.run(self._catch_up_targets(merged.values()), self.clock())
        return [entry.task for entry in merged.values()]

    def _catch_up_targets(self, entries: Iterable[MergedSchedule]) -> list[CatchUpTarget]:
        """Return the schedules with a catch-up window; a bad label is one ERROR, then off."""
        targets = []
        for entry in entries:
            try:
                policy = parse_catch_up(entry.task.labels, where=describe(entry.task))
            except ConfigurationError as exc:
                if entry.public_id not in self._bad_labels:
                    self._bad_labels.add(entry.public_id)
                    logger.error("%s; no catch-up for it", exc.detail)  # noqa: TRY400
                continue
            if policy is not None and self.broker is None:
                if entry.public_id not in self._bad_labels:
                    self._bad_labels.add(entry.public_id)
                    logger.error(
                        "%s: no broker to send catch-up firings through (pass broker=)",
                        describe(entry.task),
                    )
                continue
            if policy is not None:
                targets.append(
                    CatchUpTarget(
                        entry.schedule_id,
                        entry.trigger,
                        policy,
                        functools.partial(self._send_slot, entry),
                    ),
                )
        return targets

    async def _send_slot(self, entry: MergedSchedule, slot: int) -> None:
        """Kick the firing ``slot`` of ``entry`` through ``broker``, bounded like a claim."""
        assert self.broker is not None  # noqa: S101 -- checked by the caller
        task = entry.task.model_copy(deep=True)
        self._mark_firing(task, entry.schedule_id, slot)
        kick: Coroutine[Any, Any, Any] = (
            AsyncKicker(task.task_name, self.broker, task.labels)
            .with_labels(schedule_id=task.schedule_id)
            .with_task_id(task_id=task.task_id)
            .kiq(*task.args, **task.kwargs)
        )
        await asyncio.wait_for(kick, self.claims.pending_lease_ms / 1000)

    async def refresh(self) -> Mapping[str, MergedSchedule]:
        """Fetch every child and rebuild the merged schedules, by public id.

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
        merged = self._merger.merge(
            [(source, self._last_good.get(index, [])) for index, source in enumerate(self.sources)],
            self.clock(),
        )
        self._stats.invalid_schedules += merged.invalid
        self._stats.stale_one_offs += merged.stale
        self._schedules = merged.schedules
        return self._schedules

    async def pre_send(self, task: ScheduledTask) -> None:
        """Claim the firing; raise ``ScheduledTaskCancelledError`` if it is not ours.

        Waits (bounded) while another scheduler's send of the same firing is in
        flight, and sends it if that send fails or its sender dies.
        """
        entry = self._schedules.get(task.schedule_id)
        if entry is None:
            logger.info(
                "Schedule %s is gone since the last fetch; not sending",
                task.schedule_id,
                extra=decision(schedule_id=task.schedule_id),
            )
            raise ScheduledTaskCancelledError
        for origin in entry.origins:
            await maybe_awaitable(origin.source.pre_send(origin.task))
        now = self.clock()
        try:
            attempt = await self.firings.acquire(entry.schedule_id, entry.trigger, now)
        except RedisError as exc:
            if self.on_claim_error == "send":
                self._stats.sent_without_claim += 1
                logger.error(  # noqa: TRY400 -- one line, no traceback: the cause is named
                    "Cannot claim a firing of schedule %s (%s: %s); sending without a claim "
                    "(on_claim_error='send')",
                    entry.schedule_id,
                    type(exc).__name__,
                    exc,
                    extra=self._fields(entry),
                )
                self._mark_firing(task, entry.schedule_id, due_slots(entry.trigger, now)[-1])
                return
            logger.error(  # noqa: TRY400
                "Cannot claim a firing of schedule %s (%s: %s); firing skipped "
                "(on_claim_error='skip')",
                entry.schedule_id,
                type(exc).__name__,
                exc,
                extra=self._fields(entry),
            )
            raise ScheduledTaskCancelledError from exc
        if attempt is None:
            raise ScheduledTaskCancelledError
        self._mark_firing(task, entry.schedule_id, attempt.slot)
        # taskiq calls post_send only after the broker took the message. If the
        # send task ends first (the kick raised, --send-timeout cancelled it), the
        # callback releases the claim, so a waiting scheduler sends at once.
        sender = asyncio.current_task()
        self._sending[task.schedule_id] = (task, attempt, sender)
        if sender is not None:
            sender.add_done_callback(self._send_ended)

    def _send_ended(self, sender: asyncio.Task[Any]) -> None:
        """Release every claim a finished send task won but did not confirm."""
        for schedule_id, (task, attempt, owner) in list(self._sending.items()):
            if owner is sender:
                del self._sending[schedule_id]
                release = asyncio.get_running_loop().create_task(self._send_failed(task, attempt))
                self._releases.add(release)
                release.add_done_callback(self._releases.discard)

    async def _send_failed(self, task: ScheduledTask, attempt: Attempt) -> None:
        logger.error(
            "Sending firing %s of schedule %s failed; releasing it for another attempt",
            attempt.slot,
            attempt.schedule_id,
            extra=attempt.log_fields(),
        )
        try:
            await self.firings.release(attempt)
        except RedisError as exc:
            logger.error(  # noqa: TRY400
                "Cannot release firing %s of schedule %s (%s); it is retried once its "
                "pending lease lapses",
                attempt.slot,
                attempt.schedule_id,
                exc,
                extra=attempt.log_fields(),
            )
        self._send_late(task.schedule_id, delay=RESEND_FIRST_DELAY)

    @staticmethod
    def _mark_firing(task: ScheduledTask, schedule_id: str, slot: int) -> None:
        """Put (schedule, slot) on the message and give the firing a stable task id."""
        task.labels = {**task.labels, SCHEDULE_ID_LABEL: schedule_id, SLOT_LABEL: slot}
        if task.task_id is None or task.task_id.startswith(f"{schedule_id}-"):
            task.task_id = f"{schedule_id}-{slot}"

    async def post_send(self, task: ScheduledTask) -> None:
        """Confirm the claim; pass ``post_send`` to every copy's child."""
        sending = self._sending.get(task.schedule_id)
        if sending is not None and sending[0] is task:
            del self._sending[task.schedule_id]
            _, attempt, sender = sending
            if sender is not None:
                sender.remove_done_callback(self._send_ended)
            try:
                await self.firings.confirm(attempt)
            except RedisError as exc:
                logger.error(  # noqa: TRY400
                    "Cannot confirm firing %s of schedule %s (%s); another scheduler may "
                    "send it again once its pending lease lapses (the worker guard drops it)",
                    attempt.slot,
                    attempt.schedule_id,
                    exc,
                    extra=attempt.log_fields(),
                )
            if attempt.behind:
                self._send_late(task.schedule_id)
        entry = self._schedules.get(task.schedule_id)
        if entry is None:
            return
        await self._children_sent(entry)

    async def _children_sent(self, entry: MergedSchedule) -> None:
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
            self._schedules.pop(entry.public_id, None)

    # ------------------------------------------------------------ late sends

    def _send_late(self, public_id: str, *, delay: float = 0.0) -> None:
        """Send what is still due of a schedule through ``broker``, in the background.

        Used after a failed send, and after a late slot when the current one is
        still due. At most one such sender runs per schedule.
        """
        entry = self._schedules.get(public_id)
        if self._closing or entry is None:
            return
        if self.broker is None:
            logger.error(
                "No broker to re-send schedule %s from this scheduler (pass broker=); %s",
                public_id,
                "a one-off is lost unless another scheduler sends it"
                if isinstance(entry.trigger, OneOffTrigger)
                else "a later tick sends its unsent slot",
            )
            return
        running = self._late_senders.get(public_id)
        if running is not None and not running.done():
            return
        sender = asyncio.get_running_loop().create_task(self._late_sends(entry, delay))
        self._late_senders[public_id] = sender
        sender.add_done_callback(
            lambda done: (
                self._late_senders.pop(public_id)
                if self._late_senders.get(public_id) is done
                else None
            ),
        )

    async def _late_sends(self, entry: MergedSchedule, delay: float) -> None:
        """Claim and send the schedule's unsent slots until none is left."""
        assert self.broker is not None  # noqa: S101 -- checked by _send_late
        give_up = asyncio.get_running_loop().time() + LATE_WINDOW.total_seconds()
        while True:
            if delay:
                await asyncio.sleep(delay)
            try:
                attempt = await self.firings.acquire(
                    entry.schedule_id, entry.trigger, self.clock(), stagger=False
                )
            except RedisError as exc:
                logger.error(  # noqa: TRY400
                    "Cannot claim late firings of schedule %s (%s); a later tick retries",
                    entry.schedule_id,
                    exc,
                    extra=self._fields(entry),
                )
                return
            if attempt is None:
                return
            task = entry.task.model_copy(deep=True)
            self._mark_firing(task, entry.schedule_id, attempt.slot)
            kick: Coroutine[Any, Any, Any] = (
                AsyncKicker(task.task_name, self.broker, task.labels)
                .with_labels(schedule_id=task.schedule_id)
                .with_task_id(task_id=task.task_id)
                .kiq(*task.args, **task.kwargs)
            )
            try:  # bounded like the claim: a hung kick would pin this sender
                await asyncio.wait_for(kick, self.claims.pending_lease_ms / 1000)
            except Exception as exc:
                logger.error(  # noqa: TRY400
                    "Sending firing %s of schedule %s failed again (%s: %s)",
                    attempt.slot,
                    entry.schedule_id,
                    type(exc).__name__,
                    exc,
                    extra=attempt.log_fields(),
                )
                try:
                    await self.firings.release(attempt)
                except RedisError:
                    logger.debug("Release failed too; the pending lease lapses on its own")
                delay = max(2 * delay, RESEND_FIRST_DELAY)
                if asyncio.get_running_loop().time() + delay > give_up:
                    logger.error(  # noqa: TRY400 -- the cause was logged above
                        "Giving up resending firing %s of schedule %s from this scheduler",
                        attempt.slot,
                        entry.schedule_id,
                        extra=attempt.log_fields(),
                    )
                    return
                continue
            try:
                await self.firings.confirm(attempt)
            except RedisError as exc:
                logger.error(  # noqa: TRY400
                    "Cannot confirm late firing %s of schedule %s (%s)",
                    attempt.slot,
                    entry.schedule_id,
                    exc,
                    extra=attempt.log_fields(),
                )
            await self._children_sent(entry)
            if not attempt.behind:
                return
            delay = 0.0

    async def add_schedule(self, schedule: ScheduledTask) -> None:
        """Add ``schedule`` unless a schedule with its content already exists.

        Sets ``schedule.schedule_id`` to the id the caller set
        (``kicker().with_schedule_id(...)``), else to the existing schedule's
        public id or the content id, so the ``CreatedSchedule`` returned by
        ``schedule_by_cron`` & co. carries it. A schedule that exists but has no
        copy under the caller's id gets one (merged by content, one claim per
        firing). Concurrent calls for one schedule (every web worker's
        start-up) write it at most once.

        :raises InvalidScheduleError: bad trigger or arguments, or the id the
            caller set is another schedule's; the message names them.
        :raises ConfigurationError: no child can add, or it would pickle.
        """
        target = self._add_target()
        content_id = schedule_id_for(schedule, parse_trigger(schedule))
        user_id = user_set_id(schedule.schedule_id, content_id)
        schedule.schedule_id = user_id or content_id
        lock_key = self.keys.add_lock(content_id)
        token = uuid.uuid4().hex
        ttl_ms = int(ADD_LOCK_TTL.total_seconds() * 1000)
        give_up = asyncio.get_running_loop().time() + ADD_WAIT.total_seconds()
        # The loser of the lock waits for the holder's outcome: the schedule is
        # stored, or the holder failed (lock released or lapsed) and we write it.
        while not await acquire_lock(self.redis, lock_key, token, ttl_ms):
            if asyncio.get_running_loop().time() > give_up:
                raise TimeoutError(
                    f"add_schedule of {describe(schedule)}: another caller held "
                    f"{lock_key} for {ADD_WAIT.total_seconds():.0f}s",
                )
            logger.debug("Schedule %s is being added by another process", schedule.schedule_id)
            await asyncio.sleep(ADD_WAIT_POLL)
        try:
            existing = next(
                (m for m in (await self.refresh()).values() if m.schedule_id == content_id),
                None,
            )
            if existing is not None and (user_id is None or existing.answers_to(user_id)):
                schedule.schedule_id = existing.public_id
                logger.debug("Schedule %s exists; not adding it again", schedule.schedule_id)
                return
            # New, or it exists but not yet under the id the caller chose: a copy
            # carrying that id makes it the schedule's name (merged by content).
            holder = next(
                (m for m in self._schedules.values() if m.answers_to(schedule.schedule_id)),
                None,
            )
            if holder is not None:  # a child would overwrite the other schedule's copy
                raise InvalidScheduleError(
                    detail=f"schedule id {schedule.schedule_id!r} is already used by "
                    f"{describe(holder.task)}; choose another id for {describe(schedule)}",
                )
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
        """Delete every copy of a schedule, by public id, content id or any child's id.

        An id no child reports (e.g. a one-off not yet due) is passed to every
        child that can delete, as taskiq-redis's own sources do.

        :raises ScheduleInCodeError: a copy is declared in a task decorator.
        """
        merged = await self.refresh()
        entry = merged.get(schedule_id) or next(
            (candidate for candidate in merged.values() if candidate.answers_to(schedule_id)),
            None,
        )
        if entry is None:
            for source in self.sources:
                if can_delete(source):
                    await source.delete_schedule(schedule_id)
            return
        if entry.in_code:
            raise ScheduleInCodeError(
                detail=f"{describe(entry.task)} is declared in code (the task's schedule "
                "label); remove it from the decorator to delete it",
            )
        for origin in entry.origins:
            await origin.source.delete_schedule(origin.task.schedule_id)
        self._schedules.pop(entry.public_id, None)
