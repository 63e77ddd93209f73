"""Importing ``APP:scheduler`` (and the task modules) the way ``taskiq scheduler`` does."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskiq import ScheduleSource, TaskiqScheduler
from taskiq.cli.utils import import_object, import_tasks

from taskiq_dedup.cli.errors import CommandError
from taskiq_dedup.middleware import DedupMiddleware
from taskiq_dedup.source import CompositeScheduleSource

if TYPE_CHECKING:
    from collections.abc import Sequence


@dataclass
class App:
    """A loaded scheduler, its composite sources and the sources it does not wrap."""

    spec: str
    scheduler: TaskiqScheduler
    composites: list[CompositeScheduleSource] = field(default_factory=list)
    unwrapped: list[ScheduleSource] = field(default_factory=list)

    @property
    def middlewares(self) -> list[DedupMiddleware]:
        """The broker's ``DedupMiddleware`` instances."""
        return [m for m in self.scheduler.broker.middlewares if isinstance(m, DedupMiddleware)]

    def need_composite(self) -> list[CompositeScheduleSource]:
        """Return the composite sources, or raise naming the scheduler that has none."""
        if not self.composites:
            raise CommandError(
                detail=f"{self.spec} has no CompositeScheduleSource among its sources "
                f"({', '.join(type(s).__name__ for s in self.unwrapped) or 'none'}); "
                "`taskiq dedup doctor` explains the fix",
            )
        return self.composites


def load(
    spec: str,
    modules: Sequence[str] = (),
    *,
    app_dir: str | None = None,
    fs_discover: bool = False,
    tasks_pattern: Sequence[str] = ("**/tasks.py",),
) -> App:
    """Import ``spec`` (``module:variable``, or a function returning the scheduler).

    Then import the task modules, as ``taskiq scheduler`` does, so decorator
    schedules of tasks in them are seen.

    :raises CommandError: ``spec`` cannot be imported or is not a ``TaskiqScheduler``.
    """
    try:
        scheduler = import_object(spec, app_dir=app_dir)
    except ValueError as exc:
        raise CommandError(detail=f"{spec!r} is not in module:variable form") from exc
    except (ImportError, AttributeError) as exc:
        raise CommandError(
            detail=f"cannot import the scheduler {spec!r}: {type(exc).__name__}: {exc}",
        ) from exc
    except Exception as exc:
        raise CommandError(
            detail=f"importing {spec!r} failed: {type(exc).__name__}: {exc}",
        ) from exc
    if inspect.isfunction(scheduler):
        scheduler = scheduler()
    if not isinstance(scheduler, TaskiqScheduler):
        raise CommandError(
            detail=f"{spec!r} is a {type(scheduler).__name__}, not a TaskiqScheduler",
        )
    scheduler.broker.is_scheduler_process = True
    import_tasks(list(modules), list(tasks_pattern), fs_discover)
    app = App(spec, scheduler)
    for source in scheduler.sources:
        if isinstance(source, CompositeScheduleSource):
            app.composites.append(source)
        else:
            app.unwrapped.append(source)
    return app
