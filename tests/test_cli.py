"""``taskiq dedup``: the CLI plugin run as real ``taskiq`` subprocesses on a private Redis."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from taskiq import ScheduledTask
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListRedisScheduleSource

from taskiq_dedup.claims import FiringClaims
from taskiq_dedup.cli import server_checks
from taskiq_dedup.cli.output import Result, Table, emit
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.triggers import MAX_CLOCK_SKEW
from tests.reliability.app import evil_pickle
from tests.support.processes import PROJECT_ROOT, ProcessGroup, wait_until
from tests.support.redis_server import RedisServer
from tests.support.versions import needs_interval_store
from tests.test_readme import block

APP = "tests.apps.cli_app"
UTC = timezone.utc
CLI_TIMEOUT = 60.0


def taskiq(
    *args: str, redis_url: str, prefix: str, cwd: Path = PROJECT_ROOT
) -> subprocess.CompletedProcess[str]:
    """Run this environment's ``taskiq`` command line with the test app's settings."""
    return subprocess.run(
        [sys.executable, "-m", "taskiq", *args],
        cwd=cwd,
        env={"REDIS_URL": redis_url, "DEDUP_PREFIX": prefix, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def dedup_json(verb: str, *args: str, redis_url: str, prefix: str) -> tuple[int, Any]:
    done = taskiq("dedup", verb, *args, "--json", redis_url=redis_url, prefix=prefix)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def store(prefix: str, redis_url: str) -> ListRedisScheduleSource:
    """The test app's JSON store (``cli_app.json_store``) for this test's prefix."""
    return ListRedisScheduleSource(
        redis_url, prefix=f"{prefix}-schedules", serializer=JSONSerializer()
    )


async def add_copies(prefix: str, redis_url: str, count: int, cron: str = "*/5 * * * *") -> None:
    """Register ``cli:report`` ``count`` more times in the store, each under a new id."""
    from taskiq import InMemoryBroker  # noqa: PLC0415

    broker = InMemoryBroker()

    @broker.task(task_name="cli:report")
    async def report() -> None: ...

    source = store(prefix, redis_url)
    for _ in range(count):
        await report.kicker().schedule_by_cron(source, cron)
    await source.shutdown()


def test_the_plugin_is_listed_by_taskiq(redis_url: str, prefix: str) -> None:
    listing = taskiq("--help", redis_url=redis_url, prefix=prefix)
    assert "dedup" in listing.stdout
    verbs = taskiq("dedup", "--help", redis_url=redis_url, prefix=prefix)
    assert verbs.returncode == 0
    for verb in ("schedules", "doctor", "prune", "migrate", "history"):
        assert verb in verbs.stdout


async def test_schedules_lists_each_schedule_once_with_every_copy(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    await add_copies(prefix, redis_url, 2)
    _, data = dedup_json("schedules", f"{APP}:good", redis_url=redis_url, prefix=prefix)
    [row] = data["schedules"]
    assert row["task"] == "cli:report"
    assert row["state"] is None
    sources = [copy["source"] for copy in row["copies"]]
    assert sources == ["label"] + [f"ListRedisScheduleSource({prefix}-schedules)"] * 2
    assert len({copy["id"] for copy in row["copies"]}) == 3

    claims = FiringClaims(redis, "test-host:1")
    key = KeySpace(prefix).firings(row["content_id"])
    attempt = claims.new_attempt()
    claim = await claims.claim(key, attempt, [1_800_000_000], 60_000)
    assert claim.won
    _, data = dedup_json("schedules", f"{APP}:good", redis_url=redis_url, prefix=prefix)
    pending = data["schedules"][0]["state"]
    assert pending["pending_slot"] == 1_800_000_000
    assert pending["pending_holder"] == attempt
    await claims.confirm(key, attempt, 1_800_000_000, 60_000)
    _, data = dedup_json("schedules", f"{APP}:good", redis_url=redis_url, prefix=prefix)
    sent = data["schedules"][0]["state"]
    assert sent["sent_up_to"] == 1_800_000_000
    assert sent["sent_by"] == attempt
    assert sent["pending_slot"] is None


def test_schedules_prints_plain_text_when_stdout_is_not_a_terminal(
    redis_url: str, prefix: str
) -> None:
    done = taskiq("dedup", "schedules", f"{APP}:good", redis_url=redis_url, prefix=prefix)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "schedules"
    assert lines[1].split()[:3] == ["id", "task", "trigger"]
    assert "cli:report" in lines[2]
    assert "\x1b[" not in done.stdout


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_rich_table() -> None:
    long_id = "c94bf7b7a95ebb0f94777addd6d90815" * 4
    result = Result({}, [Table("schedules", ["id", "task"], [[long_id, "cli:report"]])])
    plain, terminal = io.StringIO(), Terminal()
    emit(result, as_json=False, out=plain)
    emit(result, as_json=False, out=terminal)
    assert long_id in plain.getvalue()
    assert "cli:report" in terminal.getvalue()
    assert "┃" not in plain.getvalue()
    assert "┃" in terminal.getvalue()
    folded = "".join(
        line.strip("│┃ ").split("│")[0].strip()
        for line in terminal.getvalue().splitlines()
        if line.startswith("│")
    )
    assert long_id in folded  # folded over lines on a narrow terminal, never cut


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (f"{APP}:nope", f"{APP}:nope"),
        ("tests.apps.no_such_module:scheduler", "no_such_module"),
        ("no-colon", "module:variable"),
        (f"{APP}:not_a_scheduler", "not a TaskiqScheduler"),
    ],
)
def test_a_bad_app_spec_exits_2_naming_it(
    spec: str, named: str, redis_url: str, prefix: str
) -> None:
    done = taskiq("dedup", "schedules", spec, redis_url=redis_url, prefix=prefix)
    assert done.returncode == 2
    assert named in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_redis_exits_2_without_printing_the_password(prefix: str) -> None:
    done = taskiq(
        "dedup",
        "schedules",
        f"{APP}:good",
        redis_url="redis://:hunter2-secret@127.0.0.1:1/0",
        prefix=prefix,
    )
    assert done.returncode == 2
    assert "127.0.0.1:1" in done.stderr
    assert "unreachable" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


# ---------------------------------------------------------------- doctor


@pytest.fixture(scope="module")
def durable_url() -> Iterator[str]:
    """A private server configured as the README asks: appendonly, noeviction."""
    server = RedisServer(extra_args=["--appendonly", "yes"]).start()
    try:
        yield server.url
    finally:
        server.close()


def doctor(app: str, redis_url: str, prefix: str) -> tuple[int, dict[str, str]]:
    """Run ``doctor --json``; return its status and its findings by check name."""
    status, data = dedup_json("doctor", f"{APP}:{app}", redis_url=redis_url, prefix=prefix)
    assert data["ok"] is (status == 0)
    return status, {f["check"]: f["level"] for f in data["findings"]}


def test_doctor_passes_the_readme_setup(durable_url: str, prefix: str) -> None:
    status, findings = doctor("good", durable_url, prefix)
    assert (status, findings) == (0, {})


def test_doctor_passes_the_readme_quick_start_as_written(durable_url: str, tmp_path: Path) -> None:
    (tmp_path / "tkq.py").write_text(block("# tkq.py\n"))
    (tmp_path / "register.py").write_text(block("# register.py"))
    env = {**os.environ, "REDIS_URL": durable_url, "PYTHONPATH": str(tmp_path)}
    for _ in range(2):  # two start-ups register the same schedule
        subprocess.run([sys.executable, "register.py"], cwd=tmp_path, env=env, check=True)
    done = taskiq(
        *("dedup", "doctor", "tkq:scheduler", "tkq", "--json"),
        redis_url=durable_url,
        prefix="unused",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == {"ok": True, "findings": []}


@pytest.mark.parametrize(
    ("app", "check", "status"),
    [
        ("unwrapped", "unwrapped-source", 1),
        ("half_wrapped", "unwrapped-source", 1),
        ("no_middleware", "middleware-missing", 1),
        ("middleware_not_last", "middleware-order", 0),
        ("idle_workers_die", "idle-workers-die", 1),
        ("short_idle_timeout", "stream-idle-timeout", 1),
        ("pickling", "pickling-store", 0),
    ],
)
def test_doctor_names_each_misconfigured_app(
    app: str, check: str, status: int, durable_url: str, prefix: str
) -> None:
    found_status, findings = doctor(app, durable_url, prefix)
    assert check in findings
    assert found_status == status
    assert findings[check] == ("error" if status else "warning")


async def test_doctor_reports_copies_merged_or_firing(durable_url: str, prefix: str) -> None:
    await add_copies(prefix, durable_url, 2)
    status, findings = doctor("good", durable_url, prefix)
    assert (status, findings) == (0, {"copies": "warning"})
    status, findings = doctor("unwrapped", durable_url, prefix)
    assert status == 1
    assert findings["copies"] == "error"


async def test_doctor_reports_another_environments_schedule(durable_url: str, prefix: str) -> None:
    source = store(prefix, durable_url)
    await source.add_schedule(
        ScheduledTask(task_name="billing:invoice", labels={}, args=[], kwargs={}, cron="0 * * * *")
    )
    await source.shutdown()
    status, findings = doctor("good", durable_url, prefix)
    assert (status, findings) == (0, {"foreign-schedule": "warning"})


async def test_doctor_reports_a_store_it_cannot_read(durable_url: str, prefix: str) -> None:
    pickled = ListRedisScheduleSource(durable_url, prefix=f"{prefix}-schedules")  # pickle
    await pickled.add_schedule(
        ScheduledTask(task_name="cli:plain", labels={}, args=[1], kwargs={}, cron="0 * * * *")
    )
    await pickled.shutdown()
    status, findings = doctor("good", durable_url, prefix)
    assert status == 1
    assert findings == {"source-fails": "error"}


@pytest.mark.parametrize(
    ("args", "config", "check", "level"),
    [
        ([], {"save": "", "appendonly": "no"}, "persistence", "error"),
        # Set at run time: a second --save on the command line is dropped by Redis 6.2.
        ([], {"save": "3600 1", "appendonly": "no"}, "persistence", "warning"),
        (["--appendonly", "yes", "--maxmemory-policy", "allkeys-lru"], {}, "eviction", "error"),
        (
            ["--appendonly", "yes", "--rename-command", "CONFIG", ""],
            {},
            "persistence-unchecked",
            "info",
        ),
    ],
)
def test_doctor_checks_the_redis_server(
    *,
    args: list[str],
    config: dict[str, str],
    check: str,
    level: str,
    redis_servers: list[RedisServer],
    prefix: str,
) -> None:
    server = RedisServer(extra_args=args).start()
    redis_servers.append(server)
    with SyncRedis.from_url(server.url) as client:
        for name, value in config.items():
            client.config_set(name, value)
        assert all(client.config_get(name)[name] == value for name, value in config.items())
    status, findings = doctor("good", server.url, prefix)
    assert findings == {check: level}
    assert status == (1 if level == "error" else 0)  # warnings and infos pass


async def test_doctor_compares_this_hosts_clock_with_redis(redis: Redis) -> None:
    assert await server_checks.clock(redis, "here") == []
    ahead = MAX_CLOCK_SKEW.total_seconds() + 5
    [finding] = await server_checks.clock(redis, "here", now=lambda: time.time() + ahead)
    assert (finding.check, finding.level) == ("clock-skew", "error")
    assert "ahead of" in finding.problem
    [finding] = await server_checks.clock(redis, "here", now=lambda: time.time() - ahead)
    assert "behind" in finding.problem


def test_doctor_prints_one_line_per_finding_with_its_fix(redis_url: str, prefix: str) -> None:
    done = taskiq("dedup", "doctor", f"{APP}:no_middleware", redis_url=redis_url, prefix=prefix)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert any(
        line.startswith("ERROR [middleware-missing]") and "Fix: broker.with_middlewares" in line
        for line in lines
    )
    assert lines[-1].startswith("2 error(s)")


# ---------------------------------------------------------------- prune


async def stored(prefix: str, redis_url: str) -> list[ScheduledTask]:
    source = store(prefix, redis_url)
    try:
        return await source.get_schedules()
    finally:
        await source.shutdown()


async def add_plain(prefix: str, redis_url: str, ids: list[str | None]) -> None:
    """Register ``cli:plain(7)`` hourly once per entry of ``ids`` (``None``: a generated id)."""
    source = store(prefix, redis_url)
    for schedule_id in ids:
        task = ScheduledTask(
            task_name="cli:plain", labels={}, args=[7], kwargs={}, cron="0 * * * *"
        )
        if schedule_id is not None:
            task.schedule_id = schedule_id
        await source.add_schedule(task)
    await source.shutdown()


async def test_prune_dry_run_changes_nothing_and_apply_leaves_the_decorator_copy(
    redis_url: str, prefix: str
) -> None:
    await add_copies(prefix, redis_url, 3)
    before = sorted(t.schedule_id for t in await stored(prefix, redis_url))
    dry = taskiq("dedup", "prune", f"{APP}:good", redis_url=redis_url, prefix=prefix)
    assert dry.returncode == 0, dry.stderr
    assert "3 copies would delete; run again with --apply" in dry.stdout
    assert all(copy_id in dry.stdout for copy_id in before)
    assert sorted(t.schedule_id for t in await stored(prefix, redis_url)) == before

    _, data = dedup_json("prune", f"{APP}:good", "--apply", redis_url=redis_url, prefix=prefix)
    assert sorted(row["id"] for row in data["copies"]) == before
    assert await stored(prefix, redis_url) == []
    _, listing = dedup_json("schedules", f"{APP}:good", redis_url=redis_url, prefix=prefix)
    [row] = listing["schedules"]
    assert [copy["source"] for copy in row["copies"]] == ["label"]


async def test_prune_apply_leaves_exactly_one_stored_copy(redis_url: str, prefix: str) -> None:
    await add_plain(prefix, redis_url, [None, None, None])
    first = (await stored(prefix, redis_url))[0].schedule_id
    _, data = dedup_json("prune", f"{APP}:good", "--apply", redis_url=redis_url, prefix=prefix)
    assert len(data["copies"]) == 2
    assert [t.schedule_id for t in await stored(prefix, redis_url)] == [first]
    _, again = dedup_json("prune", f"{APP}:good", "--apply", redis_url=redis_url, prefix=prefix)
    assert again["copies"] == []


async def test_prune_keeps_the_copy_that_names_the_schedule(redis_url: str, prefix: str) -> None:
    await add_plain(prefix, redis_url, [None, "nightly-plain", None])
    _, data = dedup_json("prune", f"{APP}:good", "--apply", redis_url=redis_url, prefix=prefix)
    assert len(data["copies"]) == 2
    assert [t.schedule_id for t in await stored(prefix, redis_url)] == ["nightly-plain"]


# ---------------------------------------------------------------- migrate


def pickle_store(prefix: str, redis_url: str) -> ListRedisScheduleSource:
    """The test app's pickling store (``cli_app.pickle_store``): taskiq-redis's default."""
    return ListRedisScheduleSource(redis_url, prefix=f"{prefix}-schedules-pickled")


async def test_migrate_rewrites_pickles_as_json_that_taskiq_redis_reads(
    redis_url: str, prefix: str, redis: Redis, tmp_path: Path
) -> None:
    cron = ScheduledTask(
        task_name="cli:plain", labels={"q": "x"}, args=[7], kwargs={}, cron="0 * * * *"
    )
    later = ScheduledTask(
        task_name="cli:plain", labels={}, args=[8], kwargs={}, time=datetime(2100, 1, 1, tzinfo=UTC)
    )
    old = pickle_store(prefix, redis_url)
    for task in (cron, later):
        await old.add_schedule(task)
    await old.shutdown()
    sentinel = tmp_path / "unpickled"
    evil_key = f"{prefix}-schedules-pickled:data:evil"
    await redis.set(evil_key, evil_pickle(str(sentinel)))
    keys = [f"{prefix}-schedules-pickled:data:{t.schedule_id}" for t in (cron, later)]
    before = [await redis.get(key) for key in keys]

    dry = taskiq("dedup", "migrate", f"{APP}:pickling", redis_url=redis_url, prefix=prefix)
    assert dry.returncode == 0, dry.stderr
    assert "3 pickled schedule(s) in 1 store(s); run again with --apply" in dry.stdout
    assert [await redis.get(key) for key in keys] == before
    assert not sentinel.exists()  # a dry run reads no pickle

    _, data = dedup_json(
        "migrate", f"{APP}:pickling", "--apply", redis_url=redis_url, prefix=prefix
    )
    outcomes = {row["key"]: row["outcome"] for row in data["entries"]}
    assert outcomes[keys[0]] == outcomes[keys[1]] == "rewritten"
    assert outcomes[evil_key].startswith("left: not a schedule")
    json_store = ListRedisScheduleSource(
        redis_url, prefix=f"{prefix}-schedules-pickled", serializer=JSONSerializer()
    )
    await redis.delete(evil_key)
    assert await json_store.get_schedules() == [cron]  # the one-off is listed from its minute
    raw = await redis.get(keys[1])
    assert ScheduledTask.model_validate(json.loads(raw)) == later
    await json_store.shutdown()
    _, again = dedup_json("migrate", f"{APP}:pickling", redis_url=redis_url, prefix=prefix)
    assert again["entries"] == []


# ---------------------------------------------------------------- history


def parent_pid(pid: int) -> int:
    """The parent of a live process (Linux's ``/proc``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("PPid:")]
    return int(line.split()[1])


@pytest.mark.processes
@needs_interval_store
async def test_history_shows_the_ledger_of_firings_sent_and_run_by_real_processes(
    redis_url: str, prefix: str, processes: ProcessGroup
) -> None:
    source = store(prefix, redis_url)
    every_2s = ScheduledTask(
        task_name="cli:plain", labels={}, args=[9], kwargs={}, interval=2, schedule_id="every-2s"
    )
    await source.add_schedule(every_2s)
    await source.shutdown()
    env = {"REDIS_URL": redis_url, "DEDUP_PREFIX": prefix}
    processes.env.update(env)
    worker = processes.taskiq(
        "worker",
        *("worker", f"{APP}:good_broker", APP, "--workers", "1"),
        *("--receiver", "taskiq_dedup:DedupReceiver"),
    )
    schedulers = [
        processes.scheduler(f"{APP}:good", APP, "--skip-first-run", name=f"scheduler-{i}")
        for i in range(2)
    ]

    def ran() -> dict[str, Any] | None:
        _, data = dedup_json(
            "history", f"{APP}:good", "--id", "every-2s", redis_url=redis_url, prefix=prefix
        )
        [row] = data["schedules"]
        # a list queue cannot redeliver: a run is claimed once, its end not recorded
        return row if sum(e["outcome"] == "started" for e in row["ledger"]) >= 3 else None

    wait_until(ran, timeout=60, interval=0.5, message=processes.logs())
    row = ran()
    assert row is not None
    assert row["id"] == "every-2s"
    slots = [e["slot"] for e in row["ledger"]]
    assert slots == sorted(slots, reverse=True)  # newest first
    assert len(set(slots)) == len(slots)  # one entry per firing
    executed = [e for e in row["ledger"] if e["outcome"] == "started"]
    scheduler_pids = {str(s.pid) for s in schedulers}
    host = socket.gethostname()
    for entry in executed:
        assert entry["slot"] % 2 == 0  # an interval bucket
        claimer = entry["claimed_by"].split("#")[0]  # host:pid#random
        assert claimer.split(":")[1] in scheduler_pids, entry  # one of the schedulers
        assert entry["lateness_seconds"] == pytest.approx(
            datetime.fromisoformat(entry["sent_at"]).timestamp() - entry["slot"], abs=1e-3
        )
        assert entry["started_at"] is not None
        assert entry["finished_at"] is None
    # Every run by the one worker process (the child `taskiq worker --workers 1` forks):
    [name] = {e["worker"] for e in executed}
    worker_host, worker_pid = name.split(":")
    assert worker_host == host
    assert parent_pid(int(worker_pid)) == worker.pid, (name, worker.pid)
    done = taskiq(
        "dedup", "history", f"{APP}:good", "--id", "every-2s", redis_url=redis_url, prefix=prefix
    )
    assert done.returncode == 0, done.stderr
    assert "no firing ledger" not in done.stdout
    [line] = [
        line
        for line in done.stdout.splitlines()
        if line.startswith(datetime.fromtimestamp(executed[0]["slot"], tz=UTC).isoformat())
    ]
    assert line.split()[1:2] == ["started"]
    assert name in line
    processes.stop_all()


async def test_history_shows_a_missed_slot_and_a_pending_claim(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    _, data = dedup_json("history", f"{APP}:good", redis_url=redis_url, prefix=prefix)
    [report] = [r for r in data["schedules"] if r["task"] == "cli:report"]
    assert report["ledger"] == []
    key = KeySpace(prefix).firings(report["content_id"])
    claims = FiringClaims(redis, "sched-a:1")
    ttl_ms = 3_600_000
    await claims.claim(key, "sched-a:1#1", [300], ttl_ms)
    assert await claims.confirm(key, "sched-a:1#1", 300, ttl_ms)
    # Nobody sent 600: the claim of 900 skips it and its confirm records it missed.
    assert (await claims.claim(key, "sched-a:1#2", [900], ttl_ms)).previous == 300
    assert await claims.confirm(key, "sched-a:1#2", 900, ttl_ms, missed=[600])
    assert (await claims.claim(key, "sched-b:2#1", [1200], ttl_ms)).won  # being sent now

    _, data = dedup_json(
        "history", f"{APP}:good", "--id", report["id"], redis_url=redis_url, prefix=prefix
    )
    [row] = data["schedules"]
    assert [(e["slot"], e["outcome"]) for e in row["ledger"]] == [
        (900, "sent"),  # no worker took it
        (600, "missed"),
        (300, "sent"),
    ]
    missed = row["ledger"][1]
    assert (missed["claimed_by"], missed["sent_at"], missed["lateness_seconds"]) == (
        "sched-a:1#2",  # the claim that found it missed
        None,
        None,
    )
    assert missed["detected_at"] is not None
    assert (row["state"]["pending_slot"], row["state"]["pending_holder"]) == (1200, "sched-b:2#1")
    done = taskiq(
        "dedup", "history", f"{APP}:good", "--id", report["id"], redis_url=redis_url, prefix=prefix
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("1970-")]
    assert [(r[0], r[1]) for r in rows] == [
        (datetime.fromtimestamp(1200, tz=UTC).isoformat(), "pending"),
        (datetime.fromtimestamp(900, tz=UTC).isoformat(), "sent"),
        (datetime.fromtimestamp(600, tz=UTC).isoformat(), "missed"),
        (datetime.fromtimestamp(300, tz=UTC).isoformat(), "sent"),
    ]
    assert "sched-b:2#1" in " ".join(rows[0])
    assert rows[2][2:4] == ["-", "sched-a:1#2"]  # no lateness; who found it


def test_history_of_an_unknown_id_says_so(redis_url: str, prefix: str) -> None:
    done = taskiq(
        "dedup", "history", f"{APP}:good", "--id", "nope", redis_url=redis_url, prefix=prefix
    )
    assert done.returncode == 0, done.stderr
    assert "no schedule answers to id 'nope'" in done.stdout


def test_schedules_names_the_sources_it_does_not_show(redis_url: str, prefix: str) -> None:
    done = taskiq("dedup", "schedules", f"{APP}:half_wrapped", redis_url=redis_url, prefix=prefix)
    assert done.returncode == 0, done.stderr
    assert (
        f"not shown: sources outside the CompositeScheduleSource "
        f"(ListRedisScheduleSource({prefix}-schedules))" in done.stdout
    )


def test_a_verb_needing_a_composite_source_names_the_scheduler_without_one(
    redis_url: str, prefix: str
) -> None:
    for verb in ("schedules", "prune", "history"):
        done = taskiq("dedup", verb, f"{APP}:unwrapped", redis_url=redis_url, prefix=prefix)
        assert done.returncode == 2
        assert f"{APP}:unwrapped has no CompositeScheduleSource" in done.stderr
        assert "taskiq dedup doctor" in done.stderr


def test_doctor_names_a_password_protected_redis_without_its_password(
    redis_servers: list[RedisServer], prefix: str
) -> None:
    secret = "s3cret-pw"  # noqa: S105 -- a private test server's
    server = RedisServer(password=secret).start()  # persistence off: a finding names it
    redis_servers.append(server)
    url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
    done = taskiq("dedup", "doctor", f"{APP}:good", redis_url=url, prefix=prefix)
    assert done.returncode == 1, done.stderr
    assert f"Redis at redis://***@127.0.0.1:{server.port}/0 has persistence off" in done.stdout
    assert secret not in done.stdout + done.stderr


async def test_prune_reports_a_repeated_id_it_cannot_delete_alone(
    redis_url: str, prefix: str
) -> None:
    await add_plain(prefix, redis_url, ["hourly-plain", "hourly-plain"])
    assert len(await stored(prefix, redis_url)) == 2  # one data key, listed twice
    done = taskiq("dedup", "prune", f"{APP}:good", "--apply", redis_url=redis_url, prefix=prefix)
    assert done.returncode == 0, done.stderr
    assert (
        f"not pruned: ListRedisScheduleSource({prefix}-schedules) lists id hourly-plain"
        in done.stdout
    )
    assert "0 copies deleted" in done.stdout
    assert len(await stored(prefix, redis_url)) == 2
