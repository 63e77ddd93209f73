"""Prometheus metrics (docs/METRICS.md): the counters as scraped, against a real Redis."""

from __future__ import annotations

import dataclasses
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from taskiq import InMemoryBroker
from taskiq.schedule_sources import LabelScheduleSource

from taskiq_dedup import CompositeScheduleSource, ConfigurationError, DedupMiddleware
from taskiq_dedup.histograms import Histogram
from taskiq_dedup.middleware import DedupStats
from taskiq_dedup.source import SourceStats
from tests.support.clock import FakeClock
from tests.support.firing import fire
from tests.support.processes import ProcessGroup, wait_until

APP = "tests.apps.sched_app"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def broker() -> InMemoryBroker:
    broker = InMemoryBroker()

    @broker.task(
        task_name="app:tick",
        schedule=[{"interval": 2}, {"cron": "* * * * *"}, {"cron": "*/1 * * * *"}],
    )
    async def tick() -> None:
        return None

    return broker


@pytest.fixture
async def schedulers(
    broker: InMemoryBroker, redis_url: str, prefix: str
) -> AsyncIterator[tuple[CollectorRegistry, list[CompositeScheduleSource]]]:
    """Two schedulers of one process exporting to one fresh registry."""
    registry = CollectorRegistry()
    clock = FakeClock()
    made = [
        CompositeScheduleSource(
            [LabelScheduleSource(broker)],
            redis_url=redis_url,
            prefix=prefix,
            clock=clock,
            holder=f"s{i}",
            metrics=registry,
        )
        for i in range(2)
    ]
    for source in made:
        await source.startup()
    yield registry, made
    for source in made:
        await source.shutdown()


async def test_scheduler_counters_and_copies_are_exported(
    schedulers: tuple[CollectorRegistry, list[CompositeScheduleSource]],
) -> None:
    registry, sources = schedulers
    for source in sources:
        interval = next(s for s in await source.get_schedules() if s.interval)
        await fire(source, interval)

    value = registry.get_sample_value
    assert value("taskiq_dedup_scheduler_claimed_total") == 1
    assert value("taskiq_dedup_scheduler_fired_total") == 1
    assert value("taskiq_dedup_scheduler_duplicates_cancelled_total") == 1
    assert value("taskiq_dedup_scheduler_claim_errors_total") == 0
    # Histograms: every acquire (the won claim and the cancelled one), every confirm.
    assert value("taskiq_dedup_scheduler_claim_seconds_count") == 2
    assert value("taskiq_dedup_scheduler_claim_seconds_bucket", {"le": "+Inf"}) == 2
    assert value("taskiq_dedup_scheduler_claim_seconds_sum") > 0
    assert value("taskiq_dedup_scheduler_lateness_seconds_count") == 1
    # Two schedulers each see two schedules: the interval, and the two equal crons merged.
    assert value("taskiq_dedup_schedules") == 4
    cron = next(s for s in sources[0].schedules.values() if s.task.cron)
    labels = {"schedule_id": cron.public_id, "task_name": "app:tick"}
    assert value("taskiq_dedup_schedule_copies", labels) == 2


def assert_every_field_is_a_documented_series(
    registry: CollectorRegistry, role: str, stats: type
) -> None:
    """docs/METRICS.md names each series after a stats field: none is left out."""
    families = list(registry.collect())
    names = {m.name for m in families}
    for field in dataclasses.fields(stats):
        assert f"taskiq_dedup_{role}_{field.name}" in names
    text = (PROJECT_ROOT / "docs" / "METRICS.md").read_text(encoding="utf-8")
    for family in families:
        shown = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{shown}`" in text, f"{shown} is not in docs/METRICS.md"


def test_every_counter_of_the_worker_and_the_scheduler_is_a_series() -> None:
    registry = CollectorRegistry()
    middleware = DedupMiddleware(redis_url="redis://127.0.0.1:1/0", metrics=registry)
    source = CompositeScheduleSource(
        [LabelScheduleSource(InMemoryBroker())],
        redis_url="redis://127.0.0.1:1/0",
        metrics=registry,
    )
    assert_every_field_is_a_documented_series(registry, "worker", DedupStats)
    assert_every_field_is_a_documented_series(registry, "scheduler", SourceStats)
    del middleware, source


def test_every_counter_of_the_apscheduler_executor_is_a_series() -> None:
    pytest.importorskip("apscheduler")
    from taskiq_dedup.apscheduler import DedupExecutor, ExecutorStats  # noqa: PLC0415

    registry = CollectorRegistry()
    executor = DedupExecutor(redis_url="redis://127.0.0.1:1/0", metrics=registry)
    assert_every_field_is_a_documented_series(registry, "apscheduler", ExecutorStats)
    del executor


def test_metrics_off_and_bad_values() -> None:
    registry = CollectorRegistry()
    DedupMiddleware(redis_url="redis://127.0.0.1:1/0", metrics=False)
    assert list(registry.collect()) == []
    with pytest.raises(ConfigurationError, match="metrics must be True, False or a"):
        DedupMiddleware(redis_url="redis://127.0.0.1:1/0", metrics="yes")  # type: ignore[arg-type]


def test_default_is_the_default_registry() -> None:
    middleware = DedupMiddleware(redis_url="redis://127.0.0.1:1/0")
    assert REGISTRY.get_sample_value("taskiq_dedup_worker_executed_total") is not None
    del middleware


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_taken_port_is_logged_and_the_scheduler_runs_on(
    broker: InMemoryBroker, redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 -- where serve() binds
        taken.listen()
        port = int(taken.getsockname()[1])
        source = CompositeScheduleSource(
            [LabelScheduleSource(broker)],
            redis_url=redis_url,
            prefix=prefix,
            metrics=False,
            metrics_port=port,
        )
        await source.startup()
        try:
            [error] = [r for r in caplog.records if r.levelname == "ERROR"]
            assert f"Metrics not served on port {port}" in error.getMessage()
            interval = next(s for s in await source.get_schedules() if s.interval)
            assert await fire(source, interval)
        finally:
            await source.shutdown()


@pytest.mark.processes
def test_a_taskiq_scheduler_serves_its_metrics(
    processes: ProcessGroup, redis_url: str, prefix: str
) -> None:
    port = free_port()
    env = {"REDIS_URL": redis_url, "DEDUP_PREFIX": prefix}
    processes.spawn("register", [sys.executable, "-m", APP, "register"], env)
    scheduler = processes.scheduler(
        f"{APP}:scheduler", "--skip-first-run", env={**env, "METRICS_PORT": str(port)}
    )

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
        return {
            name: float(value)
            for name, _, value in (line.partition(" ") for line in text.splitlines())
            if name.startswith("taskiq_dedup_") and "{" not in name
        }

    def fired() -> bool:
        try:
            return scrape().get("taskiq_dedup_scheduler_fired_total", 0) >= 2
        except OSError:
            return False

    try:
        wait_until(fired, timeout=30)
    except TimeoutError:
        pytest.fail(f"no firings counted in 30 s; the scheduler said:\n{scheduler.output()}")
    figures = scrape()
    assert figures["taskiq_dedup_scheduler_claimed_total"] >= 2
    assert figures["taskiq_dedup_scheduler_claim_errors_total"] == 0
    assert figures["taskiq_dedup_schedules"] >= 2


def test_a_histogram_counts_each_value_in_its_first_bucket_and_merges() -> None:
    first = Histogram((1.0, 5.0))
    for value in (0.5, 1.0, 3.0, 9.0):
        first.observe(value)
    assert first.counts == [2, 1, 1]  # a value equal to a bound is in that bound's bucket
    assert first.cumulative() == [("1.0", 2), ("5.0", 3), ("+Inf", 4)]
    assert (first.total, first.count) == (13.5, 4)
    second = Histogram((1.0, 5.0))
    second.observe(2.0)
    both = first.merged(second)
    assert (both.counts, both.count, both.total) == ([2, 2, 1], 5, 15.5)
    assert first.count == 4  # merging leaves its operands alone
    with pytest.raises(ValueError, match="different bounds"):
        first.merged(Histogram((2.0,)))
