"""embedded_scheduler: taskiq's loop in a web worker, sources started and stopped."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta

import pytest
from taskiq import InMemoryBroker, TaskiqMessage, TaskiqMiddleware, TaskiqScheduler
from taskiq.schedule_sources import LabelScheduleSource

from taskiq_dedup import CompositeScheduleSource
from taskiq_dedup.embedded import PACKAGE_LOGGER, embedded_scheduler
from tests.support.polling import eventually

FIRINGS_SEEN = 4
"""Firings to wait for: enough that both loops have ticked several times."""


def make_app(
    redis_url: str, prefix: str, runs: list[str]
) -> tuple[InMemoryBroker, CompositeScheduleSource, TaskiqScheduler]:
    """One web worker's broker, composite source and scheduler (a 1 s interval task)."""
    broker = InMemoryBroker()

    @broker.task(task_name="app:beat", schedule=[{"interval": 1}])
    async def beat() -> None:
        runs.append("beat")

    source = CompositeScheduleSource(
        [LabelScheduleSource(broker)], redis_url=redis_url, prefix=prefix
    )
    return broker, source, TaskiqScheduler(broker, sources=[source])


async def test_two_web_workers_send_each_firing_once(redis_url: str, prefix: str) -> None:
    runs: list[str] = []
    apps = [make_app(redis_url, prefix, runs) for _ in range(2)]
    sent: list[str] = []
    for broker, _, _ in apps:
        broker.add_middlewares(_RecordSlots(sent))
    async with (
        embedded_scheduler(apps[0][2], start_broker=True, update_interval=timedelta(seconds=1)),
        embedded_scheduler(apps[1][2], start_broker=True, update_interval=timedelta(seconds=1)),
    ):
        await eventually(lambda: len(sent) >= FIRINGS_SEEN, timeout=30)
    duplicates = {slot: n for slot, n in Counter(sent).items() if n > 1}
    assert duplicates == {}
    stats = [source.stats for _, source, _ in apps]
    assert sum(s.claimed for s in stats) == len(sent)
    assert sum(s.duplicates_cancelled for s in stats) >= 1  # both loops really ran


async def test_sources_are_started_in_the_block_and_stopped_after(
    redis_url: str, prefix: str
) -> None:
    broker = InMemoryBroker()
    broker.register_task(_beat, task_name="app:beat", schedule=[{"cron": "* * * * *"}])
    child = _RecordingSource(broker)
    source = CompositeScheduleSource([child], redis_url=redis_url, prefix=prefix)
    async with embedded_scheduler(TaskiqScheduler(broker, sources=[source])) as loop:
        assert child.calls == ["startup"]
        assert not loop.done()
        schedules = await source.get_schedules()  # registering here would work
        assert [s.task_name for s in schedules] == ["app:beat"]
    assert loop.cancelled()
    assert child.calls == ["startup", "shutdown"]


async def _beat() -> None:
    """A task for the schedule."""


class _RecordingSource(LabelScheduleSource):
    """The label source, noting start-up and shut-down."""

    def __init__(self, broker: InMemoryBroker) -> None:
        super().__init__(broker)
        self.calls: list[str] = []

    async def startup(self) -> None:
        self.calls.append("startup")
        await super().startup()

    async def shutdown(self) -> None:
        self.calls.append("shutdown")
        await super().shutdown()


async def test_package_lines_show_when_nothing_else_would(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under uvicorn the root logger has no handler: INFO lines would be dropped."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    package = logging.getLogger(PACKAGE_LOGGER)
    level_before = package.level
    _, _, scheduler = make_app(redis_url, prefix, [])
    async with embedded_scheduler(scheduler):
        logging.getLogger("taskiq_dedup.source").info("a line from the claim path")
    assert "a line from the claim path" in capsys.readouterr().err
    assert package.handlers == []
    assert package.level == level_before


class _RecordSlots(TaskiqMiddleware):
    """A broker middleware noting each sent firing as ``schedule id:slot``."""

    def __init__(self, sent: list[str]) -> None:
        super().__init__()
        self.sent = sent

    def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        self.sent.append(f"{message.labels['schedule_id']}:{message.labels['dedup_slot']}")
        return message
