"""Real ``taskiq worker`` processes on a ``RedisStreamBroker``: crashes, copies, kickers."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis import Redis as SyncRedis
from taskiq import AsyncBroker
from taskiq.kicker import AsyncKicker
from taskiq.message import TaskiqMessage

from taskiq_dedup.keys import KeySpace
from tests.apps.middleware_app import IDLE_MS, LEASE, make_broker
from tests.support.polling import eventually
from tests.support.processes import ManagedProcess, ProcessGroup, wait_until

pytestmark = pytest.mark.processes

APP = "tests.apps.middleware_app"
RECEIVER = ("--receiver", "taskiq_dedup:DedupReceiver")
GROUP = "taskiq"
SLOT = 1_700_000_000
FIRING = {"schedule_id": "nightly", "dedup_slot": SLOT}


class App:
    """The test's view of the app's Redis records and stream."""

    def __init__(self, redis_url: str, prefix: str, processes: ProcessGroup) -> None:
        self.prefix = prefix
        self.processes = processes
        self.workers: list[ManagedProcess] = []
        self.redis = SyncRedis.from_url(redis_url)
        self.env = {
            "REDIS_URL": redis_url,
            "DEDUP_PREFIX": prefix,
            "IDLE_MS": str(IDLE_MS),
            "LEASE": str(LEASE),
        }

    def records(self, name: str) -> list[str]:
        return [raw.decode() for raw in self.redis.lrange(f"{self.prefix}:{name}", 0, -1)]

    def pending(self) -> int:
        stream = f"{self.prefix}:stream"
        if not self.redis.exists(stream):
            return 0
        return int(self.redis.xpending(stream, GROUP)["pending"])

    def key(self, schedule_id: str = "nightly") -> str:
        return KeySpace(self.prefix).firing(schedule_id, SLOT)

    def worker(self, name: str = "worker") -> ManagedProcess:
        worker = self.processes.worker(f"{APP}:broker", *RECEIVER, name=name, env=self.env)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        # A RedisStreamBroker worker does not exit on SIGTERM (taskiq 0.13 with
        # taskiq-redis 1.2.4 hangs closing its reader, with or without this
        # package), which would cost ProcessGroup's 10 s grace per test; the
        # test is over, so nothing is lost by SIGKILL.
        for worker in self.workers:
            if worker.alive():
                worker.kill()
        self.redis.close()


@pytest.fixture
def app(redis_url: str, prefix: str, processes: ProcessGroup) -> Iterator[App]:
    view = App(redis_url, prefix, processes)
    yield view
    view.close()


@pytest.fixture
async def client(redis_url: str, prefix: str) -> AsyncIterator[AsyncBroker]:
    """A client of the app's broker (same stream, results and middleware)."""
    broker = make_broker(redis_url, prefix)
    await broker.startup()
    yield broker
    await broker.shutdown()


async def nudge(client: AsyncBroker) -> None:
    """Send traffic: taskiq-redis reclaims idle messages only after a read returned some."""
    await AsyncKicker("noop", client, {}).kiq()


def no_errors(*workers: ManagedProcess) -> None:
    for worker in workers:
        output = worker.output()
        assert "[ERROR" not in output, output[-4000:]
        assert "never retrieved" not in output, output[-4000:]


async def test_worker_killed_mid_task_finishes_once_after_redelivery(
    app: App, client: AsyncBroker, processes: ProcessGroup
) -> None:
    handle = await AsyncKicker("slow", client, dict(FIRING)).kiq("crash", 2.0)
    first = app.worker("worker-a")
    await eventually(lambda: app.records("started") == ["crash"], timeout=20, interval=0.05)
    first.kill()  # SIGKILL mid-task: no finish, no release, no ack
    assert app.records("executions") == []
    assert app.pending() == 1

    second = app.worker("worker-b")

    async def finished() -> bool:
        if app.records("executions") == ["crash"] and app.pending() == 0:
            return True
        await nudge(client)
        return False

    await eventually(finished, timeout=30, interval=0.3, message=processes.logs())
    assert (await handle.wait_result(timeout=5)).return_value == "crash"
    assert app.records("started") == ["crash", "crash"]
    assert app.redis.hget(app.key(), "state") == b"done"
    assert app.redis.hget(app.key(), "attempts") == b"2"
    assert "Took over" in second.output()
    no_errors(second)


async def test_same_message_delivered_twice_runs_once_and_both_are_acked(
    app: App, client: AsyncBroker, processes: ProcessGroup
) -> None:
    message = TaskiqMessage(
        task_id=uuid.uuid4().hex,
        task_name="slow",
        labels=dict(FIRING),
        args=["twice", 0.5],
        kwargs={},
    )
    for _ in range(2):
        await client.kick(client.formatter.dumps(message))
    worker = app.worker()
    stream = f"{app.prefix}:stream"
    last_id = app.redis.xrevrange(stream, count=1)[0][0]

    async def settled() -> bool:
        [group] = app.redis.xinfo_groups(stream)
        delivered = group["last-delivered-id"] >= last_id
        if delivered and app.pending() == 0 and app.records("executions") == ["twice"]:
            return True
        await nudge(client)
        return False

    await eventually(settled, timeout=30, interval=0.3, message=processes.logs())
    assert app.records("started") == ["twice"]
    assert "Duplicate task" in worker.output()
    no_errors(worker)


def test_five_processes_kicking_twenty_idempotency_keys(app: App, processes: ProcessGroup) -> None:
    keys, kickers = 20, 5
    worker = app.worker()
    clients = [
        processes.spawn(
            f"kicker-{i}", [sys.executable, "-m", APP, "kick", str(i), str(keys)], app.env
        )
        for i in range(kickers)
    ]
    wait_until(lambda: not any(c.alive() for c in clients), timeout=60, message=processes.logs())
    for kicker in clients:
        assert kicker.popen.returncode == 0, kicker.output()

    executions = app.records("executions")
    ran = {value.split(":")[0]: value for value in executions}
    assert len(executions) == keys, executions
    assert sorted(ran) == sorted(f"k{key}" for key in range(keys))
    for index in range(kickers):
        answers = {
            k.decode(): v.decode()
            for k, v in app.redis.hgetall(f"{app.prefix}:answers:{index}").items()
        }
        assert answers == ran  # every handle got its key's one execution
    no_errors(worker)


async def test_failing_firing_is_retried_to_success_once(
    app: App, client: AsyncBroker, processes: ProcessGroup
) -> None:
    labels = {**FIRING, "retry_on_error": True}
    handle = await AsyncKicker("flaky", client, labels).kiq("f")
    worker = app.worker()
    result = await handle.wait_result(timeout=20)
    assert result.return_value == "f:2"
    assert app.records("executions") == ["f"]
    assert app.redis.get(f"{app.prefix}:attempts:f") == b"2"
    assert app.redis.hget(app.key(), "state") == b"done"
    await eventually(lambda: app.pending() == 0, timeout=10)
    assert "Exception found while executing function" in worker.output()  # the first attempt


async def test_two_stock_schedulers_run_each_interval_firing_once(
    app: App, processes: ProcessGroup
) -> None:
    """Stock ``taskiq scheduler`` x2, taskiq's LabelScheduleSource, no composite source.

    Each process gives the decorator schedule its own random id; the middleware
    on the scheduler's broker names each firing after the schedule instead, so
    the two copies of every 2-second bucket share one key.
    """
    worker = app.worker()
    for name in ("scheduler-a", "scheduler-b"):
        processes.scheduler(f"{APP}:scheduler", name=name, env=app.env)

    def ticks() -> list[str]:
        return app.records("ticks")

    wait_until(lambda: len(set(ticks())) >= 4, timeout=40, interval=0.2, message=processes.logs())
    for process in processes.processes:
        if process.name.startswith("scheduler"):
            process.stop()
    wait_until(lambda: app.pending() == 0, timeout=20, interval=0.2, message=processes.logs())
    recorded = ticks()
    assert len(recorded) == len(set(recorded)), recorded  # no slot ran twice
    assert all(int(slot) % 2 == 0 for slot in recorded)  # epoch-aligned 2 s buckets
    no_errors(worker)
