"""Idempotent kicks: binding a key to the first kick that reaches the queue.

``pre_send`` binds the key to the kick's task id as *pending*; ``post_send``
(which taskiq calls only after the broker accepted the message) confirms it as
*sent*. A later kick is answered with an echo of the first task only once that
task exists:

- the first kick is still pending: the later kick asks again until it is
  confirmed (echo) or its pending window lapses (the send failed; the later
  kick takes the key), for at most ``pending_ttl`` plus one operation deadline;
- the first task's run was lost (its lease lapsed) on a broker that cannot
  redeliver it (``ListQueueBroker``): the later kick takes the key and runs.

A confirmation that finds another task bound (this kick's pending window lapsed
and a worker or a later kick took the key) points the returned handle at that
task: the two messages are copies, and the other one answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from taskiq_dedup.deadlines import OPERATION_DEADLINE, within
from taskiq_dedup.errors import DedupUnavailableError

if TYPE_CHECKING:
    from taskiq.message import TaskiqMessage

    from taskiq_dedup.leases import Leases

logger = logging.getLogger(__name__)

PENDING_TTL = 15.0
"""Seconds a kick's binding stays pending before it counts as never sent. It
must cover the broker's send and the confirmation after it (each bounded: a
taskiq-redis send by its client's 5 s socket timeout, the confirmation by
``OPERATION_DEADLINE``), and it is how long a later kick of a failed send
waits before it runs instead."""

WAIT_POLL = 0.05
"""Seconds between a later kick's questions while the first one is pending;
doubled up to ``MAX_WAIT_POLL``."""

MAX_WAIT_POLL = 0.5
"""Longest pause between those questions."""


class Binder:
    """Binds and confirms idempotency keys with one client's scripts."""

    def __init__(
        self,
        leases: Leases,
        *,
        retention_ms: int,
        pending_ms: int,
        rerun_lost: bool,
        deadline: float = OPERATION_DEADLINE,
    ) -> None:
        self._leases = leases
        self._deadline = deadline
        self._retention_ms = retention_ms
        self._pending_ms = pending_ms
        self.rerun_lost = rerun_lost

    async def bind(self, key: str, message: TaskiqMessage) -> str:
        """Return the task that answers ``key``: ``message``'s own (send it) or an echo's.

        :raises DedupUnavailableError: another kick stayed pending past its window
            plus the deadline (its sender's clock or Redis misbehaves).
        :raises: a Redis error or timeout once the deadline is spent on one call.
        """
        give_up = time.monotonic() + self._pending_ms / 1000 + self._deadline
        poll = WAIT_POLL
        while True:
            binding = await within(
                self._deadline,
                lambda: self._leases.bind(
                    key,
                    message.task_id,
                    retention_ms=self._retention_ms,
                    pending_ms=self._pending_ms,
                    rerun_lost=self.rerun_lost,
                ),
            )
            if binding.verdict != "wait":
                return binding.task_id
            if time.monotonic() + poll > give_up:
                raise DedupUnavailableError(
                    detail=(
                        f"idempotency key {key} is still pending for task "
                        f"{binding.task_id}, which was neither confirmed nor lapsed"
                    ),
                )
            await asyncio.sleep(poll)
            poll = min(poll * 2, MAX_WAIT_POLL)

    async def confirm(self, key: str, message: TaskiqMessage) -> str:
        """Mark ``message``'s binding sent; return the task that answers ``key``."""
        return await within(
            self._deadline,
            lambda: self._leases.confirm(key, message.task_id, retention_ms=self._retention_ms),
        )
