"""Sending concurrent script calls together: one round trip for many decisions.

A call made while nothing is on the wire goes out at once; calls made while one
is on the wire are then sent together in one non-transactional pipeline. Each
call is still its own atomic script, so batching changes only the cost: a
burst of firings due at one moment needs a few round trips and one connection
instead of one of each per decision.

A call's ``timeout`` bounds the whole call, counted from when it is made: the
wait behind a round trip already on the wire, then its own round trip (the
client's reconnect retries included). A call whose time runs out while queued is
never sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline
    from redis.commands.core import AsyncScript

MAX_BATCH = 1000
"""Calls sent in one pipeline at most: bounds one reply's size and latency."""


@dataclass(frozen=True)
class _Call:
    script: AsyncScript
    keys: list[str]
    args: list[Any]
    future: asyncio.Future[Any]
    deadline: float | None
    """The event loop's time by which the caller stops waiting."""


class ScriptPipeline:
    """Runs script calls on ``redis``, pipelining those that arrive together.

    A call made while nothing is on the wire is sent at once, as a plain script
    call. Calls made while one is on the wire wait for it and then go out
    together as one pipeline.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: list[_Call] = []
        self._busy = False
        self._sender: asyncio.Task[None] | None = None
        self._pipe: Pipeline | None = None

    async def run(
        self,
        script: AsyncScript,
        keys: list[str],
        args: list[Any],
        *,
        timeout: float | None = None,
    ) -> Any:  # noqa: ANN401 -- a script's reply
        """Run one script call; return its reply or raise its error.

        :raises TimeoutError: no reply within ``timeout`` seconds of this call.
        """
        if self._busy:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[Any] = loop.create_future()
            deadline = None if timeout is None else loop.time() + timeout
            self._pending.append(_Call(script, keys, args, future, deadline))
            # On timeout the future is cancelled: the sender skips it, or drops its reply.
            return await asyncio.wait_for(future, timeout)
        self._busy = True
        try:
            return await asyncio.wait_for(script(keys=keys, args=args), timeout)
        finally:
            if self._pending:
                self._sender = asyncio.create_task(self._send_pending())
            else:
                self._busy = False

    async def _send_pending(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            while self._pending:
                batch = [call for call in self._pending[:MAX_BATCH] if not call.future.done()]
                del self._pending[:MAX_BATCH]
                if not batch:  # every caller gave up while queued
                    continue
                deadlines = [call.deadline for call in batch if call.deadline is not None]
                try:
                    replies = await asyncio.wait_for(
                        self._send(batch),
                        max(min(deadlines) - loop.time(), 0) if deadlines else None,
                    )
                except Exception as exc:  # handed to every call of the batch
                    self._pipe = None  # a pipeline cut mid-reply is not reused
                    replies = [exc] * len(batch)
                for call, reply in zip(batch, replies, strict=True):
                    if call.future.done():  # its caller was cancelled
                        continue
                    if isinstance(reply, BaseException):
                        call.future.set_exception(reply)
                    else:
                        call.future.set_result(reply)
        finally:
            self._busy = False

    async def _send(self, batch: list[_Call]) -> list[Any]:
        if len(batch) == 1 or not isinstance(self._redis, Redis):
            # One call, or a cluster client (its pipelines run no scripts): plain calls.
            return list(
                await asyncio.gather(
                    *(call.script(keys=call.keys, args=call.args) for call in batch),
                    return_exceptions=True,
                ),
            )
        # One batch is on the wire at a time, so one pipeline is reused: making one
        # copies redis-py's table of reply callbacks, which costs more than a call.
        if self._pipe is None:
            self._pipe = self._redis.pipeline(transaction=False)
        pipe = self._pipe
        for call in batch:
            await call.script(keys=call.keys, args=call.args, client=pipe)
        return list(await pipe.execute(raise_on_error=False))
