"""The HTTP API: the upload → process → get flow, job control, health and metrics.

Needs the ``api`` extra (``pip install -e '.[api]' (from the jobkit checkout)``). Build the app with
:func:`create_app` and run it with ``jobkit serve`` (uvicorn). Every route calls the
same functions a script would (:class:`jobkit.Runner`, :mod:`jobkit.queue`,
:mod:`jobkit.stats`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar, cast

try:
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from fastapi_offline import FastAPIOffline
    from pydantic import (
        AliasChoices,
        AwareDatetime,
        BaseModel,
        Field,
        ValidationError,
        field_validator,
    )
    from starlette.datastructures import UploadFile
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"jobkit.api needs the 'api' extra ({exc.name} is missing): "
        "pip install -e '.[api]' (from the jobkit checkout)") from exc

from . import stats
from .alerts import AlertHook, enable_alerts
from .config import Settings
from .database import describe_error
from .dispatcher import Handler
from .errors import InvalidParams, InvalidTransition, JobNotFound, UnknownJobType
from .execute import DB_ERRORS
from .jsonutil import loads_strict
from .models import JobStatus
from .runner import Runner
from .runner import open as open_runner
from .shapes import job_dict
from .urls import redact_url
from .worker import Worker

log = logging.getLogger("jobkit")
M = TypeVar("M", bound="BaseModel")

INT32_MAX = 2**31 - 1
#: Bytes a multipart body may carry beyond the file itself (boundaries, headers, fields).
MULTIPART_SLACK = 64 * 1024
#: A JSON body to /upload is a few fields; this is plenty.
JSON_BODY_LIMIT = 64 * 1024
#: Extensions an uploaded file keeps: video containers only (anything else is stored
#: without an extension, so a client cannot plant ``x.php`` or ``x.html`` in the media folder).
VIDEO_EXTENSIONS = frozenset({
    ".3g2", ".3gp", ".asf", ".avi", ".f4v", ".flv", ".m2ts", ".m2v", ".m4v", ".mkv", ".mov",
    ".mp4", ".mpeg", ".mpg", ".mts", ".mxf", ".ogv", ".ts", ".vob", ".webm", ".wmv"})


# ---------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------
def check_filename(name: str) -> str:
    """A video's display name: a plain file name, never a path."""
    from .checks import check_filename as check

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


def _err(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut} for code in codes}


# ---------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------
@dataclass
class ApiState:
    settings: Settings
    runner: Runner | None = None
    run_worker: bool = False
    concurrency: int | None = None
    worker: Worker | None = None
    worker_task: asyncio.Task[Any] | None = None
    alerts: AlertHook | None = None


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
    _install_error_handlers(app)

    def get_runner() -> Runner:
        if state.runner is None:
            raise HTTPException(503, "jobkit is not started yet")
        return state.runner

    # -- the upload → process → get flow ----------------------------------------------
    upload_body = {
        "required": True,
        "content": {
            "application/json": {"schema": UploadIn.model_json_schema()},
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "the video; stored under a generated name"},
                    "duration_ms": {"type": "integer", "minimum": 1,
                                    "description": "probed from the file when not given"},
                    "filename": {"type": "string",
                                 "description": "display name (default: the file's name)"},
                    "priority": {"type": "integer"},
                }}},
        },
    }

    @app.post("/upload", status_code=201, response_model=UploadOut, tags=["videos"],
              summary="Upload a video: creates a VideoAsset and a pending cut_analysis job",
              responses=_err(413, 415, 422, 503), openapi_extra={"requestBody": upload_body})
    async def upload(request: Request) -> UploadOut:
        return await _upload(request, get_runner(), settings)

    @app.post("/jobs/process", response_model=ProcessOut, response_model_exclude_unset=True,
              tags=["videos"], responses=_err(404, 503),
              summary="Process the next job now (development only: JOBKIT_DEV_ENDPOINTS=true)")
    async def process_next() -> dict[str, Any]:
        if not settings.dev_endpoints:
            raise HTTPException(404, "POST /jobs/process is a development endpoint; "
                                     "enable it with JOBKIT_DEV_ENDPOINTS=true")
        return dict(await get_runner().step())

    @app.get("/jobs/{job_id}", response_model=JobOut, tags=["videos"], responses=_err(404),
             summary="A job's state")
    async def get_job(job_id: str) -> dict[str, Any]:
        return job_dict(await get_runner().get_job(job_id))

    # -- jobs ------------------------------------------------------------------------
    enqueue_body = {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/EnqueueIn"}}}}

    @app.post("/jobs", status_code=201, response_model=EnqueueOut, tags=["jobs"],
              responses={**_err(413, 415, 422),
                         200: {"model": EnqueueOut,
                               "description": "deduplicated: the unfinished job that holds "
                                              "the dedupe_key"}},
              summary="Enqueue a job of any registered type",
              openapi_extra={"requestBody": enqueue_body})
    async def enqueue(request: Request) -> JSONResponse:
        r = get_runner()
        body = _validated(EnqueueIn, await _read_json(request, settings.max_body_bytes))
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
        out = EnqueueOut.model_validate({**job_dict(job), "deduplicated": job.deduplicated})
        return JSONResponse(jsonable_encoder(out), status_code=200 if job.deduplicated else 201)

    @app.get("/jobs", response_model=JobList, tags=["jobs"], responses=_err(422),
             summary="The newest jobs, optionally of one status or type")
    async def list_jobs(
            status: Annotated[Literal["pending", "processing", "completed", "retry", "failed",
                                      "cancelled"] | None,
                              Query(description="only this status (cancelled: the failed "
                                                "jobs that were cancelled)")] = None,
            job_type: Annotated[str | None, Query(description="only this type")] = None,
            limit: Annotated[int, Query(ge=1, le=1000)] = 50,
            queue: Annotated[str | None, Query(min_length=1, max_length=100,
                                               description="only this queue")] = None,
    ) -> dict[str, Any]:
        async with get_runner().sessions() as db:
            jobs = await stats.list_jobs(db, status=status, job_type=job_type, limit=limit,
                                       queue_name=queue)
        return {"jobs": [job_dict(j) for j in jobs], "count": len(jobs)}

    @app.get("/jobs/{job_id}/explain", tags=["jobs"], responses=_err(404),
             summary="Why a job is in its state and what happens next, in words")
    async def explain(job_id: str) -> dict[str, Any]:
        import dataclasses

        found = await get_runner().explain(job_id, face="http")
        return cast(dict[str, Any], jsonable_encoder(dataclasses.asdict(found)))

    @app.get("/schedules", response_model=ScheduleList, tags=["jobs"],
             summary="The periodic jobs, by name")
    async def list_schedules() -> dict[str, Any]:
        from .schedules import list_schedules as stored

        async with get_runner().sessions() as db:
            found = await stored(db)
        out = [{**r, "last_job_id": None if r["last_job_id"] is None else str(r["last_job_id"]),
                "paused": bool(r["paused"])} for r in found]
        return {"schedules": out, "count": len(out)}

    @app.post("/jobs/{job_id}/retry", response_model=JobOut, tags=["jobs"],
              responses=_err(404, 409), summary="Send a failed job back to pending")
    async def retry(job_id: str) -> dict[str, Any]:
        try:
            return job_dict(await get_runner().retry_job(job_id))
        except InvalidTransition as exc:
            raise HTTPException(409, str(exc)) from None

    @app.post("/jobs/{job_id}/cancel", response_model=JobOut, tags=["jobs"],
              responses=_err(404, 409),
              summary="Cancel a waiting job, or ask a running one to stop")
    async def cancel(job_id: str) -> dict[str, Any]:
        try:
            return job_dict(await get_runner().cancel(job_id))
        except InvalidTransition as exc:
            raise HTTPException(409, str(exc)) from None

    # -- operations ------------------------------------------------------------------
    @app.get("/health", response_model=HealthOut, tags=["operations"],
             responses={503: {"model": HealthOut, "description": "unhealthy"}},
             summary="Database reachable, workers alive, queue depth")
    async def health() -> JSONResponse:
        out = await _health(state, get_runner())
        code = 200 if out.status == "ok" else 503
        return JSONResponse(out.model_dump(), status_code=code)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"],
             responses={200: {"content": {"text/plain": {}},
                              "description": "Prometheus text format 0.0.4"},
                        503: {"content": {"text/plain": {}},
                              "description": "database unreachable"}},
             summary="Prometheus metrics: jobs by status, queue depth, processing times")
    async def metrics() -> PlainTextResponse:
        media = "text/plain; version=0.0.4; charset=utf-8"
        try:
            text = await _metrics(state, get_runner())
        except DB_ERRORS as exc:
            return PlainTextResponse(f"# database unreachable: {describe_error(exc)}\n",
                                     status_code=503, media_type=media)
        return PlainTextResponse(text, media_type=media)

    return app


def _version() -> str:
    from .version import __version__

    return __version__


def _install_error_handlers(app: FastAPI) -> None:
    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = _json_safe(jsonable_encoder(exc.errors(), custom_encoder={Exception: str}))
        return JSONResponse({"detail": _messages(errors), "errors": errors}, status_code=422)

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, JobNotFound)
        return JSONResponse({"detail": f"no job with id {_safe_text(str(exc.job_id))}; list "
                                       "jobs with GET /jobs"}, status_code=404)

    async def db_down(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s: database error: %s", request.method, request.url.path, describe_error(exc))
        return JSONResponse({"detail": f"database unavailable: {describe_error(exc)}"}, status_code=503)

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(JobNotFound, not_found)
    for exc_type in DB_ERRORS:
        app.add_exception_handler(cast(type[Exception], exc_type), db_down)


def _safe_text(text: str, limit: int = 200) -> str:
    """Text that can be encoded (no lone surrogates) and is not huge."""
    clean = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return clean if len(clean) <= limit else clean[:limit - 1] + "…"


def _json_safe(value: Any) -> Any:
    """Validation errors as strict JSON: a rejected NaN/Infinity or a lone surrogate in the
    echoed input would otherwise make the error response itself fail (a 500)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 60:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str):
        return _safe_text(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _validated(model: type[M], data: Any) -> M:
    """``model`` validated from parsed JSON, or the same 422 FastAPI gives."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = jsonable_encoder(exc.errors(include_url=False), custom_encoder={Exception: str})
        raise RequestValidationError(
            [{**e, "loc": ("body", *e.get("loc", ()))} for e in errors]) from None


async def _read_json(request: Request, limit: int) -> Any:
    """The request's JSON body, read strictly: one message for every JSON route when it is
    not JSON (no NaN/Infinity, no 10,000-deep nesting, no 5,000-digit number)."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise HTTPException(415, "send a JSON body with content-type: application/json")
    try:
        raw = await _limited(request, limit).body()
    except _TooLarge:
        raise _too_large(limit, True) from None
    try:
        return loads_strict(raw)
    except ValueError as exc:
        raise HTTPException(422, f"body is not valid JSON: {_safe_text(str(exc))}") from None


class BodyLimit:
    """ASGI middleware: a request body (other than a multipart upload, which has its own
    limit) larger than ``limit`` bytes gets 413, whether or not it declares a
    Content-Length: the stream is counted as it is read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", ())}
        if headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data"):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting, sending)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body larger than {self.limit} bytes "
                                     "(JOBKIT_MAX_BODY_BYTES)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _messages(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        msg = str(e.get("msg", "invalid"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


# ---------------------------------------------------------------------------
# Upload
# ---------------------------------------------------------------------------
class _TooLarge(Exception):
    pass


def _limited(request: Request, limit: int) -> Request:
    """The same request, whose body raises :class:`_TooLarge` past ``limit`` bytes."""
    seen = 0
    receive = request.receive

    async def counting() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge()
        return message

    return Request(request.scope, counting)


def _too_large(limit: int, json_body: bool = False) -> HTTPException:
    if json_body:
        return HTTPException(413, f"JSON body larger than {limit} bytes; send the video "
                                  "itself as multipart/form-data")
    return HTTPException(413, f"upload larger than the limit of {limit} bytes "
                              "(JOBKIT_MAX_UPLOAD_BYTES)")


def _int_field(name: str, raw: Any, *, minimum: int) -> int:
    if not isinstance(raw, str) or not re.fullmatch(r"[+-]?\d{1,12}", raw.strip()):
        raise HTTPException(422, f"{name}: must be a whole number, got {raw!r}")
    value = int(raw)
    if not minimum <= value <= INT32_MAX:
        raise HTTPException(422, f"{name}: must be between {minimum} and {INT32_MAX}, "
                                 f"got {value}")
    return value


async def _upload(request: Request, runner: Runner, settings: Settings) -> UploadOut:
    limit = settings.max_upload_bytes
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype not in ("application/json", "multipart/form-data"):
        raise HTTPException(415, "send application/json {filename, duration_ms} or "
                                 "multipart/form-data with a file and duration_ms")
    body_limit = min(limit, JSON_BODY_LIMIT) if ctype == "application/json" \
        else limit + MULTIPART_SLACK
    declared = request.headers.get("content-length")
    is_json = ctype == "application/json"
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise _too_large(body_limit if is_json else limit, is_json)
    limited = _limited(request, body_limit)

    if is_json:
        item = _validated(UploadIn, await _read_json(request, body_limit))
        try:
                asset, job = await runner.upload_video(item.filename, item.duration_ms,
                                                   priority=item.priority)
        except InvalidTransition as exc:
            raise HTTPException(422, str(exc)) from None
        return UploadOut(video_asset_id=str(asset.id), job_id=str(job.id),
                         status=str(job.status), filename=asset.filename,
                         duration_ms=asset.duration_ms)

    try:
        form = await limited.form(max_files=1, max_fields=10)
    except _TooLarge:
        raise _too_large(limit) from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, "file: a multipart upload needs a 'file' part")
        raw_duration = form.get("duration_ms", form.get("duration"))
        duration_ms = None if raw_duration is None else \
            _int_field("duration_ms", raw_duration, minimum=1)
        raw_priority = form.get("priority")
        priority = 0 if raw_priority is None else _int_field("priority", raw_priority,
                                                              minimum=-INT32_MAX)
        given = form.get("filename")
        name = given if isinstance(given, str) and given else (upload.filename or "")
        try:
            check_filename(name)
        except ValueError as exc:
            raise HTTPException(422, f"filename: {exc}") from None
        if upload.size is not None and upload.size > limit:
            raise _too_large(limit)
        path, size = await _store(upload, name, settings.media_dir, limit)
    finally:
        await form.close()
    try:
        if duration_ms is None:
            duration_ms = await _probed_duration(runner, path)
        asset, job = await runner.upload_video(name, duration_ms, priority=priority,
                                               stored_path=path, size_bytes=size)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return UploadOut(video_asset_id=str(asset.id), job_id=str(job.id), status=str(job.status),
                     filename=asset.filename, duration_ms=asset.duration_ms, size_bytes=size,
                     stored=True)


async def _probed_duration(runner: Runner, path: str) -> int:
    """The stored file's duration, probed; 422 (the caller removes the file) when it is not a
    video jobkit can analyse."""
    try:
        from .video import VideoError
    except ImportError:  # pragma: no cover - depends on the installation
        raise HTTPException(422, "duration_ms: field required (this server cannot probe "
                                 "videos: install the 'video' extra)") from None
    try:
        info = await runner.probe_video(path)
    except ImportError:  # pragma: no cover - av missing while numpy is present
        raise HTTPException(422, "duration_ms: field required (this server cannot probe "
                                 "videos: install the 'video' extra)") from None
    except VideoError as exc:
        raise HTTPException(422, f"file: {exc}") from None
    return int(info.duration_ms)


async def _store(upload: UploadFile, name: str, media_dir: str, limit: int) -> tuple[str, int]:
    """Copy the upload into ``media_dir`` under a generated name; returns (path, bytes)."""
    ext = os.path.splitext(name)[1].lower()
    ext = ext if ext in VIDEO_EXTENSIONS else ""
    stem = uuid.uuid4().hex

    def copy() -> tuple[str, int]:
        folder = os.path.abspath(media_dir)
        final = os.path.join(folder, stem + ext)
        partial = os.path.join(folder, f".{stem}.part")
        os.makedirs(folder, exist_ok=True)
        size = 0
        try:
            with open(partial, "xb") as out:
                upload.file.seek(0)
                while chunk := upload.file.read(1024 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise _TooLarge()
                    out.write(chunk)
            os.replace(partial, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        return final, size

    try:
        return await asyncio.to_thread(copy)
    except _TooLarge:
        raise _too_large(limit) from None


# ---------------------------------------------------------------------------
# Health and metrics
# ---------------------------------------------------------------------------
_HEALTH_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *DB_ERRORS)


async def _health(state: ApiState, runner: Runner) -> HealthOut:
    s = state.settings
    problems: list[str] = []
    database, alive, depth, scheduled = "ok", 0, None, None
    try:
        async with asyncio.timeout(5):
            async with runner.sessions() as db:
                q = await stats.queue_depth(db)
                alive = await stats.workers_alive(db, s.dead_after)
                await db.commit()
        depth, scheduled = q["eligible"], q["scheduled"]
    except _HEALTH_ERRORS as exc:
        database = f"unreachable: {describe_error(exc) if not isinstance(exc, TimeoutError) else 'timed out after 5 s'}"
        problems.append(f"database {database}")
    if database == "ok" and alive < s.health_min_workers:
        problems.append(f"{alive} worker(s) heartbeated in the last {s.dead_after:g} s; "
                        f"{s.health_min_workers} needed (JOBKIT_HEALTH_MIN_WORKERS)")
    own = None
    if state.worker is not None:
        own = state.worker.state
        task = state.worker_task
        if task is not None and task.done():
            why = "stopped"
            if not task.cancelled() and task.exception() is not None:
                why = f"crashed: {describe_error(task.exception())}"  # type: ignore[arg-type]
            own = why
            problems.append(f"this server's worker {why}")
    return HealthOut(status="ok" if not problems else "unhealthy", database=database,
                     workers_alive=alive, workers_required=s.health_min_workers,
                     heartbeat_window_seconds=s.dead_after, queue_depth=depth,
                     scheduled=scheduled, in_process_worker=own, problems=problems)


def _fmt(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _label(value: str) -> str:
    """A Prometheus label value, escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def _metrics(state: ApiState, runner: Runner) -> str:
    async with runner.sessions() as db:
        counts = await stats.status_counts(db)
        per_queue = await stats.queue_status_counts(db)
        depth = await stats.queue_depth(db)
        alive = await stats.workers_alive(db, state.settings.dead_after)
        hist = await stats.processing_histogram(db)
        await db.commit()
    out: list[str] = []

    def family(name: str, kind: str, help_text: str,
               samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for suffix, value in samples:
            out.append(f"{name}{suffix} {_fmt(value)}")

    family("jobkit_jobs", "gauge", "Jobs in the database by status.",
           [(f'{{status="{s}"}}', n) for s, n in counts.items()])
    family("jobkit_queue_jobs", "gauge", "Jobs in the database by queue and status.",
           [(f'{{queue="{_label(q)}",status="{s}"}}', n)
            for q, by_status in per_queue.items() for s, n in by_status.items()])
    family("jobkit_queue_depth", "gauge",
           "Jobs ready to run now (pending or retry, run_at passed).", [("", depth["eligible"])])
    family("jobkit_jobs_scheduled", "gauge",
           "Waiting jobs due later (delayed, or retries in their backoff).",
           [("", depth["scheduled"])])
    family("jobkit_jobs_completed_total", "counter",
           "Jobs completed (rows in the database; pruning lowers it).",
           [("", counts["completed"])])
    family("jobkit_jobs_failed_total", "counter",
           "Jobs failed for good (rows in the database; pruning lowers it).",
           [("", counts["failed"])])
    family("jobkit_workers_alive", "gauge",
           "Workers that heartbeated within the health window.", [("", alive)])
    samples = [(f'_bucket{{le="{_fmt(b)}"}}', float(n)) for b, n in hist.buckets]
    samples.append(('_bucket{le="+Inf"}', float(hist.count)))
    samples += [("_sum", hist.sum), ("_count", float(hist.count))]
    family("jobkit_job_processing_seconds", "histogram",
           "Processing time of completed jobs (last attempt, start to finish).", samples)
    return "\n".join(out) + "\n"



__all__ = ["ApiState", "EnqueueIn", "JobOut", "UploadIn", "UploadOut", "check_filename",
           "create_app"]
