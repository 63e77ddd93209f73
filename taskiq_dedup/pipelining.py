"""Sending concurrent script calls together: one round trip for many decisions.

A call made while nothing is on the wire goes out at once; calls made while one
is on the wire are then sent together in one non-transactional pipeline. Each
call is still its own atomic script, so batching changes only the cost: a
burst of firings due at one moment needs a few round trips and one connection
instead of one of each per decision.

With ``min_replicas`` set, every call, alone or batched, goes out in a pipeline
followed by one ``WAIT`` (``replication``): one round trip still, and one
``WAIT`` covers the whole batch, since it counts every earlier write of its
connection.

A call's ``timeout`` bounds the whole call, counted from when it is made: the
wait behind a round trip already on the wire, then its own round trip (the
client's reconnect retries included). A call whose time runs out while queued is
never sent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from taskiq_dedup import script_batches
from taskiq_dedup.cluster_batches import send_per_node
from taskiq_dedup.replication import Call, run_replicated

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio.client import Pipeline
    from redis.asyncio.cluster import RedisCluster
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
    together as one pipeline (one per node on a Cluster client). ``min_replicas``:
    each call also waits for that many replicas. ``window``: seconds a call
    made soon after a send waits to be batched with others (0: never waits).
    ``same_turn``: a call made while nothing is on the wire is not sent at once but
    after the event loop's current turn, with every call made in that turn: the
    decisions of one scheduler tick (all made before the tick's first await) then
    share one round trip instead of two (the first alone, the rest after it). A
    call made alone is held for no time, only until the loop's next turn.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        min_replicas: int = 0,
        window: float = 0.0,
        same_turn: bool = False,
    ) -> None:
        self._redis = redis
        self.min_replicas = min_replicas
        self.window = window
        self.same_turn = same_turn
        self._pending: list[_Call] = []
        self._busy = False
        self._sender: asyncio.Task[None] | None = None
        self._pipe: Pipeline | None = None
        self._batch_forms: dict[tuple[str, ...], AsyncScript] = {}
        self._next_send = 0.0
        """The event loop's time before which a new call waits to be batched."""
        self._expiry: asyncio.TimerHandle | None = None
        """The timer failing queued calls at their deadline (``_expire``)."""
        self._expiry_when = 0.0
        """When ``_expiry`` fires (the event loop's time)."""
        self._gathering = False
        """Whether calls are concurrent: a send carried several since the last call
        made after a quiet spell. Then a new call waits for the window. A caller
        making one call after another (each sent alone) is never held."""

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
        loop = asyncio.get_running_loop()
        if self.same_turn and not self._busy:
            # sent by a task that starts after the callbacks ready now: the calls
            # the other tasks of this turn make join this one
            self._busy = True
            self._start_sender()
        if self._busy or (self._gathering and loop.time() < self._next_send):
            future: asyncio.Future[Any] = loop.create_future()
            deadline = None if timeout is None else loop.time() + timeout
            self._pending.append(_Call(script, keys, args, future, deadline))
            if not self._busy:  # the first call of a window: send the batch at its end
                self._busy = True
                loop.call_at(self._next_send, self._start_sender)
            if deadline is not None:
                self._expire_at(deadline)
            # Past its deadline the future fails (``_expire``): the sender skips it, or
            # drops its reply. One timer for all the queued calls, not one each.
            return await future
        self._busy = True
        self._next_send = loop.time() + self.window
        self._gathering = False  # a call after a quiet spell, or one at a time
        try:
            return await asyncio.wait_for(self._one(script, keys, args), timeout)
        finally:
            if self._pending:
                self._start_sender()
            else:
                self._busy = False

    async def run_many(
        self,
        calls: Sequence[tuple[AsyncScript, list[str], list[Any]]],
        *,
        timeout: float | None = None,
    ) -> list[Any]:
        """Run several script calls together; return each one's reply or error, in order.

        The calls join whatever is queued (or start a send) and go out in as few
        round trips as ``MAX_BATCH`` allows: one caller, one await, for a whole
        group of decisions. An error is returned in its call's place, not raised.

        :raises TimeoutError: no reply within ``timeout`` seconds of this call.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        futures: list[asyncio.Future[Any]] = []
        for script, keys, args in calls:
            future: asyncio.Future[Any] = loop.create_future()
            self._pending.append(_Call(script, keys, args, future, deadline))
            futures.append(future)
        if not self._busy:
            self._busy = True
            self._start_sender()
        # On timeout the futures are cancelled: the sender skips them, or drops their replies.
        return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout)

    def _expire_at(self, deadline: float) -> None:
        """Make sure ``_expire`` runs by ``deadline`` (the timer is kept for the earliest)."""
        if self._expiry is None or deadline < self._expiry_when:
            if self._expiry is not None:
                self._expiry.cancel()
            self._expiry_when = deadline
            self._expiry = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        """Fail the queued calls whose deadline has passed; wait for the next one."""
        self._expiry = None
        now = asyncio.get_running_loop().time()
        following: float | None = None
        for call in self._pending:
            if call.deadline is None or call.future.done():
                continue
            if call.deadline <= now:
                call.future.set_exception(asyncio.TimeoutError())  # as wait_for raised it
            elif following is None or call.deadline < following:
                following = call.deadline
        if following is not None:
            self._expire_at(following)

    def _start_sender(self) -> None:
        self._sender = asyncio.create_task(self._send_pending())

    async def _one(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:  # noqa: ANN401 -- a script's reply
        if not self.min_replicas:
            return await script(keys=keys, args=args)
        client: object = self._redis  # typed Redis, but a Cluster client also comes here
        try:
            if isinstance(client, Redis):
                (reply,) = await run_replicated(
                    client, self._reused_pipe(), [(script, keys, args)], self.min_replicas
                )
            else:
                calls = [(script, keys, args)]
                cluster = cast("RedisCluster", client)
                (reply,) = await send_per_node(cluster, calls, self.min_replicas)
        except BaseException:
            self._pipe = None  # a pipeline cut mid-reply is not reused
            raise
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def _reused_pipe(self) -> Pipeline:
        # One call or batch is on the wire at a time, so one pipeline is reused:
        # making one copies redis-py's table of reply callbacks, which costs more
        # than a call.
        if self._pipe is None:
            self._pipe = self._redis.pipeline(transaction=False)
        return self._pipe

    async def _send_pending(self) -> None:
        batch: list[_Call] = []
        try:
            loop = asyncio.get_running_loop()
            while self._pending:
                if self._gathering and loop.time() < self._next_send:  # gather until its end
                    await asyncio.sleep(self._next_send - loop.time())
                batch = [call for call in self._pending[:MAX_BATCH] if not call.future.done()]
                del self._pending[:MAX_BATCH]
                if not batch:  # every caller gave up while queued
                    continue
                deadlines = [call.deadline for call in batch if call.deadline is not None]
                self._next_send = loop.time() + self.window
                self._gathering = self._gathering or len(batch) > 1
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
        except BaseException:
            # The sender itself ended (cancelled at loop teardown): the calls on the wire
            # would wait for a reply nobody reads. Each learns it as a connection error,
            # which its caller retries within its deadline like any other.
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(
                        RedisConnectionError("the sender of queued Redis calls stopped")
                    )
            raise
        finally:
            self._busy = False

    async def _send(self, batch: list[_Call]) -> list[Any]:
        client: object = self._redis  # typed Redis, but a Cluster client also comes here
        if not isinstance(client, Redis):
            # A Cluster client's pipelines run no scripts: one pipeline per node instead.
            calls = [(call.script, call.keys, call.args) for call in batch]
            return await send_per_node(cast("RedisCluster", client), calls, self.min_replicas)
        call: Call = (batch[0].script, batch[0].keys, batch[0].args)
        if len(batch) > 1:
            form, numbers = self._batch_form([call.script for call in batch])
            keys, args = script_batches.pack(
                [(numbers[c.script.sha], c.keys, c.args) for c in batch]
            )
            call = (form, keys, args)
        if self.min_replicas:
            (reply,) = await run_replicated(
                self._redis, self._reused_pipe(), [call], self.min_replicas
            )
        else:
            try:
                reply = await call[0](keys=call[1], args=call[2])
            except Exception as exc:  # the call's reply, as a pipeline gives it
                reply = exc
        return script_batches.unpack(reply, len(batch)) if len(batch) > 1 else [reply]

    def _batch_form(self, scripts: list[AsyncScript]) -> tuple[AsyncScript, dict[str, int]]:
        """Return the batch form of ``scripts`` and each one's number in it (by SHA)."""
        distinct = {script.sha: script for script in scripts}
        shas = tuple(sorted(distinct))
        form = self._batch_forms.get(shas)
        if form is None:
            bodies = [_text(distinct[sha].script) for sha in shas]
            form = self._redis.register_script(script_batches.batch_lua(bodies))
            self._batch_forms[shas] = form
        return form, {sha: number for number, sha in enumerate(shas, 1)}


def _text(body: str | bytes | memoryview) -> str:
    return body if isinstance(body, str) else bytes(body).decode()
