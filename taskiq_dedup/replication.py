"""Writes acknowledged by replicas: ``WAIT`` after a script, on the same connection.

Redis replicates asynchronously: a claim acknowledged by the primary and not yet
copied to a replica is lost if the primary dies and a replica is promoted (a
Sentinel or Cluster failover), and a second scheduler may then send the firing
again. With ``min_replicas`` set, every script call is sent in a pipeline
followed by ``WAIT min_replicas timeout`` on the **same connection** (``WAIT``
counts the writes of the connection it runs on), and a call whose replicas did
not acknowledge in time raises ``ReplicasMissingError``, which callers handle as
Redis being unavailable. Heartbeats (lease extensions) are not waited for.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import NoScriptError, RedisError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline
    from redis.commands.core import AsyncScript

logger = logging.getLogger("taskiq_dedup.replication")

REPLICA_ACK_TIMEOUT_MS = 300
"""Milliseconds ``WAIT`` gives the replicas to acknowledge a write. A connected
replica acknowledges within a millisecond or two (it sends ``REPLCONF ACK`` as
soon as it applies the stream); 300 ms covers a busy one, and stays under the
shortest time any call may take (``claims.MIN_CALL_TIMEOUT``, 0.5 s), so a
replica shortfall is reported as such rather than as the caller's own timeout."""


class ReplicasMissingError(RedisError):
    """Fewer replicas than ``min_replicas`` acknowledged a write in time."""


Call = tuple["AsyncScript", "Sequence[str]", "Sequence[Any]"]


async def run_replicated(
    redis: Redis, pipe: Pipeline, calls: Sequence[Call], min_replicas: int
) -> list[Any]:
    """Run ``calls`` then ``WAIT`` in ``pipe`` (one connection of ``redis``); one reply per call.

    A reply is the script's result or its error; when fewer than
    ``min_replicas`` replicas acknowledged, every reply is a
    ``ReplicasMissingError`` (the writes were made on the primary but may be
    lost at a failover). Scripts the server does not know yet are loaded and
    the whole pipeline sent again (every script is safe to repeat).
    """
    replies = await _send(pipe, calls, min_replicas)
    if any(isinstance(reply, NoScriptError) for reply in replies):
        for script in {id(call[0]): call[0] for call in calls}.values():
            script.sha = await redis.script_load(script.script)
        replies = await _send(pipe, calls, min_replicas)
    error = shortfall(replies[-1], min_replicas, len(calls))
    if error is not None:
        return [error] * len(calls)
    return replies[:-1]


def shortfall(acked: object, min_replicas: int, writes: int) -> BaseException | None:
    """Return the error for ``writes`` calls if ``WAIT``'s reply ``acked`` is short, else None.

    A short count is logged at WARNING; an error reply of ``WAIT`` itself is
    returned as it is.
    """
    if isinstance(acked, BaseException):
        return acked
    if int(cast("int", acked)) >= min_replicas:
        return None
    logger.warning(
        "Only %s of min_replicas=%d replica(s) acknowledged %d write(s) within %d ms; "
        "handled as Redis being unavailable",
        acked,
        min_replicas,
        writes,
        REPLICA_ACK_TIMEOUT_MS,
    )
    return ReplicasMissingError(
        f"{acked} of {min_replicas} replica(s) acknowledged within {REPLICA_ACK_TIMEOUT_MS} ms",
    )


async def _send(pipe: Pipeline, calls: Sequence[Call], min_replicas: int) -> list[Any]:
    for script, keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    pipe.execute_command("WAIT", min_replicas, REPLICA_ACK_TIMEOUT_MS)
    return list(await pipe.execute(raise_on_error=False))
