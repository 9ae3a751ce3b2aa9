"""The job routes: process the next one (development), get, enqueue, list, explain, retry,
cancel, and the periodic jobs."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from .. import stats
from ..errors import InvalidParams, InvalidTransition, UnknownJobType
from ..shapes import enqueued_dict, job_dict, schedule_dict
from .bodies import read_json, validated
from .models import (
    EnqueueIn,
    EnqueueOut,
    JobList,
    JobOut,
    ProcessOut,
    ScheduleList,
    error_responses,
)
from .state import State

router = APIRouter()


# -- the upload → process → get flow (with POST /upload) ----------------------------------
@router.post("/jobs/process", response_model=ProcessOut, response_model_exclude_unset=True,
             tags=["videos"], responses=error_responses(404, 503),
             summary="Process the next job now (development only: JOBKIT_DEV_ENDPOINTS=true)")
async def process_next(state: State) -> dict[str, Any]:
    if not state.settings.dev_endpoints:
        raise HTTPException(404, "POST /jobs/process is a development endpoint; "
                                 "enable it with JOBKIT_DEV_ENDPOINTS=true")
    return dict(await state.get_runner().step())


@router.get("/jobs/{job_id}", response_model=JobOut, tags=["videos"],
            responses=error_responses(404), summary="A job's state")
async def get_job(job_id: str, state: State) -> dict[str, Any]:
    return job_dict(await state.get_runner().get_job(job_id))


# -- jobs ------------------------------------------------------------------------------
_ENQUEUE_BODY = {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/EnqueueIn"}}}}


@router.post("/jobs", status_code=201, response_model=EnqueueOut, tags=["jobs"],
             responses={**error_responses(413, 415, 422),
                        200: {"model": EnqueueOut,
                              "description": "deduplicated: the unfinished job that holds "
                                             "the dedupe_key"}},
             summary="Enqueue a job of any registered type",
             openapi_extra={"requestBody": _ENQUEUE_BODY})
async def enqueue(request: Request, state: State) -> JSONResponse:
    r = state.get_runner()
    body = validated(EnqueueIn, await read_json(request, state.settings.max_body_bytes))
    try:
        job = await r.enqueue(body.job_type, body.params, priority=body.priority,
                              run_at=body.run_at, delay=body.delay,
                              max_retries=body.max_retries, timeout=body.timeout,
                              dedupe_key=body.dedupe_key, allow_unknown=body.allow_unknown,
                              queue=body.queue, after=body.after or None)
    except UnknownJobType as exc:
        raise HTTPException(422, f"unknown job_type {exc.job_type!r}; registered: "
                                 f"{', '.join(exc.known) or '(none)'}. Send "
                                 '"allow_unknown": true if only your workers have it') \
            from None
    except (InvalidParams, InvalidTransition) as exc:
        raise HTTPException(422, str(exc)) from None
    out = EnqueueOut.model_validate(enqueued_dict(job))
    return JSONResponse(jsonable_encoder(out), status_code=200 if job.deduplicated else 201)


@router.get("/jobs", response_model=JobList, tags=["jobs"], responses=error_responses(422),
            summary="The newest jobs, optionally of one status or type")
async def list_jobs(
        state: State,
        status: Annotated[Literal["pending", "processing", "completed", "retry", "failed",
                                  "cancelled"] | None,
                          Query(description="only this status (cancelled: the failed "
                                            "jobs that were cancelled)")] = None,
        job_type: Annotated[str | None, Query(description="only this type")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        queue: Annotated[str | None, Query(min_length=1, max_length=100,
                                           description="only this queue")] = None,
) -> dict[str, Any]:
    async with state.get_runner().sessions() as db:
        jobs = await stats.list_jobs(db, status=status, job_type=job_type, limit=limit,
                                   queue_name=queue)
    return {"jobs": [job_dict(j) for j in jobs], "count": len(jobs)}


@router.get("/jobs/{job_id}/explain", tags=["jobs"], responses=error_responses(404),
            summary="Why a job is in its state and what happens next, in words")
async def explain(job_id: str, state: State) -> dict[str, Any]:
    found = await state.get_runner().explain(job_id, face="http")
    return cast(dict[str, Any], jsonable_encoder(dataclasses.asdict(found)))


@router.get("/schedules", response_model=ScheduleList, tags=["jobs"],
            summary="The periodic jobs, by name")
async def list_schedules(state: State) -> dict[str, Any]:
    from ..schedules import list_schedules as stored

    async with state.get_runner().sessions() as db:
        found = await stored(db)
    out = [schedule_dict(r) for r in found]
    return {"schedules": out, "count": len(out)}


@router.post("/jobs/{job_id}/retry", response_model=JobOut, tags=["jobs"],
             responses=error_responses(404, 409), summary="Send a failed job back to pending")
async def retry(job_id: str, state: State) -> dict[str, Any]:
    try:
        return job_dict(await state.get_runner().retry_job(job_id))
    except InvalidTransition as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, tags=["jobs"],
             responses=error_responses(404, 409),
             summary="Cancel a waiting job, or ask a running one to stop")
async def cancel(job_id: str, state: State) -> dict[str, Any]:
    try:
        return job_dict(await state.get_runner().cancel(job_id))
    except InvalidTransition as exc:
        raise HTTPException(409, str(exc)) from None
