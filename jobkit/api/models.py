"""The HTTP API's request and response models (its OpenAPI schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, AwareDatetime, BaseModel, Field, field_validator

from ..checks import INT32_MAX
from ..models import JobStatus


def check_filename(name: str) -> str:
    """A video's display name: a plain file name, never a path."""
    from ..checks import check_filename as check

    return check(name)


class ErrorOut(BaseModel):
    """An error, with a message saying what was wrong."""

    detail: str
    errors: list[dict[str, Any]] | None = Field(
        None, description="validation errors, one per field (422 only)")


class UploadIn(BaseModel):
    """A video to analyse, given by name (no file)."""

    filename: str = Field(..., description="plain file name, e.g. match.mp4 (no path)",
                          examples=["match.mp4"])
    duration_ms: Annotated[int, Field(strict=True, gt=0, le=INT32_MAX)] = Field(
        ..., validation_alias=AliasChoices("duration_ms", "duration"),
        description="length of the video in milliseconds (alias: duration)",
        examples=[60000])
    priority: Annotated[int, Field(strict=True, ge=-INT32_MAX, le=INT32_MAX)] = 0

    _name = field_validator("filename")(check_filename)


class UploadOut(BaseModel):
    video_asset_id: str
    job_id: str
    job_type: str = "cut_analysis"
    status: str
    filename: str
    duration_ms: int
    size_bytes: int | None = Field(default=None, description="bytes stored (multipart uploads)")
    stored: bool = Field(default=False, description="whether a file was stored in the media folder")


class EnqueueIn(BaseModel):
    """A job of any registered type."""

    job_type: str = Field(..., min_length=1, max_length=200, examples=["cut_analysis"])
    params: dict[str, Any] = Field(default_factory=dict, description="a JSON object")
    priority: Annotated[int, Field(strict=True, ge=-INT32_MAX, le=INT32_MAX)] = 0
    run_at: AwareDatetime | None = Field(None, description="not before this time (with zone)")
    delay: float | None = Field(None, ge=0, description="not before this many seconds")
    dedupe_key: str | None = Field(None, min_length=1, max_length=200)
    max_retries: int | None = Field(None, ge=0, le=1000)
    timeout: float | None = Field(None, gt=0, description="seconds per attempt")
    allow_unknown: bool = Field(False, description="accept a job_type this server has no "
                                                   "handler for (your workers have it)")
    queue: str | None = Field(None, min_length=1, max_length=100,
                              description="the queue it waits in (default: its handler's, "
                                          "else 'default')")
    after: list[str] = Field(default_factory=list, max_length=1000,
                             description="ids of jobs that must complete first")


class JobOut(BaseModel):
    id: str
    job_type: str
    queue: str = "default"
    status: JobStatus
    params: dict[str, Any]
    result: Any = None
    error: str | None = None
    attempts: int
    max_attempts: int
    priority: int
    timeout: float | None = None
    dedupe_key: str | None = None
    cancel_requested: bool = False
    run_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    locked_by: str | None = None
    locked_until: datetime | None = None
    processing_time_ms: int | None = None
    progress: float | None = Field(None, description="how far the running attempt has got "
                                                     "(0..1), 1 once completed")
    progress_message: str | None = Field(None, description="what the job said it is doing")
    progress_at: datetime | None = Field(None, description="when progress was last stored")


class EnqueueOut(JobOut):
    deduplicated: bool = Field(False, description="true (status 200) when an unfinished job "
                                                  "already held the dedupe_key: it is returned")


class JobList(BaseModel):
    jobs: list[JobOut]
    count: int


class ScheduleOut(BaseModel):
    name: str
    job_type: str
    params: dict[str, Any]
    queue: str | None = None
    cron: str | None = Field(None, description="a cron expression (UTC), or null")
    every_seconds: float | None = Field(None, description="a fixed interval, or null")
    paused: bool
    last_tick_at: datetime
    next_tick_at: datetime
    last_job_id: str | None = None


class ScheduleList(BaseModel):
    schedules: list[ScheduleOut]
    count: int


class ProcessOut(BaseModel):
    """The summary of one processed job (or ``processed: false`` and a message)."""

    processed: bool
    job_id: str | None = None
    job_type: str | None = None
    status: str | None = None
    result: Any = None
    processing_time_ms: int | None = None
    error: str | None = None
    message: str | None = None


class HealthOut(BaseModel):
    status: Literal["ok", "unhealthy"]
    database: str = Field(..., description="'ok' or why it cannot be reached")
    workers_alive: int = Field(..., description="workers that heartbeated within the window")
    workers_required: int
    heartbeat_window_seconds: float
    queue_depth: int | None = Field(None, description="jobs ready to run now")
    scheduled: int | None = Field(None, description="jobs waiting for their run_at")
    in_process_worker: str | None = Field(None, description="state of this server's worker")
    problems: list[str]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}
