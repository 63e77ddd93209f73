"""A log of task executions in Redis: what ran, for which firing, where and when.

The tasks append one JSON entry per execution to a list under the environment's
prefix; ``GET /executions`` and the demo read it back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from taskiq_dedup import KeySpace

MAX_EXECUTIONS = 100_000
"""The list is trimmed to this many entries: a demo run of minutes makes a few
hundred, a forgotten dev server a bounded amount."""


def executions_key(keys: KeySpace) -> str:
    """Key of the execution list of one environment."""
    return keys.key("executions")


@dataclass(frozen=True)
class Execution:
    """One run of a task body."""

    task: str
    """The task's name."""
    schedule_id: str | None
    """The ``schedule_id`` label: the public id with taskiq-dedup (yours, else the
    content id), a copy's own id as shipped, ``None`` for a plain ``kiq``."""
    slot: int | None
    """The ``dedup_slot`` label (epoch seconds of the firing), ``None`` as shipped."""
    task_id: str
    pid: int
    at: float
    """Epoch seconds when the body ran."""

    def to_json(self) -> str:
        """Serialise for the list."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Execution:
        """Read an entry written by ``to_json``."""
        data: dict[str, Any] = json.loads(raw)
        return cls(**data)


async def record(redis: Redis, key: str, execution: Execution) -> None:
    """Append ``execution`` to the list at ``key``, keeping it bounded."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.rpush(key, execution.to_json())
        pipe.ltrim(key, -MAX_EXECUTIONS, -1)
        await pipe.execute()


async def recent(redis: Redis, key: str, limit: int) -> list[Execution]:
    """Return the latest ``limit`` executions, newest first."""
    raw = await redis.lrange(key, -limit, -1)
    return [Execution.from_json(item) for item in reversed(raw)]


async def every(redis: Redis, key: str) -> list[Execution]:
    """Return every recorded execution, oldest first."""
    raw = await redis.lrange(key, 0, -1)
    return [Execution.from_json(item) for item in raw]
