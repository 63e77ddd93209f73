"""``doctor``'s checks of the app's configuration: sources, copies, middleware, broker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskiq_dedup import broker_checks
from taskiq_dedup.cli.findings import Finding
from taskiq_dedup.cli.session import describe_source
from taskiq_dedup.merge import can_delete
from taskiq_dedup.middleware import LEASE_TTL, DedupMiddleware
from taskiq_dedup.source import _pickles

if TYPE_CHECKING:
    from taskiq_dedup.cli.loader import App
    from taskiq_dedup.cli.session import View


def sources(app: App) -> list[Finding]:
    """Every scheduler source not wrapped in a ``CompositeScheduleSource``."""
    if not app.scheduler.sources:
        return [
            Finding(
                "error",
                "no-sources",
                f"{app.spec} has no schedule sources: nothing fires",
                "TaskiqScheduler(broker, sources=[CompositeScheduleSource([...], redis_url=..., "
                "prefix=...)])",
            ),
        ]
    return [
        Finding(
            "error",
            "unwrapped-source",
            f"{describe_source(source)} is a source of {app.spec} itself, not a child of a "
            "CompositeScheduleSource: every scheduler sends its schedules, and every copy",
            "move it into CompositeScheduleSource([...], redis_url=..., prefix=...) and give "
            "the scheduler only that composite",
        )
        for source in app.unwrapped
    ]


def copies(view: View) -> list[Finding]:
    """Schedules held more than once, and children whose fetch failed."""
    found = [
        Finding(
            "error",
            "source-fails",
            f"{describe_source(source)} cannot list its schedules ({error}): none of them fire",
            "if it holds pickled schedules but reads JSON, run `taskiq dedup migrate`; "
            "otherwise fix the source's connection or data",
        )
        for source, error in view.failed
    ]
    for merged in view.schedules.values():
        if len(merged.origins) < 2:  # noqa: PLR2004 -- one copy is no copy
            continue
        where = ", ".join(
            f"{describe_source(o.source)}:{o.task.schedule_id}" for o in merged.origins
        )
        held = (
            f"schedule {merged.public_id} of task {merged.task.task_name!r} is held "
            f"{len(merged.origins)} times ({where})"
        )
        if view.composite is None:
            found.append(
                Finding(
                    "error",
                    "copies",
                    f"{held}: unwrapped, each copy fires",
                    "wrap the sources in a CompositeScheduleSource (it merges copies), then "
                    "`taskiq dedup prune --apply`",
                ),
            )
        else:
            found.append(
                Finding(
                    "warning",
                    "copies",
                    f"{held}: merged into one firing, but each start-up that registers it "
                    "directly in a store adds another",
                    "`taskiq dedup prune --apply`; register through the composite source "
                    "(its add_schedule writes a schedule once)",
                ),
            )
    return found


def foreign(app: App, view: View) -> list[Finding]:
    """Schedules of tasks this app does not have: another environment's, or a module not named."""
    known = app.scheduler.broker.get_all_tasks()
    return [
        Finding(
            "warning",
            "foreign-schedule",
            f"schedule {merged.public_id} is for task {merged.task.task_name!r}, which {app.spec} "
            "does not declare: another environment's schedule in this one's store, or a "
            "module not named on the command line",
            "name the module declaring the task after APP:scheduler; if it belongs to "
            "another environment, give each environment its own store prefix and "
            "CompositeScheduleSource prefix",
        )
        for merged in view.schedules.values()
        if merged.task.task_name not in known
    ]


def pickling(view: View) -> list[Finding]:
    """Find stores that pickle: the composite source refuses to add to them."""
    return [
        Finding(
            "warning",
            "pickling-store",
            f"{describe_source(source)} pickles schedules: CompositeScheduleSource refuses "
            "to add to it, and reading it unpickles whatever is in Redis",
            "`taskiq dedup migrate APP:scheduler --apply`, then create the source with "
            "serializer=JSONSerializer()",
        )
        for source in view.sources
        if can_delete(source) and _pickles(source)
    ]


def middleware(app: App) -> list[Finding]:
    """``DedupMiddleware`` missing from the broker, or not last in its list."""
    broker = app.scheduler.broker
    guards = app.middlewares
    name = type(broker).__name__
    if not guards:
        return [
            Finding(
                "error",
                "middleware-missing",
                f"{name} has no DedupMiddleware: a redelivered message, or the second copy "
                "of a firing taken over from a sender that died, runs again",
                "broker.with_middlewares(DedupMiddleware(redis_url=..., prefix=<the "
                "composite's prefix>))",
            ),
        ]
    if broker.middlewares[-1] is not guards[-1]:
        return [
            Finding(
                "warning",
                "middleware-order",
                f"DedupMiddleware is not last among {name}'s middlewares "
                f"({', '.join(type(m).__name__ for m in broker.middlewares)})",
                "add it last: broker.with_middlewares(SimpleRetryMiddleware(), "
                "DedupMiddleware(...))",
            ),
        ]
    return []


def broker(app: App) -> list[Finding]:
    """Find a broker whose idle workers die, or whose redelivery beats the worker lease."""
    found: list[Finding] = []
    target = app.scheduler.broker
    timeout = broker_checks.blocking_pop_timeout(target)
    if timeout is not None:
        found.append(
            Finding(
                "error",
                "idle-workers-die",
                f"{type(target).__name__} has a {timeout:g} s socket timeout: an idle worker's "
                f"BRPOP fails every {timeout:g} s and taskiq restarts it, losing what it held",
                "create the broker with socket_timeout=None",
            ),
        )
    idle_timeout = getattr(target, "idle_timeout", None)
    if broker_checks.is_kind(target, broker_checks.STREAM_BROKERS) and isinstance(
        idle_timeout, int
    ):
        lease_ms = max(
            (g.lease_ms for g in app.middlewares if isinstance(g, DedupMiddleware)),
            default=int(LEASE_TTL * 1000),
        )
        if idle_timeout < 2 * lease_ms:
            found.append(
                Finding(
                    "error",
                    "stream-idle-timeout",
                    f"{type(target).__name__} redelivers after idle_timeout={idle_timeout} ms, "
                    f"under twice the worker lease ({lease_ms} ms): a running task's message "
                    "is handed to another worker",
                    f"idle_timeout of at least {2 * lease_ms} ms (the default is 600000)",
                ),
            )
    return found
