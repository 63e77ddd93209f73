"""The replaceable notion of "now" used for slots and leases."""

from collections.abc import Callable
from datetime import datetime, timezone

Clock = Callable[[], datetime]
"""A callable returning the current time as an aware ``datetime``."""


def utc_now() -> datetime:
    """Return the current time in UTC (the default ``Clock``)."""
    return datetime.now(tz=timezone.utc)
