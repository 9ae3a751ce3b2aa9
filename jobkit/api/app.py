"""The app: its lifespan (runner, in-process worker, alerts), middleware, error handlers and
routers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from ..alerts import enable_alerts
from ..config import Settings
from ..dispatcher import Handler
from ..runner import Runner
from ..runner import open as open_runner
from ..urls import redact_url
from . import health, jobs, upload
from .bodies import BodyLimit
from .errors import install_error_handlers
from .models import EnqueueIn
from .state import ApiState

log = logging.getLogger("jobkit")


def create_app(settings: Settings | None = None, *, runner: Runner | None = None,
               run_worker: bool | None = None, concurrency: int | None = None,
               handlers: dict[str, Handler] | None = None) -> FastAPI:
    """The jobkit HTTP API.

    Args:
        settings: default ``Settings.from_env()`` (or the runner's).
        runner: use this open runner (the caller closes it); otherwise one is opened at
            startup and closed at shutdown.
        run_worker: run a :class:`jobkit.Worker` inside the app's lifespan (default: the
            ``worker_enabled`` setting).
        concurrency: that worker's concurrency (default: the settings').
        handlers: the dispatch table for a runner opened here.
    """
    settings = settings or (runner.settings if runner is not None else Settings.from_env())
    state = ApiState(settings=settings, runner=runner,
                     run_worker=settings.worker_enabled if run_worker is None else run_worker,
                     concurrency=concurrency)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = state.runner is None
        if own:
            state.runner = await open_runner(settings=settings, handlers=handlers)
        r = state.runner
        assert r is not None
        state.alerts = enable_alerts(r)
        if state.run_worker:
            state.worker = r.worker(concurrency=state.concurrency, handle_signals=False)
            state.worker_task = asyncio.create_task(state.worker.run(), name="jobkit-api-worker")
        log.info("jobkit API on %s (worker %s, dev endpoints %s, alerts %s)",
                 redact_url(r.engine.url), "on" if state.run_worker else "off",
                 "on" if settings.dev_endpoints else "off", "on" if state.alerts else "off")
        try:
            yield
        finally:
            if state.worker is not None and state.worker_task is not None:
                state.worker.stop()
                try:
                    stats = await state.worker_task
                    log.info("jobkit API worker stopped: %s", stats.in_words())
                except Exception:  # noqa: BLE001 - shut down the rest anyway
                    log.exception("jobkit API worker ended with an error")
            if state.alerts is not None:
                await state.alerts.aclose()
            if own:
                await r.close()
                state.runner = None

    # Swagger UI and ReDoc from files shipped with fastapi-offline: /docs works offline.
    app = FastAPIOffline(
        title="jobkit", version=_version(), lifespan=lifespan,
        description=("A persistent job queue. Upload a video (`POST /upload`) to queue a "
                     "`cut_analysis` job; workers (or `POST /jobs/process` in development) "
                     "run it; `GET /jobs/{id}` shows its state."),
    )
    app.state.jobkit = state
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # POST /jobs reads its body itself (strict JSON); its schema is still a component.
        schema = plain_openapi()
        schema.setdefault("components", {}).setdefault("schemas", {})["EnqueueIn"] = \
            EnqueueIn.model_json_schema(ref_template="#/components/schemas/{model}")
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    install_error_handlers(app)
    # In this order: the paths of /openapi.json and /docs keep the order of the
    # upload → process → get flow, then the other job routes, then operations.
    app.include_router(upload.router)
    app.include_router(jobs.router)
    app.include_router(health.router)
    return app


def _version() -> str:
    from ..version import __version__

    return __version__
