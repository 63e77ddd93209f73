"""Sending a firing through a composite source as taskiq's scheduler does."""

from __future__ import annotations

from taskiq import ScheduledTask, ScheduleSource
from taskiq.exceptions import ScheduledTaskCancelledError


async def fire(source: ScheduleSource, task: ScheduledTask) -> bool:
    """``pre_send``, then (the broker took it) ``post_send``; False if cancelled."""
    try:
        await source.pre_send(task)
    except ScheduledTaskCancelledError:
        return False
    await source.post_send(task)
    return True
