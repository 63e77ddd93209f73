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

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio.cluster import ClusterNode, RedisCluster

    from taskiq_dedup.replication import Call


_ROUTING_ERRORS = (MovedError, AskError, TryAgainError, ClusterDownError, NoScriptError)
"""Replies that say where or when to send a call, not what the script decided."""

_ALONE = object()
"""Marks a call to send again alone through the Cluster client."""


async def send_per_node(cluster: RedisCluster, calls: Sequence[Call]) -> list[Any]:
    """Run ``calls`` grouped by node; one reply (or error) per call, in order."""
    await cluster.initialize()  # a no-op once the slot table is known
    groups: dict[str, tuple[ClusterNode, list[int]]] = {}
    for index, (_, keys, _) in enumerate(calls):
        node = cluster.get_node_from_key(keys[0])
        assert node is not None  # noqa: S101 -- a primary is found for every covered slot
        groups.setdefault(node.name, (node, []))[1].append(index)
    replies: list[Any] = [None] * len(calls)
    await asyncio.gather(
        *(
            _send_to_node(cluster, node, calls, indices, replies)
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
) -> None:
    try:
        results = await _pipeline(node, [calls[i] for i in indices])
        if any(isinstance(result, NoScriptError) for result in results):
            for script in {id(calls[i][0]): calls[i][0] for i in indices}.values():
                await node.execute_command("SCRIPT LOAD", script.script)
            results = await _pipeline(node, [calls[i] for i in indices])
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


def _is_script_error(error: BaseException) -> bool:
    """Tell whether ``error`` is the script's own: the same wherever it is sent again."""
    return isinstance(error, ResponseError) and not isinstance(error, _ROUTING_ERRORS)


async def _pipeline(node: ClusterNode, calls: Sequence[Call]) -> list[Any]:
    commands = [
        PipelineCommand(position, "EVALSHA", script.sha, len(keys), *keys, *args)
        for position, (script, keys, args) in enumerate(calls)
    ]
    await node.execute_pipeline(commands)
    return [command.result for command in commands]
