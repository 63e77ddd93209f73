"""One runner for the fault scenarios, shared by the short tests and the soak.

A scenario starts two private Redis servers (see ``tests.reliability.app``: the
*dedup* server holds claims and worker keys and takes the faults, the *stable*
one holds the broker's stream, the schedule store and the execution record),
registers a dynamic schedule, starts ``taskiq worker`` and three stock
``taskiq scheduler --skip-first-run --update-interval=5`` processes, injects its
fault for a while, stops the schedulers, lets the workers drain the stream and
counts executions per firing ``(schedule, slot)`` against the firings that were
due while the schedulers ran.

Excuses are computed from the fault as measured, and no wider:

- a missed firing is *explained* when its window meets ``[down - IN_FLIGHT,
  up + CLAIM_RETRY_WINDOW]`` of a measured outage that lasted longer than the
  claim retries can bridge (``LAST_RETRY_AFTER``; never an instant restart): a
  claim begun then fails, and a scheduler loop held up by a claim still retrying
  fires its next interval late, past the bucket; or when the scheduler that
  claimed it was SIGKILLed within the window, before sending it (the
  claim-then-send window);
- a duplicate is *explained* when a Redis restart without persistence fell
  inside the firing's window (the restart forgot the claim and the done-mark),
  at most one extra run per schedule per restart - the bound README.md states.

Everything else is a violation. ``guard=False`` runs the same processes without
the guard (each scheduler claims in a key space of its own, the workers have no
``DedupMiddleware``), so a test can show that the checks catch duplicates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis as SyncRedis
from taskiq.message import TaskiqMessage

from taskiq_dedup.claims import CLAIM_RETRY_WINDOW
from tests.reliability import app
from tests.reliability.proxy import LatencyProxy
from tests.support.processes import FIRST_TICK, ManagedProcess, ProcessGroup, wait_until
from tests.support.redis_server import RedisServer

APP = "tests.reliability.app"
SCHEDULER_ARGS = ("--skip-first-run", "--update-interval=5")
READY_TIMEOUT = 90.0
DRAIN_TIMEOUT = 120.0
STAGGER = 0.7
"""Seconds between the schedulers' starts."""
STOP_MARGIN = 1.0
"""A slot counts as due only if its firing window closed this long before the stop."""

IN_FLIGHT = 1.0
"""Seconds before a kill in which a claim may already be on its way and lose its
reply with the server: a scheduler tick's round trip, with margin."""

LAST_RETRY_AFTER = CLAIM_RETRY_WINDOW / 2 - 0.5
"""A claim retried with doubling back-off for ``CLAIM_RETRY_WINDOW`` makes its last
attempt more than half the window (less the first, short delay: 0.5 s covers it)
after its first. So a claim fails only if Redis is still down then."""

EXTRA_RUNS_PER_RESTART = 1
"""README.md: at most one extra run per schedule per Redis restart without persistence."""

FAILED_SEND_LINE = re.compile(r"Sending firing \S+ of schedule \S+ failed")
SKIP_LINE = re.compile(r"Cannot claim a firing of schedule (\S+) .*firing skipped")


@dataclass(frozen=True)
class Firing:
    """One firing: the schedule's kind (its ``tick`` argument) and its slot."""

    kind: str
    slot: int


@dataclass
class Run:
    """A scenario in progress: what fault injectors act on."""

    scenario: Scenario
    settings: app.Settings
    group: ProcessGroup
    dedup_server: RedisServer
    stable_server: RedisServer
    proxy: LatencyProxy | None
    rng: random.Random
    schedulers: list[ManagedProcess] = field(default_factory=list)
    workers: list[ManagedProcess] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)
    lossy_restarts: list[float] = field(default_factory=list)
    killed_schedulers: dict[int, float] = field(default_factory=dict)
    """Pid of each SIGKILLed scheduler -> when it was killed."""
    faults: Counter[str] = field(default_factory=Counter)
    _spawned: Counter[str] = field(default_factory=Counter)

    # ------------------------------------------------------------- processes

    def _name(self, role: str, index: int) -> str:
        base = f"{role}-{index}"
        self._spawned[base] += 1
        restarts = self._spawned[base] - 1
        return f"{base}-r{restarts}" if restarts else base

    def spawn_scheduler(self, index: int) -> ManagedProcess:
        settings = dataclasses.replace(
            self.settings_for(self.scenario.skews[index]),
            kick_failure_rate=self.scenario.kick_failures[index],
        )
        args = SCHEDULER_ARGS
        if not self.scenario.skip_first_run:
            args = tuple(arg for arg in args if arg != "--skip-first-run")
        process = self.group.scheduler(
            f"{APP}:scheduler",
            *args,
            name=self._name("scheduler", index),
            env=settings.env(),
        )
        if index < len(self.schedulers):
            self.schedulers[index] = process
        else:
            self.schedulers.append(process)
        return process

    def spawn_worker(self, index: int) -> ManagedProcess:
        process = self.group.worker(
            f"{APP}:broker",
            "--receiver",
            "taskiq_dedup:DedupReceiver",
            name=self._name("worker", index),
            env=self.settings.env(),
        )
        if index < len(self.workers):
            self.workers[index] = process
        else:
            self.workers.append(process)
        return process

    def settings_for(self, skew: float) -> app.Settings:
        return dataclasses.replace(self.settings, clock_skew=skew)

    def wait_schedulers_ready(self) -> None:
        wait_until(
            lambda: all(s.scheduler_ready() for s in self.schedulers),
            timeout=READY_TIMEOUT,
            message=f"schedulers not ready\n{self.group.logs()}",
        )

    def kill_scheduler(self, index: int) -> None:
        victim = self.schedulers[index]
        victim.kill()
        self.killed_schedulers[victim.pid] = time.time()
        self.faults["scheduler SIGKILLs"] += 1

    def kill_worker(self, index: int) -> None:
        self.workers[index].kill()
        self.faults["worker SIGKILLs mid-task"] += 1

    # ------------------------------------------------------------------ Redis

    def restart_dedup_redis(self, down_for: float = 0.0) -> None:
        """Kill the dedup server, keep it down ``down_for`` s, start it again."""
        down = time.time()
        self.dedup_server.kill()
        if down_for:
            time.sleep(down_for)
        self.dedup_server.start()
        up = time.time()
        self.outages.append((down, up))
        if not self.scenario.persistent:
            self.lossy_restarts.append(down)

    def stable(self) -> SyncRedis:
        return SyncRedis.from_url(self.settings.stable_url)

    def records(self, start: int = 0) -> list[dict[str, Any]]:
        with self.stable() as client:
            raw = client.lrange(app.executions_key(self.settings.prefix), start, -1)
        return [json.loads(item) for item in raw]

    def busy_worker_pid(self, worker: ManagedProcess) -> int | None:
        """A pid in ``worker``'s process group that is running a task right now."""
        recent = self.records(-400)
        done = {(r["task_id"], r["pid"]) for r in recent if r["phase"] == "done"}
        for record in reversed(recent):
            if record["phase"] != "start" or (record["task_id"], record["pid"]) in done:
                continue
            try:
                if os.getpgid(record["pid"]) == worker.pid:
                    return int(record["pid"])
            except ProcessLookupError:
                continue
        return None

    # ---------------------------------------------------------------- draining

    def drained(self) -> bool:
        """Every message was delivered and acknowledged."""
        stream = app.stream_name(self.settings.prefix)
        group = f"{self.settings.prefix}-workers"
        with self.stable() as client:
            groups = client.xinfo_groups(stream)
            info = next(g for g in groups if _text(g["name"]) == group)
            if info["pending"] == 0 and not info.get("lag"):
                return True
            # taskiq-redis looks for stale pending messages only after it read
            # a new one: give it one.
            message = TaskiqMessage(
                task_id=uuid.uuid4().hex,
                task_name=app.NUDGE_TASK,
                labels={},
                args=[],
                kwargs={},
            )
            client.xadd(stream, {b"data": message.model_dump_json().encode()})
        return False


Inject = Callable[[Run, float], None]


@dataclass(frozen=True)
class Scenario:
    """A fault to inject while three schedulers and the workers run."""

    name: str
    title: str
    inject: Inject
    skews: tuple[float, float, float] = (0.0, 0.0, 0.0)
    kick_failures: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Share of each scheduler's kicks that raise (a replica with a sick broker)."""
    workers: int = 1
    task_seconds: float = 0.0
    proxy: bool = False
    persistent: bool = False
    """The dedup server writes an AOF with ``appendfsync always``."""
    bad_input: bool = False
    """Add ``app``'s bad schedules and a store seeded with corrupt entries."""
    skip_first_run: bool = True
    """``False``: schedulers run without ``--skip-first-run``, so each fires every
    cron at its first tick and then every 60 s from that second."""
    cover_cron: bool = False
    """Run at least until a cron firing was due (a short run may see none)."""
    expect: Callable[[Result], list[str]] = lambda _result: []
    """Scenario-specific checks beyond "nothing unexplained"."""


@dataclass
class Result:
    """Counts of one scenario run, and what could not be explained."""

    scenario: Scenario
    duration: float
    due: int = 0
    due_cron: int = 0
    executed: int = 0
    duplicates: int = 0
    duplicates_explained: int = 0
    missed: int = 0
    missed_explained: int = 0
    claim_skips_logged: int = 0
    scheduler_cancellations: int = 0
    reruns_after_kill: int = 0
    earliest: float = 0.0
    """Least (start of the first execution - slot) over due firings: negative when
    a firing ran before its slot's time (a scheduler whose clock is ahead)."""
    worker_log_counts: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    schedule_ids: dict[str, set[str]] = field(default_factory=dict)
    unexplained_duplicates: list[tuple[Firing, int]] = field(default_factory=list)
    unexplained_missed: list[Firing] = field(default_factory=list)
    wall_time: float = 0.0
    logs: str = ""

    def violations(self) -> list[str]:
        found = []
        if self.due == 0:
            found.append("no firing was due: the run was too short")
        if self.unexplained_duplicates:
            found.append(f"duplicates: {self.unexplained_duplicates}")
        if self.unexplained_missed:
            found.append(f"missed: {self.unexplained_missed}")
        merged = {kind: ids for kind, ids in self.schedule_ids.items() if len(ids) > 1}
        if merged:
            found.append(f"one schedule under several ids: {merged}")
        return found + self.scenario.expect(self)

    def notes(self) -> str:
        parts = [f"{count} {what}" for what, count in sorted(self.faults.items())]
        if self.claim_skips_logged:
            parts.append(f"{self.claim_skips_logged} 'firing skipped' ERROR lines")
        if self.earliest < 0:
            parts.append(f"earliest execution {self.earliest:+.1f} s from its slot")
        if self.reruns_after_kill:
            parts.append(f"{self.reruns_after_kill} firings re-run after a worker died")
        parts.extend(
            f"{self.worker_log_counts[what]} {what}"
            for what in (
                "lease takeovers",
                "duplicates dropped by workers",
                "deliveries deferred by a worker's Redis error",
            )
            if self.worker_log_counts[what]
        )
        return "; ".join(parts) or "-"

    def row(self) -> str:
        dup = str(self.duplicates)
        if self.duplicates_explained:
            dup += f" ({self.duplicates_explained} claims lost in a restart)"
        return (
            f"| {self.scenario.title} | {self.due} | {self.executed} | {dup} | {self.missed} "
            f"| {self.missed_explained} | {self.notes()} |"
        )


TABLE_HEADER = (
    "| fault | firings due | executed | duplicates | missed | missed, explained | notes |\n"
    "|---|---:|---:|---:|---:|---:|---|"
)


def table(results: list[Result]) -> str:
    return "\n".join([TABLE_HEADER, *(result.row() for result in results)])


# ------------------------------------------------------------------- running


def run_scenario(
    scenario: Scenario, *, duration: float, seed: int, log_dir: Path, guard: bool = True
) -> Result:
    """Run ``scenario`` with ``duration`` seconds of faults; always reap everything.

    ``guard=False`` runs it without the guard (see the module docstring).
    """
    began = time.monotonic()
    prefix = f"rel-{scenario.name}-{uuid.uuid4().hex[:8]}"
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if scenario.persistent else []
    dedup_server = RedisServer(extra_args=persistence).start()
    stable_server = RedisServer()
    proxy: LatencyProxy | None = None
    try:
        stable_server.start()
        if scenario.proxy:
            proxy = LatencyProxy(dedup_server.port, seed=seed).start()
        settings = app.Settings(
            dedup_url=proxy.url if proxy else dedup_server.url,
            stable_url=stable_server.url,
            prefix=prefix,
            task_seconds=scenario.task_seconds,
            bad_input=scenario.bad_input,
            guard=guard,
        )
        dynamic_id = asyncio.run(app.register_dynamic(settings))
        if scenario.bad_input:
            asyncio.run(app.seed_bad_store(settings, str(unpickled_sentinel(log_dir, scenario))))
        with ProcessGroup(log_dir / scenario.name) as group:
            run = Run(
                scenario=scenario,
                settings=settings,
                group=group,
                dedup_server=dedup_server,
                stable_server=stable_server,
                proxy=proxy,
                rng=random.Random(f"{seed}:{scenario.name}"),
            )
            for index in range(scenario.workers):
                run.spawn_worker(index)
            if not scenario.skip_first_run:
                _wait_for_second_of_minute(*STARTUP_SECONDS)
            for index in range(len(scenario.skews)):
                # Staggered, as replicas are: their loops tick at different
                # seconds, so an interval bucket is fired at different moments.
                time.sleep(STAGGER if index else 0.0)
                run.spawn_scheduler(index)
            run.wait_schedulers_ready()
            started = time.time() + FIRST_TICK
            marked = _skip_first_run_minute(max(scenario.skews))
            time.sleep(FIRST_TICK)
            until = started + duration
            if scenario.cover_cron:
                until = max(until, marked + 60 + STOP_MARGIN + 2)
            scenario.inject(run, until)
            run.wait_schedulers_ready()
            stopped = time.time()
            for scheduler in run.schedulers:
                scheduler.stop()
            wait_until(run.drained, timeout=DRAIN_TIMEOUT, interval=1.0, message="not drained")
            for worker in run.workers:
                worker.kill()  # drained: nothing left to finish (SIGTERM takes 10 s)
            startup_minute = None if scenario.skip_first_run else math.floor(started / 60) * 60
            result = tally(
                run,
                window=(started, stopped),
                cron_from=marked + 60,
                startup_minute=startup_minute,
            )
            result.schedule_ids.setdefault("dyn", set()).add(dynamic_id)
            result.logs = group.logs()
    finally:
        if proxy is not None:
            proxy.close()
        dedup_server.close()
        stable_server.close()
    result.duration = duration
    result.wall_time = time.monotonic() - began
    return result


def unpickled_sentinel(log_dir: Path, scenario: Scenario) -> Path:
    """The file the bad store's pickle creates if anything unpickles it."""
    return log_dir / f"{scenario.name}-unpickled"


def _skip_first_run_minute(skew: float) -> float:
    """The latest minute ``--skip-first-run`` marked as run (just after start-up):
    crons fire from the next one."""
    return math.floor((time.time() + skew + 1) / 60) * 60


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


STARTUP_SECONDS = (5.0, 35.0)
"""Without ``--skip-first-run``, schedulers start at these seconds of a minute, so
every first tick falls in one minute (and names it) whatever their start-up takes."""


def _wait_for_second_of_minute(low: float, high: float) -> None:
    while not low <= time.time() % 60 <= high:
        time.sleep(0.2)


def due_firings(
    window: tuple[float, float], cron_from: float, startup_minute: float | None = None
) -> set[Firing]:
    """Firings whose whole firing window lay inside ``window``.

    ``startup_minute``: schedulers run without ``--skip-first-run``. Each fired
    every cron at its first tick, naming this minute; later it fires each minute
    M at the second it started, up to 55 s after M (the 5 s look-ahead of
    ``MAX_CLOCK_SKEW`` names the next minute after that).
    """
    start, stop = window
    due: set[Firing] = set()
    if startup_minute is not None:
        for kind in app.CRONS:
            slot = startup_minute
            while slot == startup_minute or slot + 55 <= stop - STOP_MARGIN:
                due.add(Firing(kind, int(slot)))
                slot += 60
        cron_from = math.inf
    for kind, period in (("interval", app.INTERVAL), ("dyn", app.DYNAMIC_INTERVAL)):
        slot = math.ceil(start / period) * period
        while slot + period <= stop - STOP_MARGIN:
            due.add(Firing(kind, slot))
            slot += period
    for kind in app.CRONS:  # "* * * * *": every minute's start
        if cron_from == math.inf:
            break
        slot = math.ceil(max(start, cron_from) / 60) * 60
        while slot + 1 <= stop - STOP_MARGIN:
            due.add(Firing(kind, slot))
            slot += 60
    return due


KINDS = ("interval", "dyn", *app.CRONS)
"""The schedules of ``app``, by the ``kind`` argument their firings carry."""


def firing_window(firing: Firing) -> tuple[float, float]:
    """When the firing's slot is fired: its bucket, or a cron's first second."""
    period = {"interval": app.INTERVAL, "dyn": app.DYNAMIC_INTERVAL}.get(firing.kind, 1)
    return firing.slot, firing.slot + period


def tally(
    run: Run,
    *,
    window: tuple[float, float],
    cron_from: float,
    startup_minute: float | None = None,
) -> Result:
    result = Result(scenario=run.scenario, duration=0.0, faults=run.faults)
    records = run.records()
    done: Counter[Firing] = Counter()
    starts: Counter[Firing] = Counter()
    first_start: dict[Firing, float] = {}
    for record in records:
        firing = Firing(record["kind"], int(record["slot"]))
        (done if record["phase"] == "done" else starts)[firing] += 1
        first_start.setdefault(firing, record["at"])
        result.schedule_ids.setdefault(record["kind"], set()).add(record["schedule_id"])
    due = due_firings(window, cron_from, startup_minute)
    result.due = len(due)
    result.due_cron = sum(1 for f in due if f.kind.startswith("cron"))
    result.executed = sum(1 for f in due if done[f])
    result.earliest = min((first_start[f] - f.slot for f in due if f in first_start), default=0)
    result.reruns_after_kill = sum(1 for f, n in starts.items() if n > done[f] and done[f])

    result.claim_skips_logged = sum(len(SKIP_LINE.findall(s)) for s in _scheduler_logs(run))

    extra_runs_left: Counter[tuple[float, str]] = Counter(
        {(down, kind): EXTRA_RUNS_PER_RESTART for down in run.lossy_restarts for kind in KINDS}
    )
    for firing, count in sorted(done.items(), key=lambda item: item[0].slot):
        if count > 1:
            result.duplicates += count - 1
            explained = _explain_by_restarts(run, firing, count - 1, extra_runs_left)
            result.duplicates_explained += explained
            if explained < count - 1:
                result.unexplained_duplicates.append((firing, count))
    for firing in sorted(due - set(done), key=lambda f: f.slot):
        result.missed += 1
        # A scheduler killed between claim and send excuses nothing: its pending
        # claim lapses and another scheduler takes the firing over.
        if _in_outage(run, firing):
            result.missed_explained += 1
        else:
            result.unexplained_missed.append(firing)

    result.scheduler_cancellations = sum(s.count(" was sent by ") for s in _scheduler_logs(run))
    failed_sends = sum(len(FAILED_SEND_LINE.findall(s)) for s in _scheduler_logs(run))
    if failed_sends:
        result.faults["failed kicks, each released and sent by another replica or later"] += (
            failed_sends
        )
    worker_logs = "\n".join(p.output() for p in run.group.processes if "worker" in p.name)
    result.worker_log_counts["lease takeovers"] = worker_logs.count("whose lease had lapsed")
    result.worker_log_counts["duplicates dropped by workers"] = worker_logs.count("not executed:")
    result.worker_log_counts["deliveries deferred by a worker's Redis error"] = worker_logs.count(
        "Redis error on claim"
    )
    return result


def _scheduler_logs(run: Run) -> list[str]:
    return [p.output() for p in run.group.processes if p.name.startswith("scheduler")]


def _in_outage(run: Run, firing: Firing) -> bool:
    """An outage the claim retries cannot bridge met the firing's window (or the
    retry window after it, while schedulers' loops wait on retrying claims)."""
    begin, end = firing_window(firing)
    return any(
        up - down > LAST_RETRY_AFTER
        and begin <= up + CLAIM_RETRY_WINDOW
        and end >= down - IN_FLIGHT
        for down, up in run.outages
    )


def _explain_by_restarts(
    run: Run, firing: Firing, extra: int, extra_runs_left: Counter[tuple[float, str]]
) -> int:
    """How many of ``extra`` runs of ``firing`` restarts without persistence explain.

    A restart explains a run if it fell in the firing's window (or while a claim
    begun in it was still retrying), and at most ``EXTRA_RUNS_PER_RESTART`` per
    schedule; ``extra_runs_left`` is spent as runs are explained.
    """
    begin, end = firing_window(firing)
    explained = 0
    for down in run.lossy_restarts:
        if explained == extra or not begin - IN_FLIGHT <= down <= end + CLAIM_RETRY_WINDOW:
            continue
        take = min(extra - explained, extra_runs_left[(down, firing.kind)])
        extra_runs_left[(down, firing.kind)] -= take
        explained += take
    return explained


# ----------------------------------------------------------------- injectors


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def _moments(run: Run, until: float, gap: tuple[float, float], tail: float) -> Iterator[None]:
    """Sleep to random moments ``gap`` seconds apart, each at least ``tail`` s
    before ``until`` (the first one made to fit if it can), yielding at each."""
    first = True
    while True:
        room = until - tail - time.time()
        if room < gap[0]:
            return
        moment = time.time() + run.rng.uniform(gap[0], min(gap[1], room) if first else gap[1])
        if moment > until - tail:
            return
        first = False
        _sleep_until(moment)
        yield


def no_fault(run: Run, until: float) -> None:
    _sleep_until(until)


def kill_schedulers(run: Run, until: float) -> None:
    """SIGKILL one scheduler at a random moment, restart it after a random pause."""
    for _ in _moments(run, until, (1.0, 5.0), tail=3.0):
        run.wait_schedulers_ready()  # at most one is ever down
        index = run.rng.randrange(len(run.schedulers))
        run.kill_scheduler(index)
        time.sleep(run.rng.uniform(0.2, 3.0))
        run.spawn_scheduler(index)
    _sleep_until(until)


def kill_workers(run: Run, until: float) -> None:
    """SIGKILL a worker while it runs a task; start a new one after a pause."""
    for _ in _moments(run, until, (1.0, 4.0), tail=3.0):
        index = run.rng.randrange(len(run.workers))
        worker = run.workers[index]
        try:
            wait_until(lambda w=worker: run.busy_worker_pid(w) is not None, timeout=10)
        except TimeoutError:
            continue
        run.kill_worker(index)
        time.sleep(run.rng.uniform(0.5, 2.0))
        run.spawn_worker(index)
    _sleep_until(until)


def restart_redis(run: Run, until: float) -> None:
    """Kill the dedup server and start it again at once, at random moments."""
    for _ in _moments(run, until, (4.0, 15.0), tail=3.0):
        run.restart_dedup_redis()
        run.faults["Redis restarts"] += 1
    _sleep_until(until)


OUTAGE = 10.0
"""Seconds the dedup server stays down: twice ``CLAIM_RETRY_WINDOW``, so a claim
begun just before it gives up inside it (clients made from a URL add no retries)."""


def long_outages(run: Run, until: float) -> None:
    """Keep the dedup server down for ``OUTAGE`` s, then bring it back (empty)."""
    for _ in _moments(run, until, (3.0, 10.0), tail=OUTAGE + 4.0):
        run.restart_dedup_redis(down_for=OUTAGE)
        run.faults[f"outages of {OUTAGE:.0f} s"] += 1
    _sleep_until(until)


def latency_spikes(run: Run, until: float) -> None:
    """Alternate calm and 50-300 ms-per-chunk spikes on the proxied dedup server."""
    assert run.proxy is not None
    while time.time() < until:
        _sleep_until(min(until, time.time() + run.rng.uniform(1.0, 4.0)))
        run.proxy.set_delay(0.05, 0.3)
        run.faults["latency spikes"] += 1
        _sleep_until(min(until, time.time() + run.rng.uniform(2.0, 6.0)))
        run.proxy.clear_delay()


# ------------------------------------------------------------- expectations


def _expect_kills(result: Result) -> list[str]:
    if not result.faults["scheduler SIGKILLs"]:
        return ["no scheduler was killed"]
    return []


def _expect_worker_kills(result: Result) -> list[str]:
    found = []
    if not result.faults["worker SIGKILLs mid-task"]:
        found.append("no worker was killed mid-task")
    elif not result.reruns_after_kill:
        found.append("no firing was re-run after a worker died")
    return found


def _expect_outage(result: Result) -> list[str]:
    if result.missed_explained and not result.claim_skips_logged:
        return ["firings were missed in an outage but no 'firing skipped' line was logged"]
    if not result.claim_skips_logged:
        return ["the outage skipped no firing: was it longer than the retry window?"]
    return []


def _expect_faults(result: Result) -> list[str]:
    return [] if sum(result.faults.values()) else ["the run was too short for any fault"]


def _expect_failed_sends(result: Result) -> list[str]:
    if not any(what.startswith("failed kicks") for what in result.faults):
        return ["no kick failed: was the sick replica sick?"]
    return []


def _expect_cron(result: Result) -> list[str]:
    return [] if result.due_cron else ["no cron firing was due"]


def _expect_late_sends_stopped(result: Result) -> list[str]:
    """The late scheduler's firings were stopped: at a scheduler (its slots are behind
    the cursor) or, if it sent, at a worker."""
    if result.scheduler_cancellations or result.worker_log_counts["duplicates dropped by workers"]:
        return []
    return ["no late firing was stopped at a scheduler or a worker: did the late one fire?"]


BEYOND_SKEW = -15.0
"""A clock behind by more than ``MAX_CLOCK_SKEW``: its ticks name slots the others
sent already, so the schedule's cursor stops them (a late slot past the cursor is
never taken again); a second send, if any, the workers' done keys stop."""


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario("baseline", "none (baseline)", no_fault),
        Scenario(
            "no-skip-first-run",
            "none, schedulers without --skip-first-run",
            no_fault,
            skip_first_run=False,
            expect=_expect_cron,
        ),
        Scenario(
            "scheduler-kill",
            "schedulers SIGKILLed and restarted at random moments",
            kill_schedulers,
            expect=_expect_kills,
        ),
        Scenario(
            "worker-kill",
            "a worker SIGKILLed mid-task (RedisStreamBroker, idle_timeout 5 s, lease 2 s)",
            kill_workers,
            workers=2,
            task_seconds=1.5,
            expect=_expect_worker_kills,
        ),
        Scenario(
            "redis-restart",
            "Redis killed and restarted at once, persistence off",
            restart_redis,
            expect=_expect_faults,
        ),
        Scenario(
            "redis-restart-aof",
            "Redis killed and restarted at once, AOF appendfsync always",
            restart_redis,
            persistent=True,
            expect=_expect_faults,
        ),
        Scenario(
            "redis-outage",
            f"Redis down {OUTAGE:.0f} s (> {CLAIM_RETRY_WINDOW:.0f} s claim retry window)",
            long_outages,
            expect=_expect_outage,
        ),
        Scenario(
            "clock-skew",
            "scheduler clocks skewed 0 / +2 s / -2 s",
            no_fault,
            skews=(0.0, 2.0, -2.0),
            cover_cron=True,
            expect=_expect_cron,
        ),
        Scenario(
            "clock-skew-beyond",
            f"one scheduler clock {BEYOND_SKEW:+.0f} s, beyond MAX_CLOCK_SKEW",
            no_fault,
            skews=(0.0, 0.0, BEYOND_SKEW),
            expect=_expect_late_sends_stopped,
        ),
        Scenario(
            "sick-replica",
            "one replica's kicks always fail, another's half the time",
            no_fault,
            kick_failures=(1.0, 0.5, 0.0),
            expect=_expect_failed_sends,
        ),
        Scenario(
            "latency",
            "Redis latency spikes of 50-300 ms per read (TCP proxy)",
            latency_spikes,
            proxy=True,
            expect=_expect_faults,
        ),
    )
}
