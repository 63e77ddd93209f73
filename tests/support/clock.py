"""A clock tests move by hand, so slot and TTL tests need not wait."""

from datetime import datetime, timedelta, timezone


class FakeClock:
    """Callable returning a settable "now"."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now
