"""Script calls batched per Cluster node: one pipeline per primary, not one call per decision.

redis-py's Cluster pipelines refuse ``EVALSHA``, and sending each call alone
costs a round trip and the Cluster client's routing work per decision (a tenth
of one node's claims per second, measured by ``benchmarks.scaling``). Every
script here touches one key, so calls made together are grouped by the primary
that owns their key's slot and sent to it as one pipeline over one of its
connections. A call that meets anything but its script's own reply (a
``MOVED``/``ASK`` after a resharding or failover, a dropped connection) is sent
again alone through the Cluster client, which follows redirects, refreshes its
slot table and retries; every script is safe to repeat.

With ``min_replicas``, each node's pipeline ends with one ``WAIT`` on its
connection (``replication``). A call sent again through the Cluster client
cannot be followed by a ``WAIT`` on its connection, so with ``min_replicas``
its reply is a ``ReplicasMissingError`` (handled as Redis being unavailable):
that happens only to calls made across a resharding or failover.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from redis.asyncio.cluster import PipelineCommand
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from taskiq_dedup.replication import REPLICA_ACK_TIMEOUT_MS, ReplicasMissingError, shortfall

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio.cluster import ClusterNode, RedisCluster

    from taskiq_dedup.replication import Call


_ROUTING_ERRORS = (MovedError, AskError, TryAgainError, ClusterDownError, NoScriptError)
"""Replies that say where or when to send a call, not what the script decided."""

_ALONE = object()
"""Marks a call to send again alone through the Cluster client."""


async def send_per_node(
    cluster: RedisCluster, calls: Sequence[Call], min_replicas: int = 0
) -> list[Any]:
    """Run ``calls`` grouped by node; one reply (or error) per call, in order.

    ``min_replicas``: each node's pipeline ends with ``WAIT``; a short count
    makes every reply of that node a ``ReplicasMissingError``.
    """
    await cluster.initialize()  # a no-op once the slot table is known
    groups: dict[str, tuple[ClusterNode, list[int]]] = {}
    for index, (_, keys, _) in enumerate(calls):
        node = cluster.get_node_from_key(keys[0])
        assert node is not None  # noqa: S101 -- a primary is found for every covered slot
        groups.setdefault(node.name, (node, []))[1].append(index)
    replies: list[Any] = [None] * len(calls)
    await asyncio.gather(
        *(
            _send_to_node(cluster, node, calls, indices, replies, min_replicas=min_replicas)
            for node, indices in groups.values()
        ),
    )
    return replies


async def _send_to_node(
    cluster: RedisCluster,
    node: ClusterNode,
    calls: Sequence[Call],
    indices: list[int],
    replies: list[Any],
    *,
    min_replicas: int,
) -> None:
    mine = [calls[i] for i in indices]
    try:
        results = await _pipeline(node, mine, min_replicas)
        if any(isinstance(result, NoScriptError) for result in results):
            for script in {id(call[0]): call[0] for call in mine}.values():
                await node.execute_command("SCRIPT LOAD", script.script)
            results = await _pipeline(node, mine, min_replicas)
        if min_replicas:
            error = shortfall(results.pop(), min_replicas, len(mine))
            if error is not None:
                results = [error] * len(mine)
    except (RedisError, OSError):
        results = [_ALONE] * len(indices)  # the node failed: each call goes alone
    for index, result in zip(indices, results, strict=True):
        replies[index] = result
        if result is _ALONE or (isinstance(result, BaseException) and not _is_script_error(result)):
            script, keys, args = calls[index]
            try:
                replies[index] = await script(keys=list(keys), args=list(args), client=cluster)
            except Exception as exc:  # handed to its caller, as a pipeline's errors are
                replies[index] = exc
            else:
                if min_replicas:  # no WAIT can follow it on its connection
                    replies[index] = ReplicasMissingError(
                        "sent again after a redirect: replicas not confirmed",
                    )


def _is_script_error(error: BaseException) -> bool:
    """Tell whether ``error`` is the script's own: the same wherever it is sent again."""
    return isinstance(error, ResponseError) and not isinstance(error, _ROUTING_ERRORS)


async def _pipeline(node: ClusterNode, calls: Sequence[Call], min_replicas: int) -> list[Any]:
    commands = [
        PipelineCommand(position, "EVALSHA", script.sha, len(keys), *keys, *args)
        for position, (script, keys, args) in enumerate(calls)
    ]
    if min_replicas:
        commands.append(
            PipelineCommand(len(calls), "WAIT", min_replicas, REPLICA_ACK_TIMEOUT_MS),
        )
    await node.execute_pipeline(commands)
    return [command.result for command in commands]
