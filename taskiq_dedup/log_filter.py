"""One log line per lost claim: taskiq's own lines around a cancelled send, folded away.

taskiq's scheduler logs "Sending task … with schedule_id …" *before* a source's
``pre_send`` and "Scheduled task … has been cancelled." *after* it raises
``ScheduledTaskCancelledError``. For a scheduler that lost a claim that is three
lines (taskiq's, ours, taskiq's), the first one false. ``install()`` puts a filter
on those two taskiq loggers that holds the "Sending task" line of each send of a
composite source's schedule (taskiq runs each send as its own asyncio task), and

- releases it, unchanged and with its original time, when the send finishes
  (the firing was sent, or failed with taskiq's own error lines);
- drops it, and the "has been cancelled" line, when the send was cancelled: the
  ``CompositeScheduleSource`` has logged why in one INFO line.

Cancellations by other sources keep both taskiq lines. ``CompositeScheduleSource``
installs the filter at start-up; ``uninstall()`` removes it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Container

SENDING_LOGGER = "taskiq.cli.scheduler.run"
CANCELLED_LOGGER = "taskiq.scheduler.scheduler"
SENDING_MESSAGE = "Sending task %s with schedule_id %s."
CANCELLED_MESSAGE = "Scheduled task %s has been cancelled."
SEND_COROUTINES = frozenset({"send", "send_with_timeout"})
"""taskiq's coroutines that run one send as their own asyncio task."""

_RELEASED = "taskiq_dedup_released"


class _Held:
    """The "Sending task" line of one send task, until the send ends."""

    def __init__(self, record: logging.LogRecord, schedule_id: str) -> None:
        self.record = record
        self.schedule_id = schedule_id
        self.cancelled = False


class ClaimLogFilter(logging.Filter):
    """Holds taskiq's "Sending task" lines; folds a claim-cancelled send away."""

    def __init__(self) -> None:
        super().__init__()
        self._held: dict[asyncio.Task[object], _Held] = {}
        self._sources: weakref.WeakSet[object] = weakref.WeakSet()

    def watch(self, source: object) -> None:
        """Fold cancellations of the schedules ``source`` (a composite source) holds."""
        self._sources.add(source)

    def _composite_schedule(self, schedule_id: str) -> bool:
        for source in list(self._sources):
            schedules: Container[str] = getattr(source, "_schedules", {})
            if schedule_id in schedules:
                return True
        return False

    def filter(self, record: logging.LogRecord) -> bool:
        """Return whether ``record`` is emitted now."""
        if getattr(record, _RELEASED, False):
            return True
        if record.msg == SENDING_MESSAGE:
            return not self._hold(record)
        if record.msg == CANCELLED_MESSAGE:
            task = _current_task()
            held = self._held.get(task) if task is not None else None
            if held is not None:
                held.cancelled = True
                return False
        return True

    def _hold(self, record: logging.LogRecord) -> bool:
        task = _current_task()
        if task is None or task in self._held or not isinstance(record.args, tuple):
            return False
        if getattr(task.get_coro(), "__name__", None) not in SEND_COROUTINES:
            return False
        schedule_id = str(record.args[1])
        if not self._composite_schedule(schedule_id):
            return False
        self._held[task] = _Held(record, schedule_id)
        task.add_done_callback(self._release)
        return True

    def _release(self, task: asyncio.Task[object]) -> None:
        held = self._held.pop(task, None)
        if held is None or held.cancelled:
            return
        setattr(held.record, _RELEASED, True)
        logging.getLogger(held.record.name).handle(held.record)


def _current_task() -> asyncio.Task[object] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop
        return None


_installed: ClaimLogFilter | None = None


def install(source: object) -> ClaimLogFilter:
    """Put the filter on taskiq's two loggers (once) and watch ``source``'s schedules."""
    global _installed  # noqa: PLW0603 -- one filter per process, shared by every source
    if _installed is None:
        _installed = ClaimLogFilter()
        logging.getLogger(SENDING_LOGGER).addFilter(_installed)
        logging.getLogger(CANCELLED_LOGGER).addFilter(_installed)
    _installed.watch(source)
    return _installed


def uninstall() -> None:
    """Remove the filter: taskiq's lines are logged as taskiq writes them."""
    global _installed  # noqa: PLW0603
    if _installed is not None:
        logging.getLogger(SENDING_LOGGER).removeFilter(_installed)
        logging.getLogger(CANCELLED_LOGGER).removeFilter(_installed)
        _installed = None
