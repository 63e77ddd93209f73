"""``taskiq dedup migrate``: rewrite a taskiq-redis store's pickled schedules as JSON.

A dry run lists the keys holding pickles without reading them. ``--apply``
unpickles each (the operator asked for it: pickle runs code, so only on a Redis
you trust), validates it as a ``ScheduledTask`` and replaces it by the bytes
``JSONSerializer`` writes, with one compare-and-set script per key, so a value
changed meanwhile is left alone and reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskiq import ScheduledTask
from taskiq.serializers import JSONSerializer, PickleSerializer

from taskiq_dedup.cli.output import Result, Table
from taskiq_dedup.cli.session import describe_source
from taskiq_dedup.cli.stores import Store, store_of

if TYPE_CHECKING:
    import argparse

    from taskiq_dedup.cli.loader import App

HELP = "rewrite taskiq-redis stores' pickled schedules as JSON (dry run unless --apply)"

PICKLE_MARK = b"\x80"
"""First byte of every pickle of protocol 2 or later (taskiq's ``PickleSerializer``)."""

REWRITE_SCRIPT = """
-- KEYS[1] = a stored schedule's key
-- ARGV[1] = the value read (a pickle), ARGV[2] = its JSON form
-- returns 1 if rewritten, 0 if the value changed since it was read
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--apply`` rewrites; without it nothing is read or changed."""
    parser.add_argument("--apply", action="store_true", help="rewrite (default: dry run)")


async def _migrate(store: Store, *, apply: bool) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    redis = store.client()
    rewrite = redis.register_script(REWRITE_SCRIPT)
    try:
        async for key in redis.scan_iter(match=store.pattern, count=500):
            value = await redis.get(key)
            if not isinstance(value, bytes) or not value.startswith(PICKLE_MARK):
                continue
            row: dict[str, object] = {
                "store": describe_source(store.source),
                "key": key.decode("utf-8", "replace"),
                "task": None,
                "outcome": "would rewrite",
            }
            rows.append(row)
            if not apply:
                continue
            try:
                task = ScheduledTask.model_validate(PickleSerializer().loadb(value))
            except Exception as exc:  # a broken entry is reported, the rest migrate
                row["outcome"] = f"left: not a schedule ({type(exc).__name__}: {exc})"
                continue
            row["task"] = task.task_name
            data = JSONSerializer().dumpb(task.model_dump(mode="json"))
            done = await rewrite(keys=[key], args=[value, data])
            row["outcome"] = "rewritten" if done else "left: changed while migrating"
    finally:
        await redis.aclose()
        await store.pool.disconnect()
    return rows


async def run(app: App, args: argparse.Namespace) -> Result:
    """Find every store among the app's sources; list or rewrite its pickled entries."""
    sources = [*(s for c in app.composites for s in c.sources), *app.unwrapped]
    stores = [store for store in map(store_of, sources) if store is not None]
    rows: list[dict[str, object]] = []
    for store in stores:
        rows.extend(await _migrate(store, apply=bool(args.apply)))
    table = Table(
        "pickled schedules",
        ["store", "key", "task", "outcome"],
        [[str(r["store"]), str(r["key"]), str(r["task"] or "-"), str(r["outcome"])] for r in rows],
    )
    summary = f"{len(rows)} pickled schedule(s) in {len(stores)} store(s)" + (
        "" if args.apply or not rows else "; run again with --apply to rewrite them"
    )
    if args.apply and rows:
        summary += "; now create these sources with serializer=JSONSerializer()"
    return Result({"apply": bool(args.apply), "entries": rows}, [table] if rows else [], [summary])
