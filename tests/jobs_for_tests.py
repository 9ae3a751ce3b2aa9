"""Handlers for tests that run real worker processes (`jobkit work --import jobs_for_tests`)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import jobkit


@jobkit.handler("noop", replace=True)
async def noop(job: jobkit.Job, db: Any) -> dict[str, Any]:
    return {"i": job.params.get("i")}


@jobkit.handler("sleepy", replace=True)
async def sleepy(job: jobkit.Job, db: Any) -> dict[str, Any]:
    await asyncio.sleep(float(job.params.get("s", 0.5)))
    return {"slept": job.params.get("s", 0.5)}


@jobkit.handler("suicide", replace=True)
async def suicide(job: jobkit.Job, db: Any) -> None:
    """Kills its own worker process, every time (a poison job)."""
    os.kill(os.getpid(), signal.SIGKILL)


@jobkit.handler("started_at", replace=True)
async def started_at(job: jobkit.Job, db: Any) -> dict[str, Any]:
    return {"started": time.time()}


@jobkit.handler("timed", replace=True)
async def timed(job: jobkit.Job, db: Any) -> dict[str, Any]:
    """Sleeps ``s`` seconds; returns its own start and end (wall clock) and its process."""
    start = time.time()
    await asyncio.sleep(float(job.params.get("s", 0.2)))
    return {"start": start, "end": time.time(), "pid": os.getpid()}
