"""A clock tests move by hand, so slot and TTL tests need not wait."""

from datetime import datetime, timedelta, timezone, tzinfo
from types import SimpleNamespace

import pytest
from taskiq_redis import list_schedule_source


class FakeClock:
    """Callable returning a settable "now"."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def follow_in_taskiq_redis(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    """Make taskiq-redis's ``ListRedisScheduleSource`` read ``clock`` as "now".

    It finds due one-offs from ``datetime.datetime.now``; without this, tests of
    one-offs at fake times would pass or fail by today's date.
    """

    class FollowingDatetime(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
            return clock().astimezone(tz)

    shim = SimpleNamespace(datetime=FollowingDatetime, timezone=timezone, timedelta=timedelta)
    monkeypatch.setattr(list_schedule_source, "datetime", shim)
