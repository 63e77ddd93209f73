"""One running instance of a job across processes: a lease with a heartbeat.

For schedulers that run jobs in their own process (``taskiq_dedup.apscheduler``
with ``max_instances=1``): before a run starts, its process takes the job's
lease key with the worker-side lease scripts of :mod:`taskiq_dedup.leases`
(free -> ``running`` under a lease; released when the run ends). Another process
that finds the lease live skips its run; one that finds it lapsed (the holder
crashed or hung past the lease) takes it over.

One loop per ``InstanceLeases`` renews every held lease in one pipelined round
per ``lease / HEARTBEATS_PER_LEASE`` seconds, and releases a lease whose run has
ended even if nobody said so (its ``ended`` check is true): a lost end event
costs one period, never a job stuck for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskiq_dedup.deadlines import ATTEMPT_TIMEOUT, REDIS_ERRORS, within
from taskiq_dedup.holding import HEARTBEATS_PER_LEASE
from taskiq_dedup.log_fields import decision

if TYPE_CHECKING:
    from collections.abc import Callable

    from taskiq_dedup.leases import Leases

logger = logging.getLogger("taskiq_dedup.instances")

INSTANCE_LEASE = 30.0
"""Seconds a running job's lease lives without a heartbeat: a crashed process's
job is taken over by the first run due after this. Renewed three times per
lease on a loop the job itself does not block, so only a process stalled for
about 20 s loses it."""

INSTANCE_RETENTION_MS = 120_000
"""How long the lease key outlives its last claim or renewal (the key's own
expiry, which only collects keys of jobs that stopped): four leases, so a lapsed
lease is still seen as lapsed (a counted takeover), not as a missing key."""


@dataclass(eq=False)
class Instance:
    """A lease this process holds for one running run of a job."""

    key: str
    token: str
    ended: Callable[[], bool]
    """True once the run has ended (checked at each heartbeat)."""
    takeover: bool = False
    """The lease was taken over from a holder whose lease had lapsed."""
    renewed_at: float = field(default_factory=time.monotonic)


class InstanceLeases:
    """Takes, renews and releases job leases for one process."""

    def __init__(
        self, leases: Leases, worker: str, *, lease: float = INSTANCE_LEASE, deadline: float
    ) -> None:
        self._leases = leases
        self._worker = worker
        self._lease = lease
        self._deadline = deadline
        self._held: set[Instance] = set()
        self._loop: asyncio.Task[None] | None = None

    @property
    def period(self) -> float:
        """Seconds between renewal rounds."""
        return self._lease / HEARTBEATS_PER_LEASE

    async def take(
        self, key: str, token: str, run: str, ended: Callable[[], bool]
    ) -> Instance | None:
        """Hold ``key`` for run ``run`` under ``token``; ``None`` if another run holds it.

        :raises RedisError: Redis failed for the whole deadline.
        """
        claim = await within(
            self._deadline,
            lambda: self._leases.claim(
                key,
                token=token,
                task_id=run,
                generation=0,
                worker=self._worker,
                lease_ms=round(self._lease * 1000),
                retention_ms=INSTANCE_RETENTION_MS,
            ),
        )
        if not claim.won:
            logger.info(
                "Job lease %s is held by %s (run %s); not starting run %s",
                key,
                claim.holder_worker,
                claim.holder_task_id,
                run,
                extra=decision(key=key, holder=claim.holder_task_id),
            )
            return None
        instance = Instance(key, token, ended, takeover=claim.verdict == "takeover")
        if instance.takeover:
            logger.warning(
                "Took over job lease %s from %s (run %s), whose lease lapsed",
                key,
                claim.holder_worker,
                claim.holder_task_id,
                extra=decision(key=key, holder=claim.holder_task_id),
            )
        self._held.add(instance)
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run(), name="taskiq-dedup-job-leases")
        return instance

    async def end(self, instance: Instance) -> None:
        """Release ``instance``'s lease (its run ended or never started)."""
        if instance not in self._held:
            return
        self._held.discard(instance)
        try:
            await within(self._deadline, lambda: self._leases.release(instance.key, instance.token))
        except REDIS_ERRORS:
            logger.warning("Releasing job lease %s failed; it lapses on its own", instance.key)

    async def close(self) -> None:
        """Release every lease and stop the loop."""
        for instance in list(self._held):
            await self.end(instance)
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None

    async def _run(self) -> None:
        while self._held:
            await asyncio.sleep(self.period)
            await self.renew()

    async def renew(self) -> None:
        """One round: release ended runs' leases, extend the others'."""
        for instance in [i for i in self._held if i.ended()]:
            await self.end(instance)
        held = list(self._held)
        if not held:
            return
        started = time.monotonic()
        left = min(i.renewed_at for i in held) + self._lease - started
        try:
            still = await within(
                max(left, ATTEMPT_TIMEOUT),
                lambda: self._leases.extend_many(
                    [(i.key, i.token, INSTANCE_RETENTION_MS) for i in held],
                    lease_ms=round(self._lease * 1000),
                ),
            )
        except REDIS_ERRORS as exc:
            logger.error("Renewing %d job leases failed: %s", len(held), exc)  # noqa: TRY400
            return
        for instance, kept in zip(held, still, strict=True):
            if kept:
                instance.renewed_at = started
            elif instance in self._held:
                self._held.discard(instance)
                logger.warning(
                    "Job lease %s was taken over while its run went on: this process "
                    "stalled past the %.0fs lease; two runs may overlap",
                    instance.key,
                    self._lease,
                    extra=decision(key=instance.key),
                )
