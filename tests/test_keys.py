import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskiq_dedup.errors import ConfigurationError, TaskiqDedupError
from taskiq_dedup.keys import MAX_PREFIX_LENGTH, KeySpace, key_part, validate_prefix


def test_keys_are_prefixed_and_readable() -> None:
    keys = KeySpace("taskiq-dedup:prod")
    assert keys.firings("abc123") == "taskiq-dedup:prod:fire:abc123"
    assert keys.firing("abc123", 60) == "taskiq-dedup:prod:run:abc123:60"
    assert keys.add_lock("abc123") == "taskiq-dedup:prod:add:abc123"
    assert keys.running("abc123") == "taskiq-dedup:prod:busy:abc123"
    assert keys.job_lease("digest@app.jobs:digest") == (
        "taskiq-dedup:prod:job:#" + hashlib.sha256(b"digest@app.jobs:digest").hexdigest()
    )
    assert keys.pattern() == "taskiq-dedup:prod:*"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        " ",
        "a b",
        "pre*",
        "pre?",
        "pre[x]",
        ":lead",
        "trail:",
        "a::b",
        "x" * 129,
        "é",
        "a\nb",
    ],
)
def test_bad_prefixes_are_rejected_naming_the_prefix(bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        validate_prefix(bad)
    assert isinstance(info.value, TaskiqDedupError)
    assert "prefix" in str(info.value)


def test_unsafe_parts_are_hashed() -> None:
    assert key_part("plain_id-1.2") == "plain_id-1.2"
    for unsafe in ["a:b", "*", "x" * 65, "名前", "a b", "{tag}"]:
        part = key_part(unsafe)
        assert part.startswith("#")
        assert len(part) == 65


@given(task_name=st.text(max_size=200), value=st.text(max_size=10_000))
def test_no_input_leaves_the_prefix(task_name: str, value: str) -> None:
    keys = KeySpace("env:a")
    for key in (
        keys.idempotency(task_name, value),
        keys.firings(value),
        keys.firing(task_name, 2),
        keys.job_lease(value),
        keys.running(value),
    ):
        assert key.startswith("env:a:")
        assert key.count(":") <= 4
        assert not set("*?[] \n") & set(key.removeprefix("env:a:"))
        assert len(key) < 200


def test_idempotency_keys_differ_by_task_and_value() -> None:
    keys = KeySpace("p")
    assert keys.idempotency("t1", "k") != keys.idempotency("t2", "k")
    assert keys.idempotency("t", "k1") != keys.idempotency("t", "k2")


def test_idempotency_key_format_is_stable() -> None:
    """Keys outlive a deploy: a changed format would forget every live key on upgrade."""
    assert KeySpace("p").idempotency("charge", "order-42") == (
        "p:idem:#b5f2154d7eb2a3b72095ca9c423b7b91ff9549a4c74d7a1f42ddb3a6502de111"
    )


def test_lone_surrogates_are_hashed_not_refused() -> None:
    """Task names and label values decoded from bytes may hold them."""
    part = key_part("bad\udcff")
    assert part == "#" + hashlib.sha256("bad\udcff".encode("utf-8", "surrogatepass")).hexdigest()
    assert KeySpace("p").idempotency("t\ud800", "k\udcff").startswith("p:idem:#")


def test_longest_prefix_is_accepted() -> None:
    assert validate_prefix("x" * MAX_PREFIX_LENGTH) == "x" * MAX_PREFIX_LENGTH


@pytest.mark.parametrize("bad", [None, 123, b"bytes"])
def test_a_prefix_that_is_no_string_is_rejected(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="non-empty string"):
        validate_prefix(bad)  # type: ignore[arg-type]


def test_a_malformed_prefix_is_named_with_the_rule() -> None:
    with pytest.raises(ConfigurationError) as info:
        validate_prefix("a b")
    assert "'a b'" in str(info.value)
    assert "{ } in colon-separated words (no spaces, wildcards or empty words)" in str(info.value)
