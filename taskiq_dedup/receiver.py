"""``DedupReceiver``: taskiq's receiver, skipping dropped duplicates quietly.

Use it with ``taskiq worker --receiver taskiq_dedup:DedupReceiver app:broker``.
``DedupMiddleware`` never executes a duplicate with taskiq's stock receiver
either; this receiver only removes the stock path's noise: taskiq's WARNING
"skipped setting result" and ``on_error`` hooks called with ``NoResultError``
for every dropped duplicate.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from taskiq.exceptions import NoResultError
from taskiq.receiver import Receiver
from taskiq.result import TaskiqResult

from taskiq_dedup.middleware import DedupMiddleware
from taskiq_dedup.skip import is_skip, settle

if TYPE_CHECKING:
    from collections.abc import Callable

    from taskiq.acks import AckController
    from taskiq.message import TaskiqMessage

logger = logging.getLogger(__name__)


class DedupReceiver(Receiver):
    """A ``Receiver`` that returns at once for messages the middleware dropped.

    The message is acknowledged or not by its ``ack_type`` label as the
    middleware set it; no result is written (the error is ``NoResultError``)
    and ``post_execute`` hooks still see the skip.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 -- Receiver's
        super().__init__(*args, **kwargs)
        if not any(isinstance(m, DedupMiddleware) for m in self.broker.middlewares):
            logger.warning(
                "DedupReceiver is used with a broker without DedupMiddleware: "
                "nothing is deduplicated",
            )

    async def run_task(
        self,
        target: Callable[..., Any],
        message: TaskiqMessage,
        ack_controller: AckController | None = None,
    ) -> TaskiqResult[Any]:
        """Run ``target``, or settle a skipped message without running anything."""
        if not is_skip(message):
            return await super().run_task(target, message, ack_controller)
        ack = None
        if ack_controller is not None and ack_controller.is_ackable:
            ack = ack_controller.ack
        await settle(message, self.broker, ack)
        return TaskiqResult(
            is_err=False,
            return_value=None,
            execution_time=0.0,
            labels=message.labels,
            error=NoResultError(),
        )
