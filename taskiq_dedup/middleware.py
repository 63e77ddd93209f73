"""``DedupMiddleware``: the worker-side guard that runs each firing once.

The taskiq hooks, wiring the parts that each hold one concept:

- ``pre_send`` (in the sending process) names a stock scheduler's firing after
  its decorator schedule (``stock_schedules``) and binds an idempotent kick as
  pending, or turns a repeated one into an echo of the task that answers it
  (``idempotency``); ``post_send`` confirms the binding once the broker has
  accepted the message.
- ``pre_execute`` claims the message's key with one script (``leases``): the
  winner runs under a lease renewed by the process's one heartbeat loop
  (``holding``); a duplicate is rewritten into the skip task (``skip``) and
  settled within a bounded time. ``post_execute`` marks the key done;
  ``on_error`` releases it. A firing on a broker that cannot redeliver is
  claimed *once* instead (``record_finish``): no lease and no finish, one script
  per message, as nothing could deliver it again after a lease lapsed. ``on_error``
  releases a key either way, so a retry middleware placed *before* this one can
  run it again (a retry with the holder's task id and a higher generation also
  supersedes a holder that was not released).
- Every Redis operation has a deadline on the whole operation, retries
  included (``deadlines``). ``on_redis_error`` decides what a failure means:
  ``"reject"`` (default, fail-closed: the message is not run and comes back
  later; an idempotent kick raises ``DedupUnavailableError``) or ``"execute"``
  (run unguarded). Each failure is one ERROR line and a ``redis_errors`` count.
- ``startup`` checks the server once (``checks``).

A ``RedisStreamBroker`` whose ``idle_timeout`` is under twice ``lease_ttl`` is
refused: a dead worker's redelivered message must find its lease lapsed.
The protocols, state by state, are in docs/DESIGN.md ("The worker-side protocols").
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
from typing import TYPE_CHECKING, Any, Literal, get_args

from taskiq.abc.middleware import TaskiqMiddleware
from taskiq.exceptions import NoResultError

from taskiq_dedup import broker_checks, skip
from taskiq_dedup.checks import check_server
from taskiq_dedup.clock import Clock, utc_now
from taskiq_dedup.connection import check_min_replicas, resolve_redis
from taskiq_dedup.deadlines import ATTEMPT_TIMEOUT, OPERATION_DEADLINE, REDIS_ERRORS, within
from taskiq_dedup.errors import ConfigurationError, DedupUnavailableError
from taskiq_dedup.holding import Hold, Holds
from taskiq_dedup.idempotency import PENDING_TTL, Binder
from taskiq_dedup.keys import DEFAULT_PREFIX, KeySpace
from taskiq_dedup.labels import (
    CLAIM_TOKEN_LABEL,
    IDEMPOTENCY_KEY_LABEL,
    SCHEDULE_ID_LABEL,
    SLOT_LABEL,
    parse_slot,
)
from taskiq_dedup.leases import Claim, Leases
from taskiq_dedup.log_fields import decision
from taskiq_dedup.metrics import MetricsOption, track
from taskiq_dedup.overlap import OverlapGate, OverlapPolicies, OverlapPolicy
from taskiq_dedup.policy_checks import check_schedule_labels
from taskiq_dedup.stats import Counter, DedupStats
from taskiq_dedup.stock_schedules import StockNaming

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from taskiq.abc.broker import AsyncBroker
    from taskiq.message import TaskiqMessage
    from taskiq.result import TaskiqResult

logger = logging.getLogger(__name__)

OnRedisError = Literal["execute", "reject"]

LEASE_TTL = 60.0
"""Seconds a claim holds a key without a heartbeat. Renewed every third of it
(20 s), so a holder survives ~40 s of a stalled event loop or failing renewals;
and ten times below ``RedisStreamBroker``'s default ``idle_timeout`` (600 s), so
a dead worker's lease has long lapsed when its message is redelivered."""

DONE_TTL = 24 * 3600.0
"""Seconds a finished firing is remembered. A duplicate arrives as late as the
queue lets it: a redelivery after ``idle_timeout`` (10 min), or copies stuck
behind a worker outage. A day covers an overnight outage; a key is ~360 bytes
with the firing ledger's fields, so even a per-second schedule costs ~31 MB."""

IDEMPOTENCY_TTL = 24 * 3600.0
"""Seconds an idempotency key answers with its first task: a day, as common for
HTTP idempotency keys. Keep results in the result backend at least as long, or a
replayed handle waits for a result that has expired."""

REDIS_TIMEOUT = ATTEMPT_TIMEOUT
"""Socket timeouts of a client made from ``redis_url``: one try's bound, so a
hung Redis fails a try (and the operation's deadline still bounds the rest)."""

TOKEN_BYTES = 8
"""Random bytes of an attempt's token: it only has to differ from every other
attempt on the same key, and 64 bits make a collision implausible."""


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


def _decision(message: TaskiqMessage, key: str, holder: str | None) -> dict[str, object]:
    """Return the structured fields of a decision on ``message``'s key."""
    labels = message.labels
    schedule_id = labels.get(SCHEDULE_ID_LABEL)
    return decision(
        schedule_id=None if schedule_id is None else str(schedule_id),
        slot=parse_slot(labels.get(SLOT_LABEL)) if schedule_id is not None else None,
        key=key,
        holder=holder,
    )


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigurationError(
            detail=f"{name} must be a positive number of seconds, got {value!r}",
        )
    return float(value)


class DedupMiddleware(TaskiqMiddleware):
    """Runs each scheduled firing and each idempotency key at most once.

    Options (keyword-only):

    - ``redis_url`` or ``redis``: where the keys live (exactly one); extra
      ``connection_kwargs`` go to ``Redis.from_url``. A passed client stays
      the caller's to close.
    - ``prefix``: namespace of every key (see ``KeySpace``).
    - ``lease_ttl``, ``done_ttl``, ``idempotency_ttl``, ``pending_ttl``:
      seconds, see ``LEASE_TTL``, ``DONE_TTL``, ``IDEMPOTENCY_TTL`` and
      ``idempotency.PENDING_TTL``.
    - ``redis_deadline``: seconds one Redis operation may take with its
      retries (``deadlines.OPERATION_DEADLINE``).
    - ``rerun_lost``: whether a later idempotent kick re-runs a key whose run
      was lost (lease lapsed); default: for brokers that cannot redeliver
      (``ListQueueBroker``, ``PubSubBroker``, ``InMemoryBroker``).
    - ``on_redis_error``: ``"reject"`` (fail-closed, default) or
      ``"execute"`` (fail-open); see the module docstring.
    - ``clock``: "now" for naming a stock scheduler's firing.
    - ``metrics``: export the counters to Prometheus (docs/METRICS.md): ``True``
      (default) to the default registry when ``prometheus_client`` is
      installed, ``False`` not at all, or a ``CollectorRegistry``.
    - ``overlap``: the overlap policy of schedules without a ``dedup_overlap``
      label: ``"allow"`` (default), ``"skip"`` or ``"buffer_one"`` (``overlap``).
    - ``record_finish``: whether a firing's finished run is marked done, one
      more script call per message. Default (``None``): where the guarantee
      needs it, on brokers that redeliver (a redelivery after a lapsed lease
      must find the run done). On brokers that cannot redeliver, a firing is
      claimed once (no lease, no finish) and its run record reads ``started``;
      a failed run is still released for a retry. Idempotency keys and firings
      under an overlap policy always use a lease and a finish.
    - ``min_replicas``: claims, done marks, releases and idempotency bindings
      wait for that many replicas (``replication``); fewer in time is handled
      as a Redis error (``on_redis_error``). Default 0: off.

    ``stats`` is a ``DedupStats`` snapshot of the counters.
    """

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        redis: Redis | RedisCluster | None = None,
        prefix: str = DEFAULT_PREFIX,
        lease_ttl: float = LEASE_TTL,
        done_ttl: float = DONE_TTL,
        idempotency_ttl: float = IDEMPOTENCY_TTL,
        pending_ttl: float = PENDING_TTL,
        redis_deadline: float = OPERATION_DEADLINE,
        rerun_lost: bool | None = None,
        on_redis_error: OnRedisError = "reject",
        clock: Clock = utc_now,
        metrics: MetricsOption = True,
        overlap: OverlapPolicy = "allow",
        min_replicas: int = 0,
        record_finish: bool | None = None,
        **connection_kwargs: Any,  # noqa: ANN401 -- forwarded to redis-py
    ) -> None:
        super().__init__()
        self.keys = KeySpace(prefix)
        for name, value in (
            ("lease_ttl", lease_ttl),
            ("done_ttl", done_ttl),
            ("idempotency_ttl", idempotency_ttl),
            ("pending_ttl", pending_ttl),
            ("redis_deadline", redis_deadline),
        ):
            _positive(name, value)
        for name, value in (("done_ttl", done_ttl), ("idempotency_ttl", idempotency_ttl)):
            if value <= lease_ttl:
                raise ConfigurationError(
                    detail=f"{name} ({value}s) must be longer than lease_ttl ({lease_ttl}s)",
                )
        if pending_ttl >= idempotency_ttl:
            raise ConfigurationError(
                detail=(
                    f"pending_ttl ({pending_ttl}s) must be shorter than "
                    f"idempotency_ttl ({idempotency_ttl}s)"
                ),
            )
        for name, flag in (("rerun_lost", rerun_lost), ("record_finish", record_finish)):
            if flag is not None and not isinstance(flag, bool):
                raise ConfigurationError(
                    detail=f"{name} must be True, False or None, got {flag!r}",
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
        self.deadline = float(redis_deadline)
        self.on_redis_error: OnRedisError = on_redis_error
        self.clock = clock
        self._rerun_lost = rerun_lost
        self._record_finish = record_finish
        self._once = record_finish is False  # for None, set_broker decides by broker kind
        self.min_replicas = check_min_replicas(min_replicas)
        self._leases = Leases(self.redis, min_replicas=self.min_replicas)
        self._binder = Binder(
            self._leases,
            retention_ms=self.idempotency_ms,
            pending_ms=round(pending_ttl * 1000),
            rerun_lost=bool(rerun_lost),
            deadline=self.deadline,
        )
        self._holds = Holds(
            self._leases,
            lease_ms=self.lease_ms,
            on_lost=self._lease_lost,
            on_error=lambda exc: self._redis_error("renew the leases of", "held keys", exc),
        )
        self._counts: dict[Counter, int] = dict.fromkeys(get_args(Counter), 0)
        track("worker", self, metrics)
        self._overlap = OverlapGate(
            OverlapPolicies(self.redis, overlap),
            self._leases,
            self._holds,
            self.keys,
            lease_ms=self.lease_ms,
            deadline=self.deadline,
            count=self._count,
            on_error=self._redis_error,
        )
        self._naming = StockNaming(clock)
        self._warned_unslotted = False
        self._checked = False

    @property
    def stats(self) -> DedupStats:
        """The counters so far (an immutable snapshot)."""
        return DedupStats(**self._counts)

    @property
    def held(self) -> int:
        """How many keys this process holds for running messages right now."""
        return len(self._holds)

    def _count(self, counter: Counter) -> None:
        self._counts[counter] += 1

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
        redelivers = not broker_checks.is_kind(broker, broker_checks.NO_REDELIVERY_BROKERS)
        if self._rerun_lost is None:
            self._binder.rerun_lost = not redelivers
        self._once = not (redelivers if self._record_finish is None else self._record_finish)

    async def startup(self) -> None:
        """Check the Redis server and the broker once; name unmatchable schedules.

        One WARNING per finding: an evicting or too old Redis; in a worker, a
        broker whose idle workers will die; outside workers (a scheduler), a task
        whose decorator schedules a stock scheduler's firing cannot be matched to.
        """
        if self._checked:
            return
        self._checked = True
        await check_server(self.redis, logger)
        check_schedule_labels(self.broker)
        if self.broker.is_worker_process:
            broker_checks.warn_if_idle_workers_die(self.broker)
        else:
            self._naming.warn_ambiguous(self.broker)

    async def shutdown(self) -> None:
        """Stop the heartbeat loop; close the Redis client if this middleware made it."""
        await self._holds.close()
        if self._owns_redis:
            await self.redis.aclose()

    # ---------------------------------------------------------------- sending

    async def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        """Name a stock scheduler's firing; bind an idempotent kick, or make it an echo."""
        labels = message.labels
        if SCHEDULE_ID_LABEL in labels:
            if parse_slot(labels.get(SLOT_LABEL)) is None:
                self._naming.name(message, self.broker)
            return message
        if IDEMPOTENCY_KEY_LABEL not in labels:
            return message
        key = self.keys.idempotency(message.task_name, str(labels[IDEMPOTENCY_KEY_LABEL]))
        try:
            owner = await self._binder.bind(key, message)
        except REDIS_ERRORS as exc:
            self._redis_error("bind", key, exc)
            if self.on_redis_error == "execute":
                return message
            raise DedupUnavailableError(
                detail=f"cannot bind idempotency key {key}: {type(exc).__name__}: {exc}",
            ) from exc
        if owner == message.task_id:
            return message
        self._count("idempotent_replays")
        logger.info(
            "Kick of %s with idempotency key %s answered by task %s",
            message.task_name,
            key,
            owner,
            extra=decision(key=key, holder=owner),
        )
        return skip.skip(message.model_copy(update={"task_id": owner}), "echo")

    async def post_send(self, message: TaskiqMessage) -> None:
        """Confirm an idempotent kick's binding: the broker has accepted the message.

        If another task took the key meanwhile, the handle ``kiq`` returns is
        pointed at that task (taskiq builds it from this message's task id).
        """
        labels = message.labels
        if (
            skip.is_skip(message)
            or SCHEDULE_ID_LABEL in labels
            or IDEMPOTENCY_KEY_LABEL not in labels
        ):
            return
        key = self.keys.idempotency(message.task_name, str(labels[IDEMPOTENCY_KEY_LABEL]))
        try:
            owner = await self._binder.confirm(key, message)
        except REDIS_ERRORS as exc:
            self._redis_error("confirm", key, exc)
            return
        if owner != message.task_id:
            logger.info(
                "Kick %s of %s with idempotency key %s is answered by task %s, "
                "which took the key before this kick was confirmed",
                message.task_id,
                message.task_name,
                key,
                owner,
                extra=decision(key=key, holder=owner),
            )
            message.task_id = owner

    # -------------------------------------------------------------- executing

    def _key(self, message: TaskiqMessage) -> tuple[str, int, bool] | None:
        """Return the dedup key of ``message``, its retention and whether it is bound."""
        labels = message.labels
        if SCHEDULE_ID_LABEL in labels:
            slot = parse_slot(labels.get(SLOT_LABEL))
            if slot is not None:
                key = self.keys.firing(str(labels[SCHEDULE_ID_LABEL]), slot)
                return key, self.done_ms, False
            if not self._warned_unslotted:
                self._warned_unslotted = True
                logger.warning(
                    "Message of schedule %s has no %s label, so it is not "
                    "deduplicated: add DedupMiddleware to the scheduler's broker",
                    labels[SCHEDULE_ID_LABEL],
                    SLOT_LABEL,
                    extra=decision(schedule_id=str(labels[SCHEDULE_ID_LABEL])),
                )
            return None
        if IDEMPOTENCY_KEY_LABEL in labels:
            value = str(labels[IDEMPOTENCY_KEY_LABEL])
            return self.keys.idempotency(message.task_name, value), self.idempotency_ms, True
        return None

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        """Claim the message's key; rewrite a duplicate into a skip."""
        if skip.is_skip(message):
            return message
        keyed = self._key(message)
        if keyed is None:
            return message
        key, retention_ms, bound = keyed
        # a delivery pushed back after a failed claim goes on with that claim's attempt
        token = str(message.labels.pop(CLAIM_TOKEN_LABEL, "")) or os.urandom(TOKEN_BYTES).hex()
        attempt = generation(message)
        once = self._once and not bound and not self._overlap.applies(message)
        try:
            claim = await within(
                self.deadline,
                lambda: self._leases.claim(
                    key,
                    token=token,
                    task_id=message.task_id,
                    generation=attempt,
                    worker=_worker_name(),
                    lease_ms=self.lease_ms,
                    retention_ms=retention_ms,
                    bound=bound,
                    once=once,
                ),
            )
        except REDIS_ERRORS as exc:
            self._redis_error("claim", key, exc)
            if self.on_redis_error == "execute":
                self._count("executed_unguarded")
                return message
            # Redis may have applied the claim, its reply lost: the pushed-back delivery
            # claims with the same token and finds it its own (a once claim has no
            # lease that would lapse for it).
            unavailable = skip.skip(message, "unavailable")
            unavailable.labels[CLAIM_TOKEN_LABEL] = token
            return unavailable
        if claim.won:
            self._holds.add(message, Hold(key, token, retention_ms, attempt, leased=not once))
            if claim.verdict == "takeover":
                self._count("lease_takeovers")
                logger.info(
                    "Took over %s from task %s on %s, whose lease had lapsed",
                    key,
                    claim.holder_task_id,
                    claim.holder_worker,
                    extra=_decision(message, key, claim.holder_task_id),
                )
            return await self._run_or_wait(message, bound=bound)
        return self._drop(message, key, claim)

    async def _run_or_wait(self, message: TaskiqMessage, *, bound: bool) -> TaskiqMessage:
        """Apply a won firing's overlap policy (``overlap``): run, wait, or skip it."""
        if not bound and self._overlap.applies(message):
            outcome = await self._overlap.enter(
                message, str(message.labels[SCHEDULE_ID_LABEL]), _worker_name()
            )
            if outcome == "skipped":
                return skip.skip(message, "overlap")
            if outcome == "unavailable" and self.on_redis_error == "reject":
                await self._give_back(message)
                return skip.skip(message, "unavailable")
        self._count("executed")
        return message

    async def _give_back(self, message: TaskiqMessage) -> None:
        """Release the key ``message`` won: it is not run now and comes back later."""
        hold = self._holds.pop(message)
        if hold is None:
            return
        try:
            await within(self.deadline, lambda: self._leases.release(hold.key, hold.token))
        except REDIS_ERRORS as exc:
            self._redis_error("release", hold.key, exc)

    def _drop(self, message: TaskiqMessage, key: str, claim: Claim) -> TaskiqMessage:
        deferred = claim.verdict == "running" and claim.holder_task_id == message.task_id
        counter: Counter = "dropped_done"  # also "started": that run was taken
        if claim.verdict == "running":
            counter = "dropped_running"
        elif claim.verdict == "other":
            counter = "dropped_other_kick"
        self._count(counter)
        logger.info(
            "Duplicate task %s (%s) not executed: %s is %s, held by task %s on %s%s",
            message.task_id,
            message.task_name,
            key,
            "answered by another kick" if claim.verdict == "other" else claim.verdict,
            claim.holder_task_id,
            claim.holder_worker,
            "; not acknowledged now: it comes back later" if deferred else "",
            extra=_decision(message, key, claim.holder_task_id),
        )
        return skip.skip(message, "deferred" if deferred else "duplicate")

    async def on_error(
        self,
        message: TaskiqMessage,
        result: TaskiqResult[Any],
        exception: BaseException,
    ) -> None:
        """Release the key of a failed run, so that a retry can claim it."""
        hold = self._holds.get(message)
        if hold is None:
            return
        requeued = generation(message) > hold.generation  # Context.requeue()
        if isinstance(exception, NoResultError) and not requeued:
            return  # the task chose not to store a result: it ran, finish it
        await self._give_back(message)
        await self._overlap.leave(hold)

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        """Mark the key of a finished run done."""
        hold = self._holds.pop(message)
        if hold is None or not hold.leased:
            return  # a once claim: nothing to finish
        try:
            finished = await within(
                self.deadline,
                lambda: self._leases.finish(hold.key, hold.token, retention_ms=hold.retention_ms),
            )
        except REDIS_ERRORS as exc:
            self._redis_error("finish", hold.key, exc)
            finished = True  # unknown: the lease lapses; not reported as lost
        await self._overlap.leave(hold)
        if not finished and not hold.lost:
            self._lease_lost(hold)

    # ---------------------------------------------------------------- faults

    def _lease_lost(self, hold: Hold) -> None:
        hold.lost = True
        self._count("leases_lost")
        logger.warning(
            "Lost the lease on %s: this worker stalled past lease_ttl and another "
            "delivery took the key over",
            hold.key,
            extra=decision(key=hold.key),
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
            extra=decision(key=key),
        )
