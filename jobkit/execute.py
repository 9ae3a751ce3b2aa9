"""Run ONE claimed job: dispatch it, then record its outcome — fenced, and atomic with the
handler's own writes.

A job's handler runs with its own session. If the handler wrote through it, the job's
completion joins that transaction (fenced), so the writes and the ``completed`` status
commit together or not at all. If it did not write, the completion is batched with
other jobs finishing at the same moment (:class:`CompletionBatcher`): one statement for
many jobs, each still fenced. ``process_single_job`` (the original contract) is claim +
:func:`run_job`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
import uuid
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from . import progress, queue
from .backends.common import lane_open
from .config import Settings
from .database import attach_settings, session_used, session_wrote, settings_of
from .dispatcher import DISPATCH_TABLE, Handler, dispatch_job
from .durations import attempt_ms
from .errors import (
    InvalidParams,
    JobCancelled,
    PermanentError,
    Retry,
    UnknownJobType,
    error_text,
    last_line,
)
from .events import EventBus
from .models import Job, JobStatus

log = logging.getLogger("jobkit")
T = TypeVar("T")

NO_JOBS = {"processed": False, "message": "No pending jobs in queue"}
_PERMANENT = (UnknownJobType, PermanentError, InvalidParams, JobCancelled)


class CompletionBatcher:
    """Collects completions of jobs whose handlers did not write, and commits them together.

    Every job finishing in the same event-loop turn joins one fenced ``UPDATE … FROM
    (VALUES …)``, run alone on the driver's connection (no session); each caller awaits
    its own outcome. One statement is in flight at a time: completions arriving meanwhile
    go together in the next one, as soon as it returns (so a worker has at most one
    completion and one claim in flight, and a busy one writes bigger batches).
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], worker_id: str,
                 max_batch: int = 500) -> None:
        self.sessions = sessions
        self.engine: AsyncEngine = sessions.kw["bind"]
        self.worker_id = worker_id
        self.max_batch = max_batch
        self._items: list[tuple[Job, Any, asyncio.Future[bool]]] = []
        self._scheduled = False  # a flush is scheduled or running: it takes new items too
        self._flushes: set[asyncio.Task[None]] = set()  # strong refs until done

    async def complete(self, job: Job, result: Any) -> bool:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._items.append((job, result, fut))
        if not self._scheduled:
            self._scheduled = True
            # The next loop turn: every job finishing in this one joins the statement.
            asyncio.get_running_loop().call_soon(self._spawn_flush)
        return await fut

    def _spawn_flush(self) -> None:
        task = asyncio.get_running_loop().create_task(self._flush_all())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush_all(self) -> None:
        try:
            while self._items:
                items = self._items[:self.max_batch]
                del self._items[:self.max_batch]
                await self._flush(items)
        finally:
            self._scheduled = False
            if self._items:  # left by a cancellation (the loop closing): not stranded
                self._scheduled = True
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().call_soon(self._spawn_flush)

    async def _flush(self, items: list[tuple[Job, Any, asyncio.Future[bool]]]) -> None:
        try:
            if lane_open(self.engine):
                # One fenced statement on the driver's connection: no session (see
                # queue.complete_many_alone).
                done = await queue.complete_many_alone(
                    self.engine, [(j, r) for j, r, _ in items], worker_id=self.worker_id)
            else:
                async with self.sessions() as db:
                    await queue.one_statement_transaction(db)
                    done = await queue.complete_many(
                        db, [(j, r) for j, r, _ in items], worker_id=self.worker_id)
                    await db.commit()
        except BaseException as exc:
            for _, _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for job, _, fut in items:
            if not fut.done():
                fut.set_result(job.id in done)


@dataclass
class RunContext:
    """What a worker needs to run one job."""

    worker_id: str
    settings: Settings
    table: dict[str, Handler]
    events: EventBus | None = None
    batcher: CompletionBatcher | None = None
    # Jobs whose handler has returned and whose outcome is being recorded.
    finishing: set[uuid.UUID] = field(default_factory=set)
    # Of those, the ones waiting for the batcher's statement: their slot is free already.
    batched: set[uuid.UUID] = field(default_factory=set)
    # Called when a job's slot frees before its task ends (it joined the batcher).
    on_slot_free: Callable[[], None] | None = None


BLOCKED_LOOP_WARNING_S = 0.5


@types.coroutine
def _watch_blocking(coro: Coroutine[Any, Any, T], job: Job) -> Generator[Any, Any, T]:
    """Await ``coro``, timing each of its synchronous steps on the event loop.

    A handler step that runs longer than :data:`BLOCKED_LOOP_WARNING_S` without awaiting
    (``time.sleep``, CPU work, blocking I/O) stalls every other job, heartbeat and timeout
    of this worker; say so once, naming the job, instead of silently serialising them.
    """
    steps = coro.__await__()
    warned = False
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            started = time.perf_counter()
            try:
                yielded = steps.send(value) if error is None else steps.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            finally:
                took = time.perf_counter() - started
                if took > BLOCKED_LOOP_WARNING_S and not warned:
                    warned = True
                    log.warning(
                        "Job %s (type: %s) blocked the event loop for %.1fs: every other job, "
                        "heartbeat and timeout of this worker waited. Run blocking code with "
                        "`await jobkit.run_blocking(fn, *args)`", job.id, job.job_type, took)
            try:
                value, error = (yield yielded), None
            except GeneratorExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in (cancellation): pass it on
                value, error = None, exc
    finally:
        steps.close()  # type: ignore[attr-defined]


async def run_job(job: Job, db: AsyncSession, ctx: RunContext) -> dict[str, Any]:
    """Run one claimed job with ``db`` and record its outcome; returns its summary dict."""
    job_id = job.id
    log.info("Processing job %s (type: %s)", job_id, job.job_type)
    attach_settings(db, ctx.settings)
    db.info["jobkit.job"] = job  # not write-only: a handler may read it (tests do)
    started = time.perf_counter()
    claimed_mark = job.updated_at  # replaced by the stored time once the outcome is recorded
    timeout = job.timeout
    if timeout is None:
        timeout = ctx.settings.job_timeout
    error: str | None = None
    permanent = False
    retry_delay: float | None = None
    result: Any = None
    deadline: asyncio.Timeout | None = None
    try:
        # report_progress() inside the handler writes to this attempt of this job.
        async with progress.tracking_session(db, job, ctx.worker_id,
                                             interval=ctx.settings.progress_interval):
            if timeout is None:  # (asyncio.timeout(None) would never expire: skip it)
                result = await _watch_blocking(dispatch_job(job, db, ctx.table), job)
            else:
                async with asyncio.timeout(timeout) as deadline:
                    result = await _watch_blocking(dispatch_job(job, db, ctx.table), job)
        result = queue.check_result(result)
    except TimeoutError as exc:
        if deadline is not None and deadline.expired():
            error = f"TimeoutError: job timed out after {timeout:g} s"
        else:
            error = error_text(exc)
    except Retry as exc:
        error, retry_delay = f"Retry: {exc.reason}", exc.delay
    except _PERMANENT as exc:
        error, permanent = error_text(exc), True
    except Exception as exc:  # noqa: BLE001 - any handler error is a failed attempt
        error = error_text(exc)
    # CancelledError (shutdown, lost lease, cancel request) propagates to the caller.
    ctx.finishing.add(job_id)  # from here on, a lease the heartbeat misses is our own finish

    if error is None:
        if ctx.batcher is not None and not session_wrote(db):
            # (An unused LazySession has no transaction: asking would create the session.)
            if session_used(db) and db.in_transaction():
                await db.rollback()  # nothing to keep; frees the connection
            ctx.batched.add(job_id)
            if ctx.on_slot_free is not None:
                ctx.on_slot_free()
            try:
                ok = await ctx.batcher.complete(job, result)
            finally:
                ctx.batched.discard(job_id)
        else:
            ok = await queue.complete_job(db, job, result, worker_id=ctx.worker_id, commit=True)
            if not ok:
                await db.rollback()
        ms = _elapsed_ms(job, claimed_mark, started)
        if ok:
            log.info("Job %s completed successfully in %sms", job_id, ms)
            if ctx.events:
                await emit(ctx, "completed", job, status="completed", result=result)
            return summary_of(job, "completed", result, ms, None)
        return await lost_result(ctx, job, ms)

    await db.rollback()  # drop the handler's writes before recording the failure
    status = await queue.fail_job(
        db, job, error, worker_id=ctx.worker_id, permanent=permanent, retry_delay=retry_delay,
        backoff_base=ctx.settings.retry_backoff_base, backoff_max=ctx.settings.retry_backoff_max)
    await db.commit()
    ms = _elapsed_ms(job, claimed_mark, started)
    short = last_line(error)
    if status is None:
        return await lost_result(ctx, job, ms)
    if status is JobStatus.RETRY:
        log.warning("Job %s failed: %s (attempt %s/%s; it will be retried)", job.id, short,
                    job.attempts, job.max_attempts)
    else:
        log.error("Job %s failed: %s", job.id, short)
    if status is JobStatus.RETRY:
        await emit(ctx, "retried", job, status="retry", error=short)
    else:
        await emit(ctx, "failed", job, status="failed", error=short, full_error=error)
    return summary_of(job, status.value, None, ms, short)


def _elapsed_ms(job: Job, claimed_mark: Any, started: float) -> int:
    """The attempt's duration as ``show`` and ``explain`` report it (durations.attempt_ms):
    claim to stored outcome; the local clock only if nothing was stored (``claimed_mark``:
    ``job.updated_at`` as claimed, replaced by the stored time once the outcome is recorded).
    """
    updated = job.updated_at
    ms = attempt_ms(job.started_at, job.finished_at or
                    (updated if updated is not claimed_mark else None))
    return ms if ms is not None else int((time.perf_counter() - started) * 1000)


async def lost_result(ctx: RunContext, job: Job, ms: int) -> dict[str, Any]:
    msg = "lease lost: another worker took over this job; this attempt's writes were rolled back"
    log.warning("Job %s: %s", job.id, msg)
    await emit(ctx, "lost", job, status="lost", error=msg)
    return summary_of(job, "lost", None, ms, msg)


async def emit(ctx: RunContext, event: str, job: Job, **extra: Any) -> None:
    if ctx.events:
        payload = {"job_id": str(job.id), "job_type": job.job_type, "attempt": job.attempts,
                   "max_attempts": job.max_attempts, "worker_id": ctx.worker_id, **extra}
        await ctx.events.emit(event, payload)


def summary_of(job: Job, status: str, result: Any, ms: int, error: str | None) -> dict[str, Any]:
    return {"processed": True, "job_id": str(job.id), "job_type": job.job_type,
            "status": status, "result": result, "processing_time_ms": ms, "error": error}


async def process_single_job(db: AsyncSession, *, settings: Settings | None = None,
                             handlers: dict[str, Handler] | None = None,
                             worker_id: str | None = None,
                             events: EventBus | None = None,
                             job_types: list[str] | None = None,
                             queues: list[str] | None = None) -> dict[str, Any]:
    """Process ONE job with ``db`` and return its summary dict.

    Returns ``{"processed": False, "message": "No pending jobs in queue"}`` when
    nothing is eligible. Any job type is claimed and an unknown one
    fails at once; pass ``job_types`` to claim only those (``queues``: only from those
    queues). If the caller is cancelled
    (Ctrl-C) while the job runs, the job is released without burning an attempt.
    """
    settings = settings or settings_of(db)
    wid = worker_id or queue.default_worker_id()
    jobs = await queue.claim_jobs(db, 1, worker_id=wid, lease_seconds=settings.lease_seconds,
                                  job_types=job_types, queues=queues)
    if not jobs:
        return dict(NO_JOBS)
    ctx = RunContext(wid, settings, DISPATCH_TABLE if handlers is None else handlers, events)
    if ctx.events:
        await emit(ctx, "claimed", jobs[0], status="processing")
    try:
        return await run_job(jobs[0], db, ctx)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await db.rollback()
            if await queue.release_jobs(db, wid, [jobs[0].id]):
                log.warning("Job %s: interrupted; released back to the queue", jobs[0].id)
        raise

