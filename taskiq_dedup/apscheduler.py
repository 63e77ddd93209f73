"""``DedupExecutor``: each run of an APScheduler 3 job runs once across schedulers.

Every process (each ``uvicorn --workers 4`` worker, say) runs its own scheduler
with the same jobs. This executor stands in front of the one that runs jobs
(default ``AsyncIOExecutor``) and decides per run time, with the claim protocol
of :mod:`taskiq_dedup.claims`, which process hands the run to it: acquire ->
submit to the inner executor -> confirm; a submission that raises releases the
claim, so a waiting scheduler takes the run at once. For ``max_instances=1``
(APScheduler's default) the winner also holds the job's lease
(:mod:`taskiq_dedup.instances`) while the run runs, so runs never overlap across
processes.

A run time is its own slot (:class:`JobTrigger`). The Redis work runs on a
private event loop in one thread, so neither an ``AsyncIOScheduler``'s loop nor
a ``BackgroundScheduler``'s thread waits on Redis. See README.md, "APScheduler".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import re
import threading
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from pydantic_core import PydanticSerializationError

try:
    from apscheduler.events import (
        EVENT_JOB_ERROR,
        EVENT_JOB_EXECUTED,
        EVENT_JOB_MAX_INSTANCES,
        EVENT_JOB_MISSED,
        JobExecutionEvent,
        JobSubmissionEvent,
    )
    from apscheduler.executors.asyncio import AsyncIOExecutor
    from apscheduler.executors.base import BaseExecutor, MaxInstancesReachedError
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.date import DateTrigger
    from apscheduler.triggers.interval import IntervalTrigger
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "taskiq_dedup.apscheduler needs APScheduler 3: pip install 'taskiq-dedup[apscheduler]'",
    ) from exc

from taskiq_dedup.checks import check_server
from taskiq_dedup.claims import CLAIM_RETRY_WINDOW, PENDING_LEASE, FiringClaims, default_holder
from taskiq_dedup.clock import Clock, utc_now
from taskiq_dedup.connection import check_min_replicas, redacted, resolve_redis
from taskiq_dedup.deadlines import REDIS_ERRORS
from taskiq_dedup.errors import ConfigurationError
from taskiq_dedup.firing import Attempt, FiringCoordinator
from taskiq_dedup.identity import content_digest, pinned_id
from taskiq_dedup.instances import INSTANCE_LEASE, Instance, InstanceLeases
from taskiq_dedup.keys import DEFAULT_PREFIX, KeySpace
from taskiq_dedup.leases import Leases
from taskiq_dedup.log_fields import decision
from taskiq_dedup.metrics import MetricsOption, track
from taskiq_dedup.topology import parse_redis_url
from taskiq_dedup.triggers import CLAIM_GRACE, LATE_WINDOW, MAX_CANDIDATES

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from apscheduler.job import Job

logger = logging.getLogger("taskiq_dedup.apscheduler")

OnRedisError = Literal["skip", "run"]

DATE_STATE_KEEP = timedelta(days=1)
"""How long a date job's state outlives its run time (at least): a worker that
restarts later adds the job again and offers the same past run time, which the
state must still answer. A day covers a restart loop or a late deploy."""

SHUTDOWN_TIMEOUT = 10.0
"""Seconds ``shutdown`` waits for in-flight decisions to release their claims and
the client to close: two claim retry windows, so a Redis outage cannot hang exit."""

_GENERATED_ID = re.compile(r"[0-9a-f]{32}")
"""APScheduler's own job ids (``uuid4().hex``): not a user's choice, so not a pin."""


class JobTrigger:
    """An APScheduler trigger as the claim protocol sees it: a run time is its own slot.

    - cron: the run time as is (every scheduler computes the same instants);
    - interval: the epoch-aligned bucket holding the run time, since each
      scheduler's ``start_date`` is its own start-up moment plus the interval;
    - date: the run date.

    :raises ConfigurationError: the trigger is of another kind, a cron has
        ``jitter`` (run times would differ per scheduler) or an interval is not a
        whole number of seconds.
    """

    def __init__(self, job: Job) -> None:
        trigger = job.trigger
        grace = job.misfire_grace_time
        self.grace = timedelta(seconds=grace) if grace is not None else LATE_WINDOW
        self.trigger = trigger
        self.bucket: int | None = None
        if isinstance(trigger, CronTrigger):
            if trigger.jitter:
                raise ConfigurationError(
                    detail=f"job {job.id!r} ({job.name}): a cron with jitter runs at a "
                    "different moment in each scheduler; drop jitter to deduplicate it",
                )
            fields_text = ", ".join(f"{f.name}={f}" for f in trigger.fields if not f.is_default)
            self.text = (
                f"cron:{fields_text}@{trigger.timezone}"
                f"|{_iso(trigger.start_date)}|{_iso(trigger.end_date)}"
            )
            self.keep = max(LATE_WINDOW, self.grace)
        elif isinstance(trigger, IntervalTrigger):
            length = trigger.interval_length
            if length != int(length) or length < 1:
                raise ConfigurationError(
                    detail=f"job {job.id!r} ({job.name}): interval must be a whole number "
                    f"of seconds >= 1 to be bucketed across schedulers, got {length}",
                )
            self.bucket = int(length)
            self.text = f"interval:{self.bucket}|{_iso(trigger.end_date)}"
            self.keep = max(LATE_WINDOW, self.grace)
        elif isinstance(trigger, DateTrigger):
            self.text = f"date:{_iso(trigger.run_date)}"
            self.keep = max(DATE_STATE_KEEP, self.grace)
        else:
            raise ConfigurationError(
                detail=f"job {job.id!r} ({job.name}): {type(trigger).__name__} is not "
                "supported; use a cron, interval or date trigger",
            )

    def canonical(self) -> str:
        """Text that is equal for equal triggers (an interval's start is left out)."""
        return self.text

    def slot_of(self, run_time: datetime) -> int:
        """Epoch seconds naming ``run_time``'s run in every scheduler."""
        second = math.floor(run_time.timestamp())
        if self.bucket is not None:
            return second // self.bucket * self.bucket
        return second

    def next_slot(self, slot: int) -> int | None:
        """Return the slot after ``slot``, or ``None`` if the trigger has no later run."""
        if self.bucket is not None:
            return slot + self.bucket
        if isinstance(self.trigger, DateTrigger):
            return None
        moment = datetime.fromtimestamp(slot, tz=timezone.utc)
        following = self.trigger.get_next_fire_time(moment, moment)
        return None if following is None else self.slot_of(following)

    def at(self, run_time: datetime) -> RunTimeTrigger:
        """Return the claim protocol's view of one run time: one candidate, its own slot."""
        return RunTimeTrigger(self, self.slot_of(run_time))


@dataclass(frozen=True)
class RunTimeTrigger:
    """One run time of a job (``taskiq_dedup.triggers.SlotTrigger``).

    APScheduler decides when a job runs; the claim only decides who runs it, so
    the run time is the one candidate.
    """

    job: JobTrigger
    run_slot: int

    def canonical(self) -> str:
        """Return the job trigger's canonical text."""
        return self.job.canonical()

    def slot(self, now: datetime) -> int:
        """Return the run time's slot, whatever ``now``."""
        return self.run_slot

    def candidates(self, now: datetime) -> list[int]:
        """Only the run time's own slot."""
        return [self.run_slot]

    def slots_between(self, after: int, before: int) -> list[int]:
        """Return the job's slots strictly between two slots (at most ``MAX_CANDIDATES``)."""
        found: list[int] = []
        slot = self.job.next_slot(after)
        while slot is not None and slot < before and len(found) < MAX_CANDIDATES:
            found.append(slot)
            slot = self.job.next_slot(slot)
        return found

    def state_expiry(self, slot: int) -> int:
        """Until the next run has been offered by the latest scheduler still allowed to."""
        following = self.job.next_slot(slot)
        last = slot if following is None else following
        return last + int((self.job.keep + CLAIM_GRACE).total_seconds())


def job_schedule_id(job: Job, trigger: JobTrigger) -> str:
    """Return the id a job's runs are claimed under: the same in every scheduler.

    A job id the user chose is the pin (``<id>@<func_ref>``, scoped as dedup pins
    are); an id APScheduler generated is not, so the id is the content: the
    callable's reference, the canonical trigger and the arguments.

    :raises ConfigurationError: the job has no reference or arguments without a
        JSON form, and no id of the user's.
    """
    scope = job.func_ref or job.name
    if not _GENERATED_ID.fullmatch(job.id):
        return pinned_id(scope, job.id)
    if job.func_ref is None:
        raise ConfigurationError(
            detail=f"job {job.name!r}: its function has no importable reference (a lambda "
            "or a nested function), so schedulers cannot agree on it; give it an id=",
        )
    try:
        return content_digest(
            {
                "apscheduler": job.func_ref,
                "trigger": trigger.canonical(),
                "args": list(job.args),
                "kwargs": dict(job.kwargs),
            },
        )
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            detail=f"job {job.name!r}: arguments have no JSON form ({exc}); give it an id=",
        ) from exc


@dataclass
class ExecutorStats:
    """Counters of one ``DedupExecutor`` since it was made (``.stats`` is a snapshot)."""

    claimed: int = 0
    """Run times this process won."""
    ran: int = 0
    """Won run times the inner executor accepted (confirmed)."""
    duplicates_skipped: int = 0
    """Run times another scheduler had run or was handing over: not run here."""
    takeovers: int = 0
    """Run times taken over from a scheduler that did not confirm within its lease."""
    submit_failures: int = 0
    """Won run times the inner executor refused; released for another scheduler."""
    max_instances_skipped: int = 0
    """Won run times skipped because a run of the job still runs (here, or in another
    worker for ``max_instances=1``)."""
    instance_takeovers: int = 0
    """Job leases taken over from a worker whose run's lease lapsed (it crashed)."""
    missed: int = 0
    """Slots nobody ran between the last run and this one, each logged at ERROR."""
    unconfirmed: int = 0
    """Slots whose scheduler died after claiming them, perhaps after handing them
    to the inner executor, passed by a later claim; each logged at WARNING."""
    waits_given_up: int = 0
    """Run times left to a scheduler whose hand-over outlasted the longest wait."""
    redis_errors: int = 0
    """Claims or confirms that failed on Redis errors after retrying."""
    run_without_claim: int = 0
    """Of the failed claims, run anyway (``on_redis_error="run"``)."""


class _LoopThread:
    """A private event loop in a daemon thread, for the executor's Redis work."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="taskiq-dedup-apscheduler", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, None]) -> concurrent.futures.Future[None]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(SHUTDOWN_TIMEOUT)
        if not self.thread.is_alive():
            self.loop.close()


class DedupExecutor(BaseExecutor):  # type: ignore[misc] # APScheduler 3 is untyped
    """Runs each run of a job once across every scheduler sharing the prefix.

    :param inner: the executor that runs jobs (default ``AsyncIOExecutor()``; a
        ``ThreadPoolExecutor`` for a ``BackgroundScheduler``).
    :param redis_url: URL of the Redis holding the claims.
    :param prefix: every key lives under it; one per environment.
    :param on_redis_error: when Redis stays unreachable for ``claim_retry_window``
        seconds: ``"skip"`` the run (default: never a duplicate) or ``"run"`` it
        without a claim (never a miss). Either way one ERROR line.
    :param holder: names this scheduler in claims (default ``host:pid``).
    :param claim_retry_window: seconds a claim or confirm is retried through Redis errors.
    :param pending_lease: seconds a won run may take to reach the inner executor
        before another scheduler may take it over.
    :param instance_lease: seconds a running job's lease (``max_instances=1``)
        lives without a heartbeat: how soon a crashed worker's job runs elsewhere.
    :param clock: returns "now"; replace it in tests.
    :param metrics: export the counters to Prometheus (docs/METRICS.md): ``True``
        (default) to the default registry when ``prometheus_client`` is installed,
        ``False`` not at all, or a ``CollectorRegistry``.
    :param min_replicas: after each claim, confirm and release, wait for this
        many replicas to acknowledge it (``replication``); fewer in time is
        handled as Redis being unavailable (``on_redis_error``). Default 0: off.
    :param connection_kwargs: passed to ``Redis.from_url``.
    """

    def __init__(
        self,
        inner: BaseExecutor | None = None,
        *,
        redis_url: str,
        prefix: str = DEFAULT_PREFIX,
        on_redis_error: OnRedisError = "skip",
        holder: str | None = None,
        claim_retry_window: float = CLAIM_RETRY_WINDOW,
        pending_lease: float = PENDING_LEASE,
        instance_lease: float = INSTANCE_LEASE,
        clock: Clock = utc_now,
        metrics: MetricsOption = True,
        min_replicas: int = 0,
        **connection_kwargs: Any,  # noqa: ANN401 -- forwarded to redis-py
    ) -> None:
        super().__init__()
        if inner is not None and not isinstance(inner, BaseExecutor):
            raise ConfigurationError(detail=f"inner must be an APScheduler executor, got {inner!r}")
        if isinstance(inner, DedupExecutor):
            raise ConfigurationError(detail="inner must not be another DedupExecutor")
        parse_redis_url(redis_url)  # a malformed URL fails here, naming it
        if on_redis_error not in ("skip", "run"):
            raise ConfigurationError(
                detail=f"on_redis_error must be 'skip' or 'run', got {on_redis_error!r}",
            )
        if claim_retry_window < 0:
            raise ConfigurationError(
                detail=f"claim_retry_window must be >= 0, got {claim_retry_window!r}",
            )
        if not pending_lease > 0:
            raise ConfigurationError(
                detail=f"pending_lease must be positive, got {pending_lease!r}",
            )
        if not instance_lease > 0:
            raise ConfigurationError(
                detail=f"instance_lease must be positive, got {instance_lease!r}",
            )
        self.inner: BaseExecutor = inner if inner is not None else AsyncIOExecutor()
        self.keys = KeySpace(prefix)
        self.redis_url = redis_url
        self.on_redis_error = on_redis_error
        self.clock = clock
        self._holder = holder or default_holder()
        self._retry_window = claim_retry_window
        self._pending_lease = pending_lease
        self._connection_kwargs = connection_kwargs
        self._instance_lease = instance_lease
        self._min_replicas = check_min_replicas(min_replicas)
        self._running: dict[tuple[str, float], Instance] = {}
        """Job leases held for runs here, by (job id, run time): released when they end."""
        self._running_lock = threading.Lock()
        self._stats = ExecutorStats()
        self.firings = FiringCoordinator(
            self._new_claims(), self.keys, one_off_grace=DATE_STATE_KEEP
        )
        self._thread: _LoopThread | None = None
        self._decisions: set[concurrent.futures.Future[None]] = set()
        track("apscheduler", self, metrics)

    def _new_claims(self) -> FiringClaims:
        """Make a client (closed at shutdown) and the claim scripts on it."""
        self._redis, _ = resolve_redis(self.redis_url, None, self._connection_kwargs)
        self._instances = InstanceLeases(
            Leases(self._redis),
            self._holder,
            lease=self._instance_lease,
            deadline=max(self._retry_window, 0.5),
        )
        return FiringClaims(
            self._redis,
            self._holder,
            retry_window=self._retry_window,
            pending_lease=self._pending_lease,
            min_replicas=self._min_replicas,
        )

    @property
    def stats(self) -> ExecutorStats:
        """A snapshot of the counters."""
        firing = self.firings.stats
        snapshot = ExecutorStats(
            **{f.name: getattr(self._stats, f.name) for f in fields(self._stats)}
        )
        snapshot.claimed = firing.claimed
        snapshot.ran = firing.confirmed
        snapshot.duplicates_skipped = firing.duplicates_cancelled
        snapshot.takeovers = firing.takeovers
        snapshot.submit_failures = firing.send_failures
        snapshot.missed = firing.missed
        snapshot.unconfirmed = firing.unconfirmed
        snapshot.waits_given_up = firing.waits_given_up
        return snapshot

    def start(self, scheduler: Any, alias: str) -> None:  # noqa: ANN401 -- any APScheduler scheduler
        """Start the inner executor and the loop doing the Redis work; check the server."""
        super().start(scheduler, alias)
        self.inner.start(scheduler, alias)
        scheduler.add_listener(
            self._run_ended, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED
        )
        if self._thread is None:
            self._thread = _LoopThread()
            self._track(self._thread.run(self._check()))

    async def _check(self) -> None:
        problems = await check_server(self._redis, logger)
        if problems:
            logger.warning("Claims Redis is %s", redacted(self.redis_url))

    def shutdown(self, wait: bool = True) -> None:
        """Drop decisions in flight (releasing claims), close Redis, stop the inner executor."""
        thread, self._thread = self._thread, None
        if self._scheduler is not None:
            self._scheduler.remove_listener(self._run_ended)
        if thread is not None:
            for pending in list(self._decisions):
                pending.cancel()
            try:
                thread.run(self._close()).result(SHUTDOWN_TIMEOUT)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                logger.warning("Claims still open at shutdown; their leases lapse on their own")
            thread.stop()
            self.firings.claims = self._new_claims()  # a restarted scheduler gets a fresh client
        self.inner.shutdown(wait)

    async def _close(self) -> None:
        with self._running_lock:
            self._running.clear()
        await self._instances.close()  # releases every job lease, stops the heartbeat
        await self.firings.close()  # stops renewing: the cancelled decisions release below
        current = asyncio.current_task()
        others = [task for task in asyncio.all_tasks() if task is not current]
        await asyncio.gather(*others, return_exceptions=True)  # the cancelled decisions
        await self._redis.aclose()

    def submit_job(self, job: Job, run_times: list[datetime]) -> None:
        """Decide each run time and hand the won ones to the inner executor.

        Instances are not counted here (``BaseExecutor.submit_job`` would count a
        submission this worker may not run): the inner executor counts the runs it
        holds, and the job lease counts ``max_instances=1`` across workers.
        """
        if self._thread is None:
            raise ConfigurationError(detail="DedupExecutor has not been started")
        self._do_submit_job(job, run_times)

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        assert self._thread is not None  # noqa: S101 -- checked by submit_job
        trigger = JobTrigger(job)
        schedule_id = job_schedule_id(job, trigger)
        self._track(self._thread.run(self._decide(job, trigger, schedule_id, list(run_times))))

    def _track(self, work: concurrent.futures.Future[None]) -> None:
        """Keep ``work`` (on the private loop) until it ends, to cancel it at shutdown."""
        self._decisions.add(work)
        work.add_done_callback(self._decisions.discard)

    async def _decide(
        self, job: Job, trigger: JobTrigger, schedule_id: str, run_times: list[datetime]
    ) -> None:
        # one job-lease token for the run times of one submission: APScheduler runs them
        # as one instance, so a later one may take the lease its predecessor holds
        lease_token = self.firings.claims.new_attempt()
        try:
            for index, run_time in enumerate(run_times):
                await self._decide_one(
                    job, trigger, schedule_id, run_time, lease_token, stagger=index == 0
                )
        except Exception:
            logger.exception("Deciding job %r (%s) failed", job.id, schedule_id)

    async def _decide_one(
        self,
        job: Job,
        trigger: JobTrigger,
        schedule_id: str,
        run_time: datetime,
        lease_token: str,
        *,
        stagger: bool,
    ) -> None:
        try:
            attempt = await self.firings.acquire(
                schedule_id, trigger.at(run_time), self.clock(), stagger=stagger
            )
        except REDIS_ERRORS as exc:
            self._stats.redis_errors += 1
            running = self.on_redis_error == "run"
            logger.error(  # noqa: TRY400 -- one line per failure, by design
                "Run %s of job %r (%s): Redis failed for %.1fs (%s: %s); %s",
                run_time.isoformat(),
                job.id,
                schedule_id,
                self._retry_window,
                type(exc).__name__,
                exc,
                "running it without a claim" if running else "skipped",
                extra=decision(schedule_id=schedule_id, slot=int(run_time.timestamp())),
            )
            if running:
                self._stats.run_without_claim += 1
                try:
                    await asyncio.wrap_future(self._hand_over(job, [run_time]))
                except Exception:
                    logger.exception("Submitting job %r failed", job.id)
            return
        if attempt is None:
            return
        submitted = threading.Event()
        go, instance = await self._take_job_lease(
            job, schedule_id, attempt, run_time, lease_token, submitted
        )
        if not go:
            return
        try:
            await asyncio.wrap_future(self._hand_over(job, [run_time]))
        except MaxInstancesReachedError:
            self._report_max_instances(job, run_time)
        except BaseException as exc:
            if instance is not None:
                self._forget(job.id, run_time)
                await self._instances.end(instance)
            await self._release(attempt)
            if not isinstance(exc, Exception):
                raise  # cancelled at shutdown
            logger.exception("Submitting job %r failed; releasing its run", job.id)
            return
        submitted.set()
        await self._confirm(attempt, job, schedule_id, run_time)

    async def _take_job_lease(  # noqa: PLR0917 -- private, called once
        self,
        job: Job,
        schedule_id: str,
        attempt: Attempt,
        run_time: datetime,
        token: str,
        submitted: threading.Event,
    ) -> tuple[bool, Instance | None]:
        """For ``max_instances=1``: hold the job's lease across workers, or skip the run.

        Returns whether to run, and the lease held (released when the run ends).
        """
        if job.max_instances != 1:
            return True, None
        try:
            instance = await self._instances.take(
                self.keys.job_lease(schedule_id),
                token,
                str(attempt.slot),
                lambda: submitted.is_set() and not self.inner._instances.get(job.id),
            )
        except REDIS_ERRORS as exc:
            self._stats.redis_errors += 1
            running = self.on_redis_error == "run"
            logger.error(  # noqa: TRY400 -- one line per failure, by design
                "Run %s of job %r (%s): taking its job lease failed (%s: %s); %s",
                run_time.isoformat(),
                job.id,
                schedule_id,
                type(exc).__name__,
                exc,
                "running it without a lease" if running else "skipped",
                extra=decision(schedule_id=schedule_id, slot=int(run_time.timestamp())),
            )
            if not running:
                await self._release(attempt)
            return running, None
        if instance is None:  # a run of this job still runs (here or in another worker)
            self._report_max_instances(job, run_time)
            await self._confirm(attempt, job, schedule_id, run_time)
            return False, None
        self._stats.instance_takeovers += instance.takeover
        with self._running_lock:
            self._running[job.id, run_time.timestamp()] = instance
        return True, instance

    async def _confirm(
        self, attempt: Attempt, job: Job, schedule_id: str, run_time: datetime
    ) -> None:
        try:
            await self.firings.confirm(attempt)
        except REDIS_ERRORS as exc:
            self._stats.redis_errors += 1
            logger.error(  # noqa: TRY400 -- one line per failure, by design
                "Run %s of job %r (%s) is running but its confirm failed (%s: %s); another "
                "scheduler may run it again once the %.0fs lease lapses",
                run_time.isoformat(),
                job.id,
                schedule_id,
                type(exc).__name__,
                exc,
                self._pending_lease,
                extra=decision(schedule_id=schedule_id, slot=int(run_time.timestamp())),
            )

    def _forget(self, job_id: str, run_time: datetime) -> Instance | None:
        with self._running_lock:
            return self._running.pop((job_id, run_time.timestamp()), None)

    def _run_ended(self, event: JobExecutionEvent) -> None:
        """Release the job lease of a run that ended (a scheduler listener).

        A run whose event never comes (APScheduler's ``run_job`` itself failed) is
        released by the heartbeat once the inner executor counts it out.
        """
        instance = self._forget(event.job_id, event.scheduled_run_time)
        thread = self._thread
        if instance is not None and thread is not None:
            thread.run(self._instances.end(instance))

    def _report_max_instances(self, job: Job, run_time: datetime) -> None:
        """As APScheduler does: a WARNING and an ``EVENT_JOB_MAX_INSTANCES``.

        The run is confirmed, not released: the earlier run this process holds is
        still running, which is what ``max_instances`` skips a run for.
        """
        self._stats.max_instances_skipped += 1
        logger.warning(
            "Run %s of job %r skipped: maximum number of running instances reached (%d)",
            run_time.isoformat(),
            job.id,
            job.max_instances,
        )
        self._scheduler._dispatch_event(
            JobSubmissionEvent(EVENT_JOB_MAX_INSTANCES, job.id, job._jobstore_alias, [run_time]),
        )

    async def _release(self, attempt: Attempt) -> None:
        try:
            await self.firings.release(attempt)
        except REDIS_ERRORS:
            logger.debug("Release failed; the pending lease lapses on its own")

    def _hand_over(self, job: Job, run_times: list[datetime]) -> concurrent.futures.Future[None]:
        """Submit to the inner executor where it expects it: on an asyncio scheduler's loop."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def submit() -> None:
            if not done.set_running_or_notify_cancel():
                return
            try:
                self.inner.submit_job(job, run_times)
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        loop = getattr(self._scheduler, "_eventloop", None)
        if isinstance(loop, asyncio.AbstractEventLoop):
            try:
                loop.call_soon_threadsafe(submit)
            except RuntimeError as exc:  # the scheduler's loop is closed
                done.set_exception(exc)
        else:
            submit()
        return done


def _iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(timezone.utc).isoformat()
