"""Exactly-once scheduled tasks for Taskiq."""

from taskiq_dedup.errors import (
    ConfigurationError,
    InvalidScheduleError,
    ScheduleInCodeError,
    TaskiqDedupError,
)
from taskiq_dedup.identity import schedule_id_for
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.merge import MergedSchedule, Origin
from taskiq_dedup.middleware import DedupMiddleware
from taskiq_dedup.receiver import DedupReceiver
from taskiq_dedup.source import CompositeScheduleSource, SourceStats

__version__ = "0.1.0"
"""The one place the version is set (the build reads it from here)."""

__all__ = [
    "CompositeScheduleSource",
    "ConfigurationError",
    "DedupMiddleware",
    "DedupReceiver",
    "InvalidScheduleError",
    "KeySpace",
    "MergedSchedule",
    "Origin",
    "ScheduleInCodeError",
    "SourceStats",
    "TaskiqDedupError",
    "__version__",
    "schedule_id_for",
]
