"""Reaching Redis, starting the app's sources, and fetching their merged schedules.

Children are started as ``taskiq scheduler`` starts them (a decorator source
collects its labels at start-up), fetched one by one so a failing child is
named, and merged with the composite source's own rules (``merge.Merger``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskiq_dedup.cli.errors import CommandError
from taskiq_dedup.clock import utc_now
from taskiq_dedup.connection import redacted
from taskiq_dedup.deadlines import OPERATION_DEADLINE, REDIS_ERRORS, within
from taskiq_dedup.merge import MergedSchedule, Merger
from taskiq_dedup.source import DEFAULT_ONE_OFF_GRACE, CompositeScheduleSource

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from redis.asyncio import Redis
    from taskiq import ScheduledTask, ScheduleSource

    from taskiq_dedup.cli.loader import App


@dataclass
class View:
    """The merged schedules of one composite source, or of the unwrapped sources."""

    composite: CompositeScheduleSource | None
    sources: list[ScheduleSource]
    schedules: dict[str, MergedSchedule] = field(default_factory=dict)
    failed: list[tuple[ScheduleSource, str]] = field(default_factory=list)
    """Children whose ``get_schedules`` raised, with the error."""


def redis_target(redis: Redis) -> str:
    """Where ``redis`` connects, as a URL with any password masked."""
    kwargs = redis.connection_pool.connection_kwargs
    user, password = kwargs.get("username"), kwargs.get("password")
    auth = f"{user or ''}:{password}@" if password else ""
    if kwargs.get("path"):
        return redacted(f"unix://{auth}{kwargs['path']}?db={kwargs.get('db', 0)}")
    host, port, db = kwargs.get("host", "localhost"), kwargs.get("port", 6379), kwargs.get("db", 0)
    return redacted(f"redis://{auth}{host}:{port}/{db}")


def _scrub(text: str, redis: Redis) -> str:
    password = redis.connection_pool.connection_kwargs.get("password")
    return text.replace(str(password), "***") if password else text


async def reach(redis: Redis) -> None:
    """Ping ``redis``; raise ``CommandError`` naming it (password masked) if it fails."""
    try:
        await within(OPERATION_DEADLINE, redis.ping)
    except REDIS_ERRORS as exc:
        raise CommandError(
            detail=f"Redis at {redis_target(redis)} is unreachable: "
            + _scrub(f"{type(exc).__name__}: {exc}", redis),
        ) from exc


def describe_source(source: ScheduleSource) -> str:
    """Name a child source for an operator: ``label``, or its class and key prefix."""
    if type(source).__name__ == "LabelScheduleSource":
        return "label"
    prefix = getattr(source, "_prefix", None) or getattr(source, "prefix", None)
    name = type(source).__name__
    return f"{name}({prefix})" if isinstance(prefix, str) else name


async def _fetch(view: View) -> None:
    fetched: list[tuple[ScheduleSource, Sequence[ScheduledTask]]] = []
    for source in view.sources:
        try:
            tasks = await source.get_schedules()
        except Exception as exc:  # a broken child is a finding, not a crash
            view.failed.append((source, f"{type(exc).__name__}: {exc}"))
            tasks = []
        fetched.append((source, tasks))
    grace = view.composite.one_off_grace if view.composite else DEFAULT_ONE_OFF_GRACE
    clock = view.composite.clock if view.composite else utc_now
    view.schedules = Merger(grace).merge(fetched, clock()).schedules


@contextlib.asynccontextmanager
async def opened(app: App, *, need_composite: bool = True) -> AsyncIterator[list[View]]:
    """Reach each composite's Redis, start every source, yield the fetched views.

    Everything started is shut down on exit (a composite closes the client it made).
    """
    composites = app.need_composite() if need_composite else app.composites
    for composite in composites:
        await reach(composite.redis)
    views = [View(c, list(c.sources)) for c in composites]
    if app.unwrapped:
        views.append(View(None, list(app.unwrapped)))
    started: list[ScheduleSource] = []
    try:
        for view in views:
            for source in view.sources:
                try:
                    await source.startup()
                except Exception as exc:
                    raise CommandError(
                        detail=f"{describe_source(source)} failed to start: "
                        f"{type(exc).__name__}: {exc}",
                    ) from exc
                started.append(source)
        for view in views:
            await _fetch(view)
        yield views
    finally:
        for source in reversed(started):
            if all(source not in c.sources for c in composites):
                with contextlib.suppress(Exception):
                    await source.shutdown()
        for composite in composites:  # stops its children, closes the client it made
            await composite.shutdown()
