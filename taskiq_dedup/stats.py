"""Counters of what a ``DedupMiddleware`` decided, as an immutable snapshot."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

Counter = Literal[
    "executed",
    "executed_unguarded",
    "dropped_running",
    "dropped_done",
    "dropped_other_kick",
    "lease_takeovers",
    "leases_lost",
    "idempotent_replays",
    "redis_errors",
    "skipped_overlap",
    "overlap_waits",
]


@dataclass(frozen=True)
class DedupStats:
    """What one middleware instance has seen since it was made.

    ``executed``: claims won, so the task ran under a lease (includes takeovers).
    ``executed_unguarded``: ran without a lease because Redis failed and
    ``on_redis_error="execute"``.
    ``dropped_running`` / ``dropped_done``: duplicates not executed because the
    key was held under a live lease / already done.
    ``dropped_other_kick``: an idempotent kick's message not executed because
    another kick of the same key was confirmed first and answers it.
    ``lease_takeovers``: claims that found a ``running`` key whose lease had
    expired - its holder died or stalled past the lease; counted from the
    lease deadline kept in the key, not guessed from a missing key.
    ``leases_lost``: a heartbeat or finish found another owner: this worker
    stalled past its lease and someone took the key over.
    ``idempotent_replays``: kicks answered with an earlier task's handle.
    ``redis_errors``: Redis calls that failed (each also logged at ERROR).
    ``skipped_overlap``: firings not executed because their schedule's previous
    run still held its lease (``skip``, or a second waiter under ``buffer_one``).
    ``overlap_waits``: firings that waited for the previous run (``buffer_one``).
    """

    executed: int = 0
    executed_unguarded: int = 0
    dropped_running: int = 0
    dropped_done: int = 0
    dropped_other_kick: int = 0
    lease_takeovers: int = 0
    leases_lost: int = 0
    idempotent_replays: int = 0
    redis_errors: int = 0
    skipped_overlap: int = 0
    overlap_waits: int = 0

    def bump(self, counter: Counter) -> DedupStats:
        """Return a copy with ``counter`` one higher."""
        return replace(self, **{counter: getattr(self, counter) + 1})

    def as_dict(self) -> dict[str, int]:
        """Return the counters by name, e.g. for a metrics exporter."""
        return {field.name: getattr(self, field.name) for field in fields(self)}
