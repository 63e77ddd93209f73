"""The canonical spelling of a five-field cron expression: one text per firing set.

``canonical_cron`` expands an expression with ``croniter.expand`` (names become
numbers, Sunday ``7`` becomes ``0``, ``*/1`` and full ranges become ``*``) and
applies cron's day rule: when both day-of-month and day-of-week are restricted a
day matches *either*; when one is ``*`` it matches the other. Day-of-month values
no chosen month has (``30`` in February) are dropped, and so are months in which
no chosen day exists. The result is rendered with numbers, ranges and steps only,
a ``*`` exactly where a field is unrestricted: the spelling that taskiq's loop
(pycron) and ``croniter`` read as the same firing set.

pycron matches neither ``L``, ``W`` nor ``#`` (last day, nearest weekday, nth
weekday): expressions using them never fire under taskiq's scheduler, so they are
rejected here rather than accepted and silently dead.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

from croniter import CroniterBadCronError, croniter

MINUTE, HOUR, DAY, MONTH, WEEKDAY = range(5)
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
"""The most days each month can have (February 29 in leap years)."""
_MIN_STEP_RUN = 3
"""A set of at least this many evenly spaced values is written ``a-b/step``."""


class UnsupportedCronError(ValueError):
    """The expression is valid for croniter but cannot be fired by taskiq's loop."""


def _days_in(month: int) -> int:
    return _DAYS_IN_MONTH[month - 1]


def _values(field: Sequence[int | str], index: int) -> frozenset[int]:
    low, high = _RANGES[index]
    if field == ["*"]:
        return frozenset(range(low, high + 1))
    if any(not isinstance(value, int) for value in field):
        raise UnsupportedCronError("L (last day) is not matched by taskiq's scheduler")
    return frozenset(int(value) for value in field)


def _render(values: frozenset[int], index: int) -> str:
    low, high = _RANGES[index]
    if values == frozenset(range(low, high + 1)):
        return "*"
    ordered = sorted(values)
    steps = {b - a for a, b in itertools.pairwise(ordered)}
    if len(ordered) >= _MIN_STEP_RUN and len(steps) == 1 and steps != {1}:
        return f"{ordered[0]}-{ordered[-1]}/{steps.pop()}"
    runs: list[list[int]] = []
    for value in ordered:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ",".join(
        f"{run[0]}-{run[-1]}" if len(run) >= _MIN_STEP_RUN else ",".join(map(str, run))
        for run in runs
    )


@functools.lru_cache(maxsize=4096)
def canonical_cron(expression: str) -> str:
    """Return the canonical spelling of a valid five-field ``expression``.

    :raises UnsupportedCronError: the expression uses ``L``, ``W`` or ``#``.
    :raises ValueError: croniter cannot expand it.
    """
    try:
        expanded, nth_weekday = croniter.expand(expression)
    except CroniterBadCronError as exc:
        raise ValueError(str(exc)) from exc
    fields = expression.lower().split()
    if nth_weekday or "w" in fields[DAY] or "#" in fields[WEEKDAY]:
        raise UnsupportedCronError(
            "L, W and # (last, nearest and nth weekday) are not matched by taskiq's scheduler",
        )
    values = [_values(field, index) for index, field in enumerate(expanded)]
    months = values[MONTH]
    longest = max(_days_in(month) for month in months)
    days = frozenset(day for day in values[DAY] if day <= longest)
    all_days = frozenset(range(1, longest + 1))
    all_weekdays = frozenset(range(7))
    day_restricted = expanded[DAY] != ["*"] and days != all_days
    weekday_restricted = expanded[WEEKDAY] != ["*"] and values[WEEKDAY] != all_weekdays
    if expanded[DAY] != ["*"] and expanded[WEEKDAY] != ["*"]:
        # Either day rule: a side that matches every day makes every day match,
        # and a side with no possible day contributes nothing.
        if not day_restricted or not weekday_restricted:
            day_restricted = weekday_restricted = False
        elif not days:
            day_restricted = False
    if day_restricted and not weekday_restricted:
        if not days:
            raise ValueError("no chosen month has any of the chosen days")
        months = frozenset(month for month in months if _days_in(month) >= min(days))
    values[DAY] = days if day_restricted else frozenset(range(1, 32))
    values[WEEKDAY] = values[WEEKDAY] if weekday_restricted else all_weekdays
    values[MONTH] = months
    return " ".join(_render(field, index) for index, field in enumerate(values))
