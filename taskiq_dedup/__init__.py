"""Exactly-once scheduled tasks for Taskiq."""

from taskiq_dedup.errors import (
    ConfigurationError,
    InvalidScheduleError,
    ScheduleInCodeError,
    ScheduleNotFoundError,
    TaskiqDedupError,
)
from taskiq_dedup.keys import KeySpace

__all__ = [
    "ConfigurationError",
    "InvalidScheduleError",
    "KeySpace",
    "ScheduleInCodeError",
    "ScheduleNotFoundError",
    "TaskiqDedupError",
]
