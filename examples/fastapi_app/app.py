"""The FastAPI app: ``uvicorn examples.fastapi_app.app:app --workers 4``."""

from __future__ import annotations

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app

from examples.fastapi_app.lifespan import lifespan
from examples.fastapi_app.routes import router
from taskiq_dedup import InvalidScheduleError, ScheduleInCodeError, TaskiqDedupError

_STATUS: dict[type[TaskiqDedupError], int] = {
    InvalidScheduleError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    ScheduleInCodeError: status.HTTP_409_CONFLICT,
}


async def _dedup_error(_request: Request, exc: Exception) -> JSONResponse:
    """Answer a schedule the package rejects with its message, which names the problem."""
    code = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
    return JSONResponse({"detail": str(exc)}, status_code=code)


def create_app() -> FastAPI:
    """Build the app; the broker and sources come from ``tkq`` (the environment)."""
    app = FastAPI(
        title="taskiq-dedup example",
        description="Schedules that fire once however many web workers and schedulers run.",
        lifespan=lifespan,
    )
    app.include_router(router)
    # The composite's, the middleware's and taskiq's own counters (docs/METRICS.md).
    app.mount("/metrics", make_asgi_app())
    for error in _STATUS:
        app.add_exception_handler(error, _dedup_error)
    return app


app = create_app()
