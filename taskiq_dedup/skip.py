"""Dropping a delivery without running it: the skip task and how a skip settles.

taskiq's ``pre_execute`` cannot cancel a message, but it can rewrite it. The
middleware rewrites a message it will not execute into a call of the skip task
below, with the reason in a label and an ``ack_type`` label for the receiver:

- ``duplicate`` / ``echo`` / ``overlap``: acknowledged at once (``when_received``);
- ``deferred`` / ``unavailable``: the message must come back later, so it is
  not acknowledged on receipt (``manual``); ``settle`` decides how it comes back.

Every delivery is settled within a bounded time (``settle``): a
``RedisStreamBroker`` entry is left pending and its broker hands it out again
after ``idle_timeout`` (it holds no prefetch slot meanwhile). Any other broker
gets the original message pushed back onto its queue after ``REQUEUE_DELAY``,
and the delivery is then acknowledged if the broker acks (an AMQP broker's
unacknowledged delivery would hold one of its prefetch slots until the
channel closes). If the push fails, an ackable delivery stays unacknowledged
(the broker still has it) and a non-ackable one is lost, logged at ERROR.

With taskiq's stock receiver (0.13), the task function was looked up *before*
``pre_execute``, but the dependency graph is looked up by the rewritten name: the
skip task's dependency raises ``NoResultError`` before the original function is
called, so nothing runs and no result is written. taskiq logs one WARNING
("skipped setting result"). If a later taskiq looks the function up after
``pre_execute``, the skip task itself runs - with the same outcome.
``DedupReceiver`` recognises the rewritten message and skips without that
WARNING and without calling ``on_error`` hooks.

The skip task is registered on each broker ``DedupMiddleware`` is attached to
(``register``), so ``LabelScheduleSource`` sees a task of its own broker and a
receiver knows it before it meets a rewritten message.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Annotated, Any, Literal

from taskiq import Context, TaskiqDepends
from taskiq.acks import AcknowledgeType
from taskiq.exceptions import NoResultError
from taskiq.receiver import Receiver

from taskiq_dedup.broker_checks import STREAM_BROKERS, is_kind

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from taskiq.abc.broker import AsyncBroker
    from taskiq.message import TaskiqMessage

logger = logging.getLogger(__name__)

SKIP_TASK_NAME = "taskiq_dedup:skip"
SKIP_LABEL = "dedup_skip"
"""Why the message is not executed (a ``Reason``)."""
TASK_LABEL = "dedup_task"
"""The original task name, to put the message back as it was."""
ACK_LABEL = "dedup_ack_type"
"""The original ``ack_type`` label, if the message had one."""

Reason = Literal["duplicate", "deferred", "echo", "unavailable", "overlap"]
_LEFT_UNACKED: frozenset[str] = frozenset({"deferred", "unavailable"})

REQUEUE_DELAY = 1.0
"""Seconds before a message that must come back (Redis unavailable, or a copy
of a running holder's own task) is pushed back onto its queue: a worker that
keeps receiving it makes one attempt per second, not a busy loop, and the
delivery is settled a second after it arrived."""


def is_skip(message: TaskiqMessage) -> bool:
    """Whether ``message`` was rewritten by ``skip`` (or sent as an echo)."""
    return message.task_name == SKIP_TASK_NAME and SKIP_LABEL in message.labels


def skip(message: TaskiqMessage, reason: Reason) -> TaskiqMessage:
    """Return ``message`` rewritten to call the skip task; ``message`` is kept."""
    labels = dict(message.labels)
    if "ack_type" in labels:
        labels[ACK_LABEL] = labels["ack_type"]
    labels["ack_type"] = (
        AcknowledgeType.MANUAL if reason in _LEFT_UNACKED else AcknowledgeType.WHEN_RECEIVED
    ).value
    labels[SKIP_LABEL] = reason
    labels[TASK_LABEL] = message.task_name
    update: dict[str, Any] = {"task_name": SKIP_TASK_NAME, "labels": labels}
    if reason == "echo":
        update |= {"args": [], "kwargs": {}}
    return message.model_copy(update=update)


def restore(message: TaskiqMessage) -> TaskiqMessage:
    """Return the message ``skip`` was given (labels, name and payload)."""
    labels = dict(message.labels)
    task_name = str(labels.pop(TASK_LABEL, message.task_name))
    labels.pop(SKIP_LABEL, None)
    labels.pop("ack_type", None)
    if ACK_LABEL in labels:
        labels["ack_type"] = labels.pop(ACK_LABEL)
    return message.model_copy(update={"task_name": task_name, "labels": labels})


def redelivers_pending(broker: AsyncBroker) -> bool:
    """Whether ``broker`` hands an unacknowledged delivery out again by itself.

    ``RedisStreamBroker`` does (``XAUTOCLAIM`` after ``idle_timeout``), and an
    unacknowledged entry there costs nothing while it waits. taskiq 0.13 has no
    negative acknowledgement, so other ackable brokers (AMQP) only redeliver
    when the channel closes.
    """
    return is_kind(broker, STREAM_BROKERS)


async def settle(
    message: TaskiqMessage,
    broker: AsyncBroker,
    ack: Callable[[], Awaitable[None]] | None,
) -> None:
    """Settle a skip that was not acknowledged on receipt (see the module docstring).

    ``ack`` acknowledges the delivery (``None`` on a broker without acks).
    """
    if message.labels.get(SKIP_LABEL) not in _LEFT_UNACKED:
        return
    if ack is not None and redelivers_pending(broker):
        return
    original = restore(message)
    await asyncio.sleep(REQUEUE_DELAY)
    try:
        await broker.kick(broker.formatter.dumps(original))
    except Exception:
        logger.exception(
            "Could not requeue task %s (%s): %s",
            original.task_id,
            original.task_name,
            "its delivery stays unacknowledged" if ack is not None else "the message is lost",
        )
        return
    if ack is not None:
        await ack()


async def _settle_then_stop(context: Annotated[Context, TaskiqDepends()]) -> None:
    """Dependency of the skip task: settle, then stop before any function runs."""
    await settle(context.message, context.broker, context.ack if context.is_ackable else None)
    raise NoResultError


async def skipped(
    *_args: Any,  # noqa: ANN401 -- whatever the dropped task took
    _settled: Annotated[None, TaskiqDepends(_settle_then_stop)],
    **_kwargs: Any,  # noqa: ANN401
) -> None:
    """Stand-in for a task that is not executed (never returns a result)."""
    raise NoResultError


def register(broker: AsyncBroker) -> None:
    """Register the skip task on ``broker`` and on a receiver it already made.

    A receiver prepares the tasks it knows when it is made; ``InMemoryBroker``
    makes its receiver before middlewares are attached, so it is told here.
    """
    if SKIP_TASK_NAME not in broker.local_task_registry:
        broker.register_task(skipped, task_name=SKIP_TASK_NAME)
    receiver = getattr(broker, "receiver", None)
    if isinstance(receiver, Receiver) and SKIP_TASK_NAME not in receiver.known_tasks:
        receiver._prepare_task(SKIP_TASK_NAME, skipped)
