"""The canonical spelling of a cron (``canonical_cron``), written out by hand.

The spelling is hashed into every cron schedule's id (``identity``): a spelling that
changes between releases changes the ids kept in Redis, so each form is pinned here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskiq_dedup.crons import UnsupportedCronError, canonical_cron


@pytest.fixture(autouse=True)
def cold_cache() -> Iterator[None]:
    """Every case computes its spelling: none is answered from an earlier test's cache."""
    canonical_cron.cache_clear()
    yield
    canonical_cron.cache_clear()


@pytest.mark.parametrize(
    ("expression", "canonical"),
    [
        ("*/5 * * * *", "0-55/5 * * * *"),  # an even step of three or more values
        ("*/2 * * * *", "0-58/2 * * * *"),
        ("0,20,40 * * * *", "0-40/20 * * * *"),  # exactly three values is a step
        ("0,30 * * * *", "0,30 * * * *"),  # two are listed
        ("1,2,3,4,5 * * * *", "1-5 * * * *"),  # consecutive values are a range
        ("1-3,7 * * * *", "1-3,7 * * * *"),
        ("1,2,7 * * * *", "1,2,7 * * * *"),  # a run of two is listed
        ("0 9 * * MON-FRI", "0 9 * * 1-5"),
        ("0 0 * * 7", "0 0 * * 0"),  # Sunday as 7
        ("0 0 31 4,5 *", "0 0 31 5 *"),  # April has no 31st
        ("0 0 29 2 *", "0 0 29 2 *"),  # leap years have it
        ("0 0 1-31 * *", "0 0 * * *"),  # every day is unrestricted
    ],
)
def test_canonical_spellings(expression: str, canonical: str) -> None:
    assert canonical_cron(expression) == canonical


def test_a_day_no_chosen_month_has_is_named() -> None:
    with pytest.raises(ValueError, match="no chosen month has any of the chosen days"):
        canonical_cron("0 0 30 2 *")


def test_last_day_of_month_is_refused_naming_l() -> None:
    with pytest.raises(UnsupportedCronError, match=r"^L \(last day\) is not matched by taskiq"):
        canonical_cron("0 0 L * *")
