"""What the routes share: the app's :class:`ApiState` (its runner and in-process worker)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import Depends, HTTPException, Request

from ..alerts import AlertHook
from ..config import Settings
from ..runner import Runner
from ..worker import Worker


@dataclass
class ApiState:
    settings: Settings
    runner: Runner | None = None
    run_worker: bool = False
    concurrency: int | None = None
    worker: Worker | None = None
    worker_task: asyncio.Task[Any] | None = None
    alerts: AlertHook | None = None

    def get_runner(self) -> Runner:
        """The open runner, or 503 before the app has started."""
        if self.runner is None:
            raise HTTPException(503, "jobkit is not started yet")
        return self.runner


def api_state(request: Request) -> ApiState:
    return cast(ApiState, request.app.state.jobkit)


#: A route's parameter of this type receives the app's state (no OpenAPI parameter).
State = Annotated[ApiState, Depends(api_state)]
