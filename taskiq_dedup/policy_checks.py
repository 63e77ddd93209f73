"""Start-up check of the policy labels on a broker's decorator schedules.

A bad ``dedup_overlap``, ``dedup_catch_up`` or ``dedup_catch_up_all`` in a task
decorator is a programming error: ``DedupMiddleware.startup`` raises
``ConfigurationError`` naming the task, the label and the allowed values, in the
worker and in the scheduler alike. Schedules added at run time (a Redis source)
are checked where they are used: the worker logs ERROR and applies its default
overlap policy; the composite source logs ERROR and catches nothing up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskiq_dedup.catch_up import parse_catch_up
from taskiq_dedup.labels import OVERLAP_LABEL
from taskiq_dedup.overlap import parse_overlap

if TYPE_CHECKING:
    from taskiq.abc.broker import AsyncBroker


def check_schedule_labels(broker: AsyncBroker) -> None:
    """Raise ``ConfigurationError`` for the first decorator schedule with a bad policy label."""
    for name, task in broker.get_all_tasks().items():
        shared = {key: value for key, value in task.labels.items() if key != "schedule"}
        entries = task.labels.get("schedule") or []
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            if not isinstance(entry, dict):
                continue
            labels = {**(entry.get("labels") or {}), **shared}
            where = f"task {name!r}, schedule #{index + 1}"
            if OVERLAP_LABEL in labels:
                parse_overlap(labels[OVERLAP_LABEL], where=where)
            parse_catch_up(labels, where=where)
