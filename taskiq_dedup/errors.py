"""Exceptions raised by taskiq-dedup, all under one base class."""

from taskiq.exceptions import TaskiqError


class TaskiqDedupError(TaskiqError):
    """Base class for every error this package raises."""

    __template__ = "{detail}"
    detail: str


class ConfigurationError(TaskiqDedupError):
    """An option given to a taskiq-dedup component is not usable."""


class InvalidScheduleError(TaskiqDedupError):
    """A schedule cannot be identified or fired: bad cron, timezone or arguments."""


class ScheduleInCodeError(TaskiqDedupError):
    """A schedule declared in a task decorator cannot be deleted at run time."""


class DedupUnavailableError(TaskiqDedupError):
    """Redis could not be reached to decide a deduplication (fail-closed)."""
