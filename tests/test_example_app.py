"""The FastAPI example's endpoints, through httpx, against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from taskiq import ScheduledTask

from taskiq_dedup import schedule_id_for
from taskiq_dedup.claims import FiringClaims
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.leases import Leases
from tests.support.redis_server import RedisServer

EXAMPLE = "examples.fastapi_app"


def _forget_example() -> None:
    for name in [n for n in sys.modules if n == EXAMPLE or n.startswith(EXAMPLE + ".")]:
        del sys.modules[name]


@contextlib.asynccontextmanager
async def running_app(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, prefix: str
) -> AsyncIterator[tuple[httpx.AsyncClient, ModuleType]]:
    """Import the example afresh for this environment, run its lifespan, yield a client.

    The example builds its broker and sources from the environment at import
    (as FastAPI-template does), so each test imports it anew with its own prefix.
    """
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DEDUP_PREFIX", prefix)
    monkeypatch.setenv("EMBEDDED_SCHEDULER", "0")
    monkeypatch.setenv("DEDUP_DISABLED", "0")
    _forget_example()
    try:
        module = importlib.import_module(f"{EXAMPLE}.app")
        app = module.app
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
                yield client, importlib.import_module(EXAMPLE)
    finally:
        _forget_example()


@pytest.fixture
async def client(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(monkeypatch, redis_url, prefix) as (client, _):
        yield client


def scheduled(**trigger: Any) -> ScheduledTask:
    task_name = trigger.pop("task_name")
    return ScheduledTask(task_name=task_name, labels={}, args=[], kwargs={}, **trigger)


def by_task(schedules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    assert len({s["task"] for s in schedules}) == len(schedules), schedules
    return {s["task"]: s for s in schedules}


async def test_lists_code_and_startup_schedules_with_origins(client: httpx.AsyncClient) -> None:
    before = datetime.now(tz=timezone.utc)
    response = await client.get("/schedules")
    after = datetime.now(tz=timezone.utc)
    assert response.status_code == 200
    schedules = by_task(response.json())
    assert set(schedules) == {"example:tick", "example:report", "example:digest"}

    tick = schedules["example:tick"]
    assert tick["id"] == schedule_id_for(scheduled(task_name="example:tick", interval=3))
    assert tick["trigger"]["kind"] == "interval"
    assert tick["trigger"]["every_seconds"] == 3
    assert [o["source"] for o in tick["origins"]] == ["label"]
    assert tick["in_code"] is True

    report = schedules["example:report"]
    assert report["trigger"]["cron"] == "* * * * *"
    assert report["trigger"]["timezone"] == "UTC"
    assert [o["source"] for o in report["origins"]] == ["label"]

    digest = schedules["example:digest"]  # registered by the lifespan, not a decorator
    assert digest["id"] == schedule_id_for(scheduled(task_name="example:digest", cron="* * * * *"))
    assert [o["source"] for o in digest["origins"]] == ["redis"]
    assert digest["in_code"] is False

    # "Now" was read by the app between before and after: a boundary may fall in between.
    for schedule in schedules.values():
        next_fire = datetime.fromisoformat(schedule["next_fire"])
        assert before < next_fire <= after + timedelta(minutes=1), schedule


async def test_metrics_list_each_schedule_with_its_copies(client: httpx.AsyncClient) -> None:
    listed = by_task((await client.get("/schedules")).json())
    response = await client.get("/metrics/")
    assert response.status_code == 200
    copies = {
        line.split("schedule_id=")[1].split('"')[1]: float(line.rpartition(" ")[2])
        for line in response.text.splitlines()
        if line.startswith("taskiq_dedup_schedule_copies{")
    }
    for schedule in listed.values():
        assert copies[schedule["id"]] == len(schedule["origins"])
    assert "taskiq_dedup_scheduler_claimed_total" in response.text


async def test_startup_registration_is_harmless(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, prefix: str
) -> None:
    async with running_app(monkeypatch, redis_url, prefix) as (client, example):
        # Four more web workers starting at once register through the composite...
        await asyncio.gather(*(example.lifespan.register_schedules() for _ in range(4)))
        # ...and an unchanged FastAPI-template start-up writes straight into Redis.
        tasks, tkq = example.tasks, example.tkq
        await tasks.digest.kicker().schedule_by_cron(tkq.redis_source, "* * * * *")
        await tasks.digest.kicker().schedule_by_cron(tkq.redis_source, "* * * * *")

        digest = by_task((await client.get("/schedules")).json())["example:digest"]
        assert [o["source"] for o in digest["origins"]] == ["redis"] * 3  # once + 2 raw copies
        copy_ids = [o["id"] for o in digest["origins"]]
        assert copy_ids[0] == digest["id"]
        assert len(set(copy_ids)) == 3

        # Deleting by any copy's id removes every copy.
        assert (await client.delete(f"/schedules/{copy_ids[2]}")).status_code == 204
        assert "example:digest" not in by_task((await client.get("/schedules")).json())


@pytest.mark.parametrize(
    ("body", "trigger"),
    [
        (
            {"task": "example:report", "cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"},
            {"kind": "cron", "cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"},
        ),
        ({"task": "example:tick", "interval": 30}, {"kind": "interval", "every_seconds": 30}),
        (
            {"task": "example:digest", "at": "2030-01-01T00:00:00Z", "args": [1]},
            {"kind": "once", "at": "2030-01-01T00:00:00Z"},
        ),
    ],
    ids=["cron-with-timezone", "interval", "one-off"],
)
async def test_adds_each_kind_once(
    client: httpx.AsyncClient, body: dict[str, Any], trigger: dict[str, Any]
) -> None:
    first = await client.post("/schedules", json=body)
    assert first.status_code == 201, first.text
    added = first.json()
    assert {k: added["trigger"][k] for k in trigger} == trigger
    assert added["in_code"] is False
    assert added["next_fire"] is not None

    again = await client.post("/schedules", json=body)
    assert again.status_code == 201
    assert again.json()["id"] == added["id"]  # the id is the content's

    listed = {s["id"]: s for s in (await client.get("/schedules")).json()}
    if trigger["kind"] == "once":
        # taskiq-redis lists a one-off only from its minute on.
        assert added["id"] not in listed
        assert added["origins"] == []
    else:
        assert [o["source"] for o in listed[added["id"]]["origins"]] == ["redis"]
    assert (await client.delete(f"/schedules/{added['id']}")).status_code == 204
    assert (await client.delete(f"/schedules/{added['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"task": "example:report", "cron": "61 * * * *"}, "invalid cron '61 * * * *'"),
        ({"task": "example:report", "cron": "* * * *"}, "invalid cron '* * * *'"),
        (
            {"task": "example:report", "cron": "0 9 * * *", "timezone": "Mars/Olympus"},
            "unknown timezone 'Mars/Olympus'",
        ),
        ({"task": "example:tick", "interval": 1.5}, "interval must be a whole number"),
        ({"task": "example:tick", "interval": -5}, "got -5"),
        ({"task": "example:tick", "interval": 5, "timezone": "UTC"}, "cron schedules only"),
        ({"task": "example:tick"}, "needs exactly one of cron, interval, time"),
        ({"task": "example:nope", "interval": 5}, "unknown task 'example:nope'"),
    ],
    ids=[
        "cron-out-of-range",
        "cron-four-fields",
        "timezone",
        "fractional-interval",
        "negative-interval",
        "timezone-without-cron",
        "no-trigger",
        "unknown-task",
    ],
)
async def test_bad_schedule_is_422_naming_the_problem(
    client: httpx.AsyncClient, body: dict[str, Any], named: str
) -> None:
    before = (await client.get("/schedules")).json()
    response = await client.post("/schedules", json=body)
    assert response.status_code == 422, response.text
    assert named in response.json()["detail"]
    assert (await client.get("/schedules")).json() == before


async def test_delete_unknown_is_404(client: httpx.AsyncClient) -> None:
    response = await client.delete("/schedules/0123456789abcdef0123456789abcdef")
    assert response.status_code == 404
    assert "0123456789abcdef0123456789abcdef" in response.json()["detail"]


async def test_delete_code_schedule_is_409(client: httpx.AsyncClient) -> None:
    tick = by_task((await client.get("/schedules")).json())["example:tick"]
    response = await client.delete(f"/schedules/{tick['id']}")
    assert response.status_code == 409
    assert "declared in code" in response.json()["detail"]
    assert tick["id"] in {s["id"] for s in (await client.get("/schedules")).json()}


async def test_executions_newest_first(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, prefix: str
) -> None:
    async with running_app(monkeypatch, redis_url, prefix) as (client, example):
        assert (await client.get("/executions")).json() == []
        executions = example.executions
        key = executions.executions_key(example.tkq.keys)
        async with Redis.from_url(redis_url) as redis:
            for slot in (60, 120, 180):
                await executions.record(
                    redis,
                    key,
                    executions.Execution(
                        task="example:report",
                        schedule_id="abc",
                        slot=slot,
                        task_id=f"abc-{slot}",
                        pid=42,
                        at=slot + 0.5,
                    ),
                )
        response = await client.get("/executions", params={"limit": 2})
        assert response.status_code == 200
        assert [e["slot"] for e in response.json()] == [180, 120]
        assert response.json()[0]["slot_time"] == "1970-01-01T00:03:00Z"
        assert (await client.get("/executions", params={"limit": 0})).status_code == 422


async def test_health_reports_prefix_and_redis(
    monkeypatch: pytest.MonkeyPatch, own_redis: RedisServer, prefix: str
) -> None:
    async with running_app(monkeypatch, own_redis.url, prefix) as (client, _):
        response = await client.get("/health")
        assert response.status_code == 200
        health = response.json()
        assert health.pop("source_stats")["duplicates_cancelled"] == 0
        assert health == {
            "status": "ok",
            "redis": "reachable",
            "redis_url": own_redis.url,
            "prefix": prefix,
            "dedup": True,
            "embedded_scheduler": False,
        }
        own_redis.kill()
        response = await client.get("/health")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert response.json()["redis"].startswith("unreachable")
        own_redis.start()


async def test_every_key_is_under_the_prefix(
    monkeypatch: pytest.MonkeyPatch, own_redis: RedisServer, prefix: str
) -> None:
    async with running_app(monkeypatch, own_redis.url, prefix) as (client, _):
        await client.post("/schedules", json={"task": "example:tick", "interval": 30})
        await client.post("/schedules", json={"task": "example:digest", "at": "2030-01-01T00:00Z"})
        await client.get("/schedules")
        async with Redis.from_url(own_redis.url) as redis:
            keys = [key.decode() async for key in redis.scan_iter()]
    assert keys
    assert all(key.startswith(prefix + ":") for key in keys), keys


def test_settings_from_the_environment() -> None:
    from examples.fastapi_app.settings import Settings  # noqa: PLC0415

    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://user:s3cret@cache:6379/2",
            "DEDUP_PREFIX": "taskiq-dedup:staging",
            "EMBEDDED_SCHEDULER": "1",
        },
    )
    assert settings == Settings(
        redis_url="redis://user:s3cret@cache:6379/2",
        prefix="taskiq-dedup:staging",
        embedded_scheduler=True,
        dedup_disabled=False,
    )
    line = settings.describe()
    assert "s3cret" not in line
    assert "prefix=taskiq-dedup:staging" in line
    assert "redis://***@cache:6379/2" in line
    with pytest.raises(ValueError, match="DEDUP_DISABLED must be 0 or 1"):
        Settings.from_env({"DEDUP_DISABLED": "maybe"})


async def test_idle_worker_keeps_waiting_for_messages(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, prefix: str
) -> None:
    """redis-py 8's default 5 s socket timeout must not end the broker's blocking wait."""
    async with running_app(monkeypatch, redis_url, prefix) as (_, example):
        broker = example.tkq.broker
        messages = broker.listen()
        try:
            with pytest.raises(asyncio.TimeoutError):  # not redis' TimeoutError
                await asyncio.wait_for(anext(messages), timeout=6)
        finally:
            await messages.aclose()


async def test_a_schedule_added_under_your_id_is_listed_and_deleted_by_it(
    client: httpx.AsyncClient,
) -> None:
    body = {"task": "example:report", "cron": "0 9 * * mon", "id": "monday-report"}
    added = await client.post("/schedules", json=body)
    assert added.status_code == 201, added.text
    content_id = schedule_id_for(scheduled(task_name="example:report", cron="0 9 * * 1"))
    assert (added.json()["id"], added.json()["content_id"]) == ("monday-report", content_id)
    assert added.json()["trigger"]["cron"] == "0 9 * * 1"
    # The same schedule posted without an id (or spelled otherwise) is the same one:
    again = await client.post("/schedules", json={"task": "example:report", "cron": "0 9 * * 1"})
    assert again.json()["id"] == "monday-report"
    listed = {s["id"] for s in (await client.get("/schedules")).json()}
    assert "monday-report" in listed
    assert content_id not in listed
    assert (await client.delete("/schedules/monday-report")).status_code == 204
    assert (await client.delete("/schedules/monday-report")).status_code == 404


async def test_history_shows_who_sent_and_who_ran_each_firing(
    client: httpx.AsyncClient, redis_url: str, prefix: str
) -> None:
    body = {"task": "example:report", "cron": "0 9 * * mon", "id": "monday-report"}
    content_id = (await client.post("/schedules", json=body)).json()["content_id"]
    assert (await client.get("/schedules/monday-report/history")).json() == []
    keys = KeySpace(prefix)
    async with Redis.from_url(redis_url) as redis:
        claims = FiringClaims(redis, "sched-1:7")
        await claims.claim(keys.firings(content_id), "sched-1:7#a", [60], 3_600_000)
        await claims.confirm(keys.firings(content_id), "sched-1:7#a", 60, 3_600_000)
        leases = Leases(redis)
        run = keys.firing("monday-report", 60)  # workers key runs on the id messages carry
        for worker in ("worker-1:9", "worker-2:4"):  # the second copy is refused
            await leases.claim(
                run,
                token=f"token-{worker}",
                task_id="t-60",
                generation=0,
                worker=worker,
                lease_ms=60_000,
                retention_ms=60_000,
            )
        await leases.finish(run, "token-worker-1:9", retention_ms=60_000)
    response = await client.get("/schedules/monday-report/history")
    assert response.status_code == 200
    [firing] = response.json()
    assert firing["slot"] == 60
    assert firing["slot_time"] == "1970-01-01T00:01:00Z"
    assert (firing["outcome"], firing["claimed_by"], firing["worker"]) == (
        "ran",
        "sched-1:7#a",
        "worker-1:9",
    )
    assert firing["duplicates_dropped"] == 1
    assert firing["sent_at"] is not None
    assert firing["finished_at"] is not None
    by_content = await client.get(f"/schedules/{content_id}/history")
    assert by_content.json() == response.json()
    # A firing the overlap policy skipped is served as such (not a validation error).
    async with Redis.from_url(redis_url) as redis:
        claims = FiringClaims(redis, "sched-1:7")
        await claims.claim(keys.firings(content_id), "sched-1:7#b", [120], 3_600_000)
        await claims.confirm(keys.firings(content_id), "sched-1:7#b", 120, 3_600_000)
        skipped = keys.firing("monday-report", 120)
        await Leases(redis).claim(
            skipped,
            token="token-skip",  # noqa: S106 -- a lease token
            task_id="t-120",
            generation=0,
            worker="worker-1:9",
            lease_ms=60_000,
            retention_ms=60_000,
        )
        await Leases(redis).finish(
            skipped, "token-skip", retention_ms=60_000, outcome="skipped_overlap"
        )
    outcomes = [f["outcome"] for f in (await client.get("/schedules/monday-report/history")).json()]
    assert outcomes == ["ran", "skipped_overlap"]
    assert (await client.get("/schedules/no-such-schedule/history")).status_code == 404
