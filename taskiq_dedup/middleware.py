"""``DedupMiddleware``: the worker-side guard that runs each firing once.

Which messages. A message from a scheduler carries ``schedule_id`` and
``dedup_slot`` (``CompositeScheduleSource`` sets both); its key is
``keys.firing(schedule_id, slot)``. A message with ``schedule_id`` but no slot
gets one in ``pre_send``: the current epoch second, floored. That dedups
replicated *cron* schedulers, which all send at the first loop tick of the
minute; interval schedules tick per process and need the composite source. A
message kicked with an ``idempotency_key`` label is keyed by task name + value
(a schedule's labels win over it). Anything else passes through without a
Redis call.

Execution. ``pre_execute`` claims the key with one script (see ``leases``). The
winner runs under a lease renewed every ``lease_ttl / 3`` and finishes the key
as ``done`` on success; a failure releases it, so a retry can run. A message
whose key is done, or running under a live lease, is not executed: it is
rewritten into the skip task (see ``skip``), logged in one INFO line and
counted. It is acknowledged - unless it carries the holder's own task id, when
it may be the holder's own delivery handed out again by ``XAUTOCLAIM`` (a task
running longer than the broker's ``idle_timeout``); acking that would ack the
holder's message, so it is left pending and acked at a later delivery.

Receivers. Run workers with ``taskiq worker --receiver
taskiq_dedup:DedupReceiver app:broker``. taskiq's stock receiver never runs a
duplicate either, but logs taskiq's WARNING "skipped setting result" for each
and calls ``on_error`` hooks with ``NoResultError`` (see ``skip``).

Crash safety (``RedisStreamBroker``). A SIGKILLed worker leaves its message
pending and its lease unrenewed. The broker redelivers the message once it has
been idle for ``idle_timeout`` (default 600 s); the lease (default 60 s) has
lapsed by then, so the redelivery takes the key over and runs to completion.
Hence ``lease_ttl`` must stay well below ``idle_timeout``: this middleware
refuses a stream broker whose ``idle_timeout`` is under twice the lease.
Dropping a duplicate that meets a live lease is safe because the live holder's
own message stays unacked until it finishes. (taskiq-redis 1.2 reclaims idle
messages only after a read returned new ones, so redelivery waits for traffic.)
A heartbeat needs the event loop: an ``async`` task that blocks it longer than
two heartbeats can lose its lease (counted in ``stats.leases_lost``).

Retries. A retry from ``SimpleRetryMiddleware`` / ``SmartRetryMiddleware`` is a
new message with the same task id and labels and a higher ``_retries``. Put
``DedupMiddleware`` *after* the retry middleware::

    broker.with_middlewares(SimpleRetryMiddleware(), DedupMiddleware(...))

``on_error`` hooks run in reverse order, so the key is released before the
retry is kicked. In the other order the retry may be claimed while the failed
holder still owns the key; the claim script lets a message with the holder's
task id and a higher generation (``_retries`` + taskiq's requeue count)
supersede it, so that order works too.

Idempotent kicks. ``pre_send`` binds the key to the first kick's task id. A
later kick with the same key is sent as an *echo* carrying the first task id
(so ``kiq`` returns a handle on the first task's result) and no payload; a
worker acknowledges an echo without running anything or writing a result.

Redis errors, by ``on_redis_error``:

- ``"reject"`` (default, fail-closed): the message is not executed and not
  lost. An acking broker (``RedisStreamBroker``) keeps it pending and
  redelivers it after ``idle_timeout``; a non-acking broker (``ListQueueBroker``)
  has handed over its only copy, so it is pushed back onto the queue after
  ``REQUEUE_DELAY`` (if the broker's Redis is down too, that fails and is
  logged as a lost message). A kick with an idempotency key raises
  ``DedupUnavailableError`` to the caller instead of being sent.
- ``"execute"`` (fail-open): the message runs unguarded, and may run twice.

The default is fail-closed because this package exists to prevent duplicate
side effects: a firing delayed until Redis is back is the smaller harm. Either
way each failure is one ERROR line and counts in ``stats.redis_errors``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import socket
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from redis.exceptions import RedisError
from taskiq.abc.middleware import TaskiqMiddleware
from taskiq.exceptions import NoResultError

from taskiq_dedup import broker_checks, skip
from taskiq_dedup.clock import Clock, utc_now
from taskiq_dedup.connection import resolve_redis
from taskiq_dedup.errors import ConfigurationError, DedupUnavailableError
from taskiq_dedup.keys import DEFAULT_PREFIX, KeySpace
from taskiq_dedup.labels import (
    IDEMPOTENCY_KEY_LABEL,
    SCHEDULE_ID_LABEL,
    SLOT_LABEL,
    parse_slot,
)
from taskiq_dedup.leases import Claim, Leases
from taskiq_dedup.stats import Counter, DedupStats

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from taskiq.abc.broker import AsyncBroker
    from taskiq.message import TaskiqMessage
    from taskiq.result import TaskiqResult

logger = logging.getLogger(__name__)

OnRedisError = Literal["execute", "reject"]
REDIS_ERRORS = (RedisError, OSError)

LEASE_TTL = 60.0
"""Seconds a claim holds a key without a heartbeat. Renewed every third of it
(20 s), so a holder survives ~40 s of a stalled event loop; and ten times below
``RedisStreamBroker``'s default ``idle_timeout`` (600 s), so a dead worker's
lease has long lapsed when its message is redelivered."""

HEARTBEATS_PER_LEASE = 3
"""Renewals per lease: two may be missed before the lease lapses."""

DONE_TTL = 24 * 3600.0
"""Seconds a finished firing is remembered. A duplicate arrives as late as the
queue lets it: a redelivery after ``idle_timeout`` (10 min), or copies stuck
behind a worker outage. A day covers an overnight outage; a key is ~200 bytes,
so even a per-second schedule costs ~17 MB."""

IDEMPOTENCY_TTL = 24 * 3600.0
"""Seconds an idempotency key answers with its first task: a day, as common for
HTTP idempotency keys. Keep results in the result backend at least as long, or a
replayed handle waits for a result that has expired."""

REDIS_TIMEOUT = 5.0
"""Socket timeouts of a client made from ``redis_url``: a hung Redis must fail
the call (and apply ``on_redis_error``), not hang every task."""


def generation(message: TaskiqMessage) -> int:
    """How many times this message was re-kicked by a retry or a requeue."""
    total = 0
    for label in ("_retries", "X-Taskiq-requeue"):
        try:
            total += int(str(message.labels.get(label, 0)))
        except ValueError:
            continue
    return total


@functools.cache
def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Hold:
    """A key this process holds for one running message."""

    message: TaskiqMessage  # keeps id(message) unique while held
    key: str
    token: str
    retention_ms: int
    generation: int
    heartbeat: asyncio.Task[None] | None = None
    lost: bool = False


class DedupMiddleware(TaskiqMiddleware):
    """Runs each scheduled firing and each idempotency key at most once.

    Options (keyword-only):

    - ``redis_url`` or ``redis``: where the keys live (exactly one); extra
      ``connection_kwargs`` go to ``Redis.from_url``. A passed client stays
      the caller's to close.
    - ``prefix``: namespace of every key (see ``KeySpace``).
    - ``lease_ttl``, ``done_ttl``, ``idempotency_ttl``: seconds, see
      ``LEASE_TTL``, ``DONE_TTL`` and ``IDEMPOTENCY_TTL``.
    - ``on_redis_error``: ``"reject"`` (fail-closed, default) or
      ``"execute"`` (fail-open); see the module docstring.
    - ``clock``: "now" for the slot of a scheduled message without one.

    ``stats`` is a ``DedupStats`` snapshot of the counters.
    """

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        redis: Redis | None = None,
        prefix: str = DEFAULT_PREFIX,
        lease_ttl: float = LEASE_TTL,
        done_ttl: float = DONE_TTL,
        idempotency_ttl: float = IDEMPOTENCY_TTL,
        on_redis_error: OnRedisError = "reject",
        clock: Clock = utc_now,
        **connection_kwargs: Any,  # noqa: ANN401 -- forwarded to redis-py
    ) -> None:
        super().__init__()
        self.keys = KeySpace(prefix)
        for name, value in (
            ("lease_ttl", lease_ttl),
            ("done_ttl", done_ttl),
            ("idempotency_ttl", idempotency_ttl),
        ):
            if not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigurationError(
                    detail=f"{name} must be a positive number of seconds, got {value!r}",
                )
        for name, value in (("done_ttl", done_ttl), ("idempotency_ttl", idempotency_ttl)):
            if value <= lease_ttl:
                raise ConfigurationError(
                    detail=f"{name} ({value}s) must be longer than lease_ttl ({lease_ttl}s)",
                )
        if on_redis_error not in get_args(OnRedisError):
            raise ConfigurationError(
                detail=(
                    f"on_redis_error must be one of {get_args(OnRedisError)}, "
                    f"got {on_redis_error!r}"
                ),
            )
        if redis_url is not None:
            connection_kwargs = {
                "socket_timeout": REDIS_TIMEOUT,
                "socket_connect_timeout": REDIS_TIMEOUT,
                **connection_kwargs,
            }
        self.redis, self._owns_redis = resolve_redis(redis_url, redis, connection_kwargs)
        self.lease_ms = round(lease_ttl * 1000)
        self.done_ms = round(done_ttl * 1000)
        self.idempotency_ms = round(idempotency_ttl * 1000)
        self.on_redis_error: OnRedisError = on_redis_error
        self.clock = clock
        self._leases = Leases(self.redis)
        self._holds: dict[int, _Hold] = {}
        self._stats = DedupStats()
        self._warned_unslotted = False

    @property
    def stats(self) -> DedupStats:
        """The counters so far (an immutable snapshot)."""
        return self._stats

    def _count(self, counter: Counter) -> None:
        self._stats = self._stats.bump(counter)

    def set_broker(self, broker: AsyncBroker) -> None:
        """Attach to ``broker``, refusing combinations that break the guarantees."""
        idle_timeout = getattr(broker, "idle_timeout", None)
        if isinstance(idle_timeout, int) and idle_timeout < 2 * self.lease_ms:
            raise ConfigurationError(
                detail=(
                    f"lease_ttl ({self.lease_ms} ms) must be at most half the "
                    f"broker's idle_timeout ({idle_timeout} ms): a redelivered "
                    "message must find a dead worker's lease lapsed"
                ),
            )
        skip.register(broker)
        super().set_broker(broker)

    async def startup(self) -> None:
        """Warn once, in a worker, about a broker whose idle workers will die."""
        broker = getattr(self, "broker", None)
        if broker is not None and getattr(broker, "is_worker_process", False):
            broker_checks.warn_if_idle_workers_die(broker)

    async def shutdown(self) -> None:
        """Stop heartbeats; close the Redis client if this middleware made it."""
        for hold in list(self._holds.values()):
            if hold.heartbeat is not None:
                hold.heartbeat.cancel()
        if self._owns_redis:
            await self.redis.aclose()

    # ---------------------------------------------------------------- sending

    async def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        """Give a scheduled message its slot; answer a repeated idempotent kick."""
        labels = message.labels
        if SCHEDULE_ID_LABEL in labels:
            if parse_slot(labels.get(SLOT_LABEL)) is None:
                labels[SLOT_LABEL] = str(math.floor(self.clock().timestamp()))
            return message
        if IDEMPOTENCY_KEY_LABEL not in labels:
            return message
        key = self.keys.idempotency(message.task_name, str(labels[IDEMPOTENCY_KEY_LABEL]))
        try:
            owner = await self._leases.bind(key, message.task_id, retention_ms=self.idempotency_ms)
        except REDIS_ERRORS as exc:
            self._redis_error("bind", key, exc)
            if self.on_redis_error == "execute":
                return message
            raise DedupUnavailableError(
                detail=f"cannot bind idempotency key {key}: {exc}",
            ) from exc
        if owner == message.task_id:
            return message
        self._count("idempotent_replays")
        logger.info(
            "Kick of %s with idempotency key %s answered by task %s",
            message.task_name,
            key,
            owner,
        )
        return skip.skip(message.model_copy(update={"task_id": owner}), "echo")

    # -------------------------------------------------------------- executing

    def _key(self, message: TaskiqMessage) -> tuple[str, int] | None:
        """Return the dedup key of ``message`` and its retention, if it has one."""
        labels = message.labels
        if SCHEDULE_ID_LABEL in labels:
            slot = parse_slot(labels.get(SLOT_LABEL))
            if slot is not None:
                return self.keys.firing(str(labels[SCHEDULE_ID_LABEL]), slot), self.done_ms
            if not self._warned_unslotted:
                self._warned_unslotted = True
                logger.warning(
                    "Message of schedule %s has no %s label, so it is not "
                    "deduplicated: add DedupMiddleware to the scheduler's broker",
                    labels[SCHEDULE_ID_LABEL],
                    SLOT_LABEL,
                )
            return None
        if IDEMPOTENCY_KEY_LABEL in labels:
            value = str(labels[IDEMPOTENCY_KEY_LABEL])
            return self.keys.idempotency(message.task_name, value), self.idempotency_ms
        return None

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        """Claim the message's key; rewrite a duplicate into a skip."""
        if skip.is_skip(message):
            return message
        keyed = self._key(message)
        if keyed is None:
            return message
        key, retention_ms = keyed
        token = uuid.uuid4().hex
        try:
            claim = await self._leases.claim(
                key,
                token=token,
                task_id=message.task_id,
                generation=generation(message),
                worker=_worker_name(),
                lease_ms=self.lease_ms,
                retention_ms=retention_ms,
            )
        except REDIS_ERRORS as exc:
            self._redis_error("claim", key, exc)
            if self.on_redis_error == "execute":
                self._count("executed_unguarded")
                return message
            return skip.skip(message, "unavailable")
        if claim.won:
            self._hold(message, key, token, retention_ms)
            self._count("executed")
            if claim.verdict == "takeover":
                self._count("lease_takeovers")
                logger.info(
                    "Took over %s from task %s on %s, whose lease had lapsed",
                    key,
                    claim.holder_task_id,
                    claim.holder_worker,
                )
            return message
        return self._drop(message, key, claim)

    def _drop(self, message: TaskiqMessage, key: str, claim: Claim) -> TaskiqMessage:
        deferred = claim.verdict == "running" and claim.holder_task_id == message.task_id
        self._count("dropped_running" if claim.verdict == "running" else "dropped_done")
        logger.info(
            "Duplicate task %s (%s) not executed: %s is %s, held by task %s on %s%s",
            message.task_id,
            message.task_name,
            key,
            claim.verdict,
            claim.holder_task_id,
            claim.holder_worker,
            "; left unacknowledged for a later delivery" if deferred else "",
        )
        return skip.skip(message, "deferred" if deferred else "duplicate")

    def _hold(self, message: TaskiqMessage, key: str, token: str, retention_ms: int) -> None:
        hold = _Hold(message, key, token, retention_ms, generation(message))
        hold.heartbeat = asyncio.create_task(self._heartbeat(hold))
        self._holds[id(message)] = hold
        # If this delivery's task ends without post_execute (a middleware
        # raised, the task was cancelled), stop renewing: the lease lapses.
        current = asyncio.current_task()
        if current is not None:
            current.add_done_callback(lambda _: self._unhold(message))

    def _unhold(self, message: TaskiqMessage) -> _Hold | None:
        hold = self._holds.pop(id(message), None)
        if hold is not None and hold.heartbeat is not None:
            hold.heartbeat.cancel()
        return hold

    async def _heartbeat(self, hold: _Hold) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 1000 / HEARTBEATS_PER_LEASE)
            try:
                extended = await self._leases.extend(
                    hold.key,
                    hold.token,
                    lease_ms=self.lease_ms,
                    retention_ms=hold.retention_ms,
                )
            except REDIS_ERRORS as exc:
                self._redis_error("extend the lease on", hold.key, exc)
                continue
            if not extended:
                self._lease_lost(hold)
                return

    async def on_error(
        self,
        message: TaskiqMessage,
        result: TaskiqResult[Any],
        exception: BaseException,
    ) -> None:
        """Release the key of a failed run, so that a retry can claim it."""
        hold = self._holds.get(id(message))
        if hold is None:
            return
        requeued = generation(message) > hold.generation  # Context.requeue()
        if isinstance(exception, NoResultError) and not requeued:
            return  # the task chose not to store a result: it ran, finish it
        self._unhold(message)
        try:
            await self._leases.release(hold.key, hold.token)
        except REDIS_ERRORS as exc:
            self._redis_error("release", hold.key, exc)

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        """Mark the key of a finished run done."""
        hold = self._unhold(message)
        if hold is None:
            return
        try:
            finished = await self._leases.finish(
                hold.key, hold.token, retention_ms=hold.retention_ms
            )
        except REDIS_ERRORS as exc:
            self._redis_error("finish", hold.key, exc)
            return
        if not finished and not hold.lost:
            self._lease_lost(hold)

    # ---------------------------------------------------------------- faults

    def _lease_lost(self, hold: _Hold) -> None:
        hold.lost = True
        self._count("leases_lost")
        logger.warning(
            "Lost the lease on %s: this worker stalled past lease_ttl and another "
            "delivery took the key over",
            hold.key,
        )

    def _redis_error(self, action: str, key: str, exc: BaseException) -> None:
        self._count("redis_errors")
        logger.error(
            "Redis error on %s %s (on_redis_error=%s): %s: %s",
            action,
            key,
            self.on_redis_error,
            type(exc).__name__,
            exc,
        )
