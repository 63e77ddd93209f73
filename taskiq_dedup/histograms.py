"""Fixed-bucket histograms the core fills and the metrics collector exports.

Counting here rather than in ``prometheus_client`` keeps the claim core free of
the optional dependency: an observation is a bisect and two additions.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

CLAIM_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
"""Upper bounds of a claim's duration: a round trip (sub-millisecond on a LAN) up to
waits on another scheduler's pending claim and retries through Redis errors."""

LATENESS_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
"""Upper bounds of a firing's lateness (confirm time minus its slot): a tick's own
delay up to the two-minute late window in which a late slot may still be sent."""


@dataclass
class Histogram:
    """Counts of observations per bucket (non-cumulative), their sum and count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        """Start every bucket at zero."""
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is at least ``value``."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def merged(self, other: Histogram) -> Histogram:
        """Return the sum of this histogram and ``other`` (same bounds)."""
        if other.bounds != self.bounds:
            msg = "histograms with different bounds cannot be merged"
            raise ValueError(msg)
        result = Histogram(self.bounds)
        result.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        result.total = self.total + other.total
        result.count = self.count + other.count
        return result

    def cumulative(self) -> list[tuple[str, int]]:
        """Return ``(le, cumulative count)`` pairs, ending with ``+Inf``."""
        pairs: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs
