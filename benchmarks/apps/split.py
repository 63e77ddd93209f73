"""The calibration arm of the scheduler benchmarks: N schedulers, partitioned in advance.

``SplitSource`` wraps a schedule source and cancels, in ``pre_send``, every
firing this process does not own: schedule ``args[0] % of == index``. No claim,
no Redis call, no coordination; each firing is sent once only because the
partition is fixed before the run. It measures what running N stock ``taskiq``
schedulers of the same schedules costs on this machine (each still evaluates
every schedule at every tick, and they share the CPUs): the floor under any
coordinated arm with N processes, as ``bare`` is the floor with one.
"""

from __future__ import annotations

from typing import Any

from taskiq import ScheduledTask, ScheduleSource
from taskiq.exceptions import ScheduledTaskCancelledError


class SplitSource(ScheduleSource):
    """Delegates to ``child``; lets through only the firings of partition ``index`` of ``of``."""

    def __init__(self, child: ScheduleSource, index: int, of: int) -> None:
        self.child = child
        self.index = index
        self.of = of

    async def startup(self) -> None:
        """Start the child."""
        await self.child.startup()

    async def shutdown(self) -> None:
        """Stop the child."""
        await self.child.shutdown()

    async def get_schedules(self) -> list[ScheduledTask]:
        """The child's schedules, all of them (every process evaluates every schedule)."""
        return await self.child.get_schedules()

    def pre_send(self, task: ScheduledTask) -> Any:  # noqa: ANN401 -- taskiq's signature
        """Cancel a firing of another partition, as a lost claim would be cancelled."""
        if int(task.args[0]) % self.of != self.index:
            raise ScheduledTaskCancelledError
        return self.child.pre_send(task)

    def post_send(self, task: ScheduledTask) -> Any:  # noqa: ANN401 -- taskiq's signature
        """The child's."""
        return self.child.post_send(task)
