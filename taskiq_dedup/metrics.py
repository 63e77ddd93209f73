"""Prometheus metrics: the counters of every source, middleware and executor of a process.

Optional: with ``prometheus_client`` installed (``pip install taskiq-dedup[metrics]``),
each ``CompositeScheduleSource``, ``DedupMiddleware`` and ``DedupExecutor`` made with
``metrics=True`` (the default) is tracked by one collector per registry, which reads
their ``.stats`` snapshots at scrape time: nothing is counted twice and the hot path
pays nothing. Each counter ``c`` of a role's stats is exported as
``taskiq_dedup_<role>_<c>_total``, summed over that role's live instances in the
process; the scheduler also exports the merged schedules and the copies of each
(docs/METRICS.md lists every series).
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Literal, Protocol, Union

from taskiq_dedup.errors import ConfigurationError
from taskiq_dedup.histograms import Histogram

try:
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    HAVE_PROMETHEUS = True
    """Whether the optional ``prometheus_client`` is importable."""
except ImportError:  # pragma: no cover -- the metrics extra is not installed
    HAVE_PROMETHEUS = False

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from taskiq_dedup.merge import MergedSchedule

Role = Literal["scheduler", "worker", "apscheduler"]
ROLES: tuple[Role, ...] = ("scheduler", "worker", "apscheduler")
NAMESPACE = "taskiq_dedup"

MetricsOption = Union[bool, "CollectorRegistry"]
"""``True``: the default registry when ``prometheus_client`` is importable;
``False``: none; a ``CollectorRegistry``: that one."""


class Tracked(Protocol):
    """What the collector reads: a ``stats`` snapshot, a dataclass of int counters."""

    @property
    def stats(self) -> object:
        """The component's counters."""


class _Collector:
    """One per registry: reads the stats of the components tracked in it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tracked: dict[Role, weakref.WeakSet[Tracked]] = {r: weakref.WeakSet() for r in ROLES}

    def track(self, role: Role, component: Tracked) -> None:
        with self._lock:
            self._tracked[role].add(component)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            live = {role: list(members) for role, members in self._tracked.items()}
        for role, members in live.items():
            for name, total in _sums(m.stats for m in members).items():
                yield CounterMetricFamily(
                    f"{NAMESPACE}_{role}_{name}",
                    f"taskiq-dedup {role}: {name.replace('_', ' ')} (docs/METRICS.md)",
                    value=total,
                )
        for role in ("scheduler", "apscheduler"):
            yield from _histograms(role, live[role])
        copies = GaugeMetricFamily(
            f"{NAMESPACE}_schedule_copies",
            "Copies of each merged schedule across the composite source's children",
            labels=["schedule_id", "task_name"],
        )
        merged = 0
        most: dict[tuple[str, str], int] = {}  # one series per schedule, however many sources
        for source in live["scheduler"]:
            for public_id, schedule in _schedules(source).items():
                merged += 1
                labels = (public_id, schedule.task.task_name)
                most[labels] = max(most.get(labels, 0), len(schedule.origins))
        for (public_id, task_name), count in most.items():
            copies.add_metric([public_id, task_name], count)
        yield GaugeMetricFamily(
            f"{NAMESPACE}_schedules",
            "Merged schedules at the composite source's last fetch",
            value=merged,
        )
        yield copies


def _schedules(source: object) -> Mapping[str, MergedSchedule]:
    schedules = getattr(source, "schedules", None)
    return schedules if isinstance(schedules, Mapping) else {}


HISTOGRAM_HELP = {
    "claim_seconds": "Seconds each firing's claim took, waits on another sender included",
    "lateness_seconds": "Seconds from each confirmed firing's slot to its confirm",
}


def _histograms(role: Role, members: list[Tracked]) -> Iterator[Metric]:
    """Yield the firing coordinators' histograms of ``members``, merged by name."""
    merged: dict[str, Histogram] = {}
    for member in members:
        firings = getattr(member, "firings", None)
        for name, histogram in getattr(firings, "histograms", {}).items():
            merged[name] = merged[name].merged(histogram) if name in merged else histogram
    for name, histogram in merged.items():
        yield HistogramMetricFamily(
            f"{NAMESPACE}_{role}_{name}",
            f"taskiq-dedup {role}: {HISTOGRAM_HELP.get(name, name)} (docs/METRICS.md)",
            buckets=histogram.cumulative(),
            sum_value=histogram.total,
        )


def _sums(snapshots: Iterable[object]) -> dict[str, int]:
    """Sum the int fields of dataclass snapshots, by field name."""
    totals: dict[str, int] = {}
    for snapshot in snapshots:
        if not dataclasses.is_dataclass(snapshot):
            continue
        for field in dataclasses.fields(snapshot):
            value = getattr(snapshot, field.name)
            if isinstance(value, int) and not isinstance(value, bool):
                totals[field.name] = totals.get(field.name, 0) + value
    return totals


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, _Collector] = weakref.WeakKeyDictionary()
_collectors_lock = threading.Lock()


def track(role: Role, component: Tracked, metrics: MetricsOption) -> bool:
    """Export ``component``'s counters through ``metrics``; return whether they are.

    ``metrics=True`` without ``prometheus_client`` installed exports nothing, quietly:
    the extra is optional. A registry passed explicitly must be a
    ``CollectorRegistry``.
    """
    if metrics is False:
        return False
    if not HAVE_PROMETHEUS:
        if metrics is True:
            return False
        raise ConfigurationError(
            detail="metrics= was given a registry but prometheus_client is not installed",
        )
    registry = REGISTRY if metrics is True else metrics
    if not isinstance(registry, CollectorRegistry):
        raise ConfigurationError(
            detail=f"metrics must be True, False or a CollectorRegistry, got {metrics!r}",
        )
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _collectors[registry] = _Collector()
            registry.register(collector)
    collector.track(role, component)
    return True


def serve(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 -- a scrape target
    """Serve the default registry on ``addr:port`` from a daemon thread.

    For processes with no metrics server of their own, such as ``taskiq scheduler``
    (taskiq's worker serves the default registry through its
    ``PrometheusMiddleware``). Raises ``ConfigurationError`` without
    ``prometheus_client``.
    """
    if not HAVE_PROMETHEUS:
        raise ConfigurationError(
            detail="metrics_port needs prometheus_client: pip install 'taskiq-dedup[metrics]'",
        )
    start_http_server(port, addr=addr)
