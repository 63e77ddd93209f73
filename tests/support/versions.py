"""What the installed neighbours can do, for tests that need a newer one."""

from __future__ import annotations

from importlib.metadata import version

import pytest


def _release(distribution: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version(distribution).split(".")[:3] if part.isdigit())


needs_interval_store = pytest.mark.skipif(
    _release("taskiq-redis") < (1, 2),
    reason="taskiq-redis before 1.2 (the release for redis-py 6) stores no interval schedules",
)
"""For tests that store interval schedules in ``ListRedisScheduleSource``."""
