"""Dropping a delivery without running it: the skip task and how a skip settles.

taskiq's ``pre_execute`` cannot cancel a message, but it can rewrite it. The
middleware rewrites a message it will not execute into a call of the skip task
below, with the reason in a label and an ``ack_type`` label for the receiver:

- ``duplicate`` / ``echo``: acknowledged at once (``when_received``);
- ``deferred`` / ``unavailable``: left unacknowledged (``manual``), so an
  acking broker delivers it again later.

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

if TYPE_CHECKING:
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

Reason = Literal["duplicate", "deferred", "echo", "unavailable"]
_LEFT_UNACKED: frozenset[str] = frozenset({"deferred", "unavailable"})

REQUEUE_DELAY = 1.0
"""Seconds before a fail-closed message from a non-acking broker is pushed
back: a worker that keeps receiving it while Redis is down makes one attempt
(and one ERROR line) per second, not a busy loop."""


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


async def settle(message: TaskiqMessage, broker: AsyncBroker, *, ackable: bool) -> None:
    """Do what a skip needs beyond (not) acknowledging it.

    A fail-closed message (``unavailable``) on an acking broker waits, unacked,
    for redelivery. A broker without acknowledgement (``ListQueueBroker``) has
    already handed over its only copy, so it is pushed back onto the queue.
    """
    if message.labels.get(SKIP_LABEL) != "unavailable" or ackable:
        return
    original = restore(message)
    await asyncio.sleep(REQUEUE_DELAY)
    try:
        await broker.kick(broker.formatter.dumps(original))
    except Exception:
        logger.exception(
            "Could not requeue task %s (%s) after a Redis error: the message is lost",
            original.task_id,
            original.task_name,
        )


async def _settle_then_stop(context: Annotated[Context, TaskiqDepends()]) -> None:
    """Dependency of the skip task: settle, then stop before any function runs."""
    await settle(context.message, context.broker, ackable=context.is_ackable)
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
