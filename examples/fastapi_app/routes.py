"""The endpoints: schedules (list, add, delete, firing history), recent executions, health."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from redis.exceptions import RedisError

from examples.fastapi_app import executions
from examples.fastapi_app.lifespan import AppState
from examples.fastapi_app.schemas import (
    ExecutionOut,
    FiringOut,
    HealthOut,
    ScheduleIn,
    ScheduleOut,
)
from taskiq_dedup.clock import utc_now
from taskiq_dedup.connection import redacted
from taskiq_dedup.ledger import history
from taskiq_dedup.skip import SKIP_TASK_NAME

router = APIRouter()


def get_state(request: Request) -> AppState:
    """Return the objects the lifespan started."""
    state: AppState = request.app.state.example
    return state


State = Annotated[AppState, Depends(get_state)]


@router.get("/schedules")
async def list_schedules(state: State) -> list[ScheduleOut]:
    """Every schedule once, under its public id, with the copies it merges."""
    merged = await state.composite.refresh()
    now = utc_now()
    return sorted(
        (ScheduleOut.of(entry, now) for entry in merged.values()),
        key=lambda out: (out.task, out.id),
    )


@router.post("/schedules", status_code=status.HTTP_201_CREATED)
async def add_schedule(body: ScheduleIn, state: State) -> ScheduleOut:
    """Add a cron, interval or one-off schedule; adding it again changes nothing.

    A bad cron, timezone or interval is a 422 naming it. taskiq-redis lists a
    one-off only from its minute on: until then it has no ``origins``.
    """
    known = sorted(name for name in state.broker.get_all_tasks() if name != SKIP_TASK_NAME)
    if body.task not in known:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"unknown task {body.task!r}; known tasks: {', '.join(known)}",
        )
    task = body.to_scheduled_task()
    await state.composite.add_schedule(task)  # sets task.schedule_id
    now = utc_now()
    merged = (await state.composite.refresh()).get(task.schedule_id)
    return ScheduleOut.of(merged, now) if merged else ScheduleOut.unlisted(task, now)


@router.delete("/schedules/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_schedule(schedule_id: str, state: State) -> Response:
    """Delete every copy of a schedule, by its public id, content id or a copy's id.

    404 if no source has it; 409 if it is declared in a task decorator.
    """
    merged = await state.composite.refresh()
    listed = schedule_id in merged or any(
        entry.answers_to(schedule_id) for entry in merged.values()
    )
    if not listed and not await _stored_unlisted(state, schedule_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no schedule {schedule_id!r}")
    await state.composite.delete_schedule(schedule_id)  # ScheduleInCodeError: 409
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/schedules/{schedule_id}/history")
async def schedule_history(schedule_id: str, state: State) -> list[FiringOut]:
    """List the schedule's last firings, oldest first: who sent each, who ran it.

    Takes the public, content or a copy's id; a deleted schedule's ledger is still
    served by its content id until it expires. 404 if nothing is known of the id.
    """
    merged = await state.composite.refresh()
    entry = merged.get(schedule_id) or next(
        (e for e in merged.values() if e.answers_to(schedule_id)), None
    )
    content_id = entry.schedule_id if entry else schedule_id
    # Scheduler entries are under the content id; workers key runs on the id the
    # messages carry: the public one (a user-set id when there is one).
    run_id = entry.public_id if entry else schedule_id
    firings = await history(state.redis, state.keys, content_id, run_id=run_id)
    if entry is None and not firings:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no schedule {schedule_id!r}")
    return [FiringOut.of(firing) for firing in firings]


async def _stored_unlisted(state: AppState, schedule_id: str) -> bool:
    """Whether Redis holds a schedule its source does not list yet (a future one-off).

    Reads ``ListRedisScheduleSource``'s data key (taskiq-redis 1.2 layout:
    ``<prefix>:data:<schedule id>``): no source API tells an unknown id apart.
    """
    return bool(await state.redis.exists(f"{state.schedules_prefix}:data:{schedule_id}"))


@router.get("/executions")
async def list_executions(
    state: State,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ExecutionOut]:
    """List the latest task executions, newest first."""
    key = executions.executions_key(state.keys)
    return [ExecutionOut.of(item) for item in await executions.recent(state.redis, key, limit)]


@router.get("/health")
async def health(state: State, response: Response) -> HealthOut:
    """Whether Redis answers (503 if not) and which prefix this process uses."""
    settings = state.settings
    try:
        await state.redis.ping()
    except (RedisError, OSError) as exc:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        redis, ok = f"unreachable ({type(exc).__name__})", False
    else:
        redis, ok = "reachable", True
    return HealthOut(
        status="ok" if ok else "unavailable",
        redis=redis,
        redis_url=redacted(settings.redis_url),
        prefix=settings.prefix,
        dedup=not settings.dedup_disabled,
        embedded_scheduler=settings.embedded_scheduler,
        source_stats=dataclasses.asdict(state.composite.stats),
    )
