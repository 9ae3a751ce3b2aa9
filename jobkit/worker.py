"""Run jobs many at once (:class:`Worker`): claim up to the free slots, run each job as an
asyncio task, heartbeat, recover lost leases, shut down gracefully, wake up fast.

One job's run (dispatch, then the fenced outcome) lives in :mod:`jobkit.execute`; the
original ``process_single_job`` is re-exported here, where it was documented.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from . import queue
from .checks import check_queues
from .config import Settings
from .database import DB_ERRORS, LazySession, describe_error, make_sessionmaker
from .dependencies import fail_blocked_by_failure
from .dispatcher import DISPATCH_TABLE, Handler, handler_options
from .errors import JobkitError
from .events import EventBus
from .execute import (
    NO_JOBS,
    CompletionBatcher,
    RunContext,
    emit,
    lost_result,
    process_single_job,
    run_job,
    summary_of,
)
from .models import Job
from .urls import redact_url

log = logging.getLogger("jobkit")


@dataclass
class WorkerStats:
    """What a worker did: counts of outcomes and the time it ran."""

    claimed: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    lost: int = 0
    released: int = 0
    max_active: int = 0
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None
    #: The signal that stopped the worker (``"SIGTERM"``, ``"SIGINT"``), if one did.
    stopped_by: str | None = None

    @property
    def processed(self) -> int:
        """Attempts that ended (completed, failed, retried or lost)."""
        return self.completed + self.failed + self.retried + self.lost

    @property
    def jobs_done(self) -> int:
        """Jobs this worker finished for good (completed or failed): jobs, not attempts."""
        return self.completed + self.failed

    def in_words(self) -> str:
        """``ran 12 attempts in 3.2 s: 10 completed, 1 failed, 1 to retry, …``"""
        d = self.as_dict()
        parts = [f"{d['completed']} completed", f"{d['failed']} failed",
                 f"{d['retried']} to retry"]
        if d["lost"]:
            parts.append(f"{d['lost']} lost to another worker")
        if d["released"]:
            parts.append(f"{d['released']} released back to the queue")
        return (f"ran {d['processed']} attempt(s) in {d['elapsed_s']:g} s: " + ", ".join(parts)
                + f"; at most {d['max_active']} at once")

    @property
    def elapsed(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    def count(self, status: str) -> None:
        if status == "completed":
            self.completed += 1
        elif status == "failed":
            self.failed += 1
        elif status == "retry":
            self.retried += 1
        elif status == "lost":
            self.lost += 1

    def as_dict(self) -> dict[str, Any]:
        return {"processed": self.processed, "completed": self.completed, "failed": self.failed,
                "retried": self.retried, "lost": self.lost, "released": self.released,
                "max_active": self.max_active, "elapsed_s": round(self.elapsed, 3)}

    def __repr__(self) -> str:
        rate = self.processed / self.elapsed if self.elapsed > 0 else 0.0
        return (f"<WorkerStats processed={self.processed} completed={self.completed} "
                f"failed={self.failed} retried={self.retried} lost={self.lost} "
                f"in {self.elapsed:.2f}s ({rate:.0f} jobs/s)>")

    def _repr_html_(self) -> str:
        from .display import stats_html

        return stats_html(self)


class Worker:
    """Runs up to ``concurrency`` jobs at once in this process, until stopped.

    Args:
        engine: the database.
        settings: poll interval, lease, heartbeat, timeouts, retries, grace period.
        concurrency: jobs running at once (asyncio tasks).
        handlers: the dispatch table (default: :data:`DISPATCH_TABLE`).
        burst: exit as soon as nothing is eligible and nothing runs (``drain``).
        handle_signals: stop gracefully on SIGTERM/SIGINT (a second SIGINT stops at
            once). Leave it off inside someone else's event loop (a notebook).
        on_done: called with each job's summary dict (progress bars, tests).
        job_types: claim only these types. By default a worker claims only the types it
            has a handler for, so a worker deployed without some handlers leaves those
            jobs waiting for one that has them instead of failing them as unknown.
        claim_unknown: claim every type (unknown ones then fail at once, as ``step`` does).
        queues: serve only the jobs of these queues (default: every queue).
        schedules: run the scheduler, which enqueues the due ticks of periodic jobs
            (default: on, except in ``burst`` mode).
    """

    def __init__(self, engine: AsyncEngine, *, settings: Settings | None = None,
                 concurrency: int | None = None, handlers: dict[str, Handler] | None = None,
                 burst: bool = False, handle_signals: bool = False,
                 worker_id: str | None = None, events: EventBus | None = None,
                 on_done: Callable[[dict[str, Any]], Any] | None = None,
                 job_types: list[str] | None = None, claim_unknown: bool = False,
                 wakeup: bool = True, queues: list[str] | str | None = None,
                 schedules: bool | None = None) -> None:
        self.engine = engine
        self.settings = settings or Settings.from_env()
        self.concurrency = concurrency or self.settings.concurrency
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        self.handlers = DISPATCH_TABLE if handlers is None else handlers
        self.burst = burst
        self.handle_signals = handle_signals
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.events = events
        self.on_done = on_done
        self.job_types = job_types
        self.claim_unknown = claim_unknown
        self.queues = check_queues(queues)
        self.schedules = (not burst) if schedules is None else schedules
        self._limited: dict[str, int] = {}
        self._by_type = False  # set once a job of a type without a handler was seen
        self.wakeup = wakeup
        self.sessions = make_sessionmaker(engine)
        self.stats = WorkerStats()
        self.state = "new"
        self._tasks: dict[uuid.UUID, asyncio.Task[dict[str, Any]]] = {}
        self._cancel_reason: dict[uuid.UUID, str] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._immediate = asyncio.Event()
        self._db_backoff = 0.0
        self._batcher = CompletionBatcher(self.sessions, self.id)
        self._ctx = RunContext(self.id, self.settings, self.handlers, events, self._batcher)
        self._ctx.on_slot_free = self._slot_freed
        self._signals_seen = 0
        self._want_slot = False
        self._claim_lost = False
        self._reported_done = 0
        self._reported_at = 0.0

    # -- public --------------------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self._tasks)

    def claimable_types(self) -> list[str] | None:
        """The job types this worker claims: the given ones, else those it has a handler for
        (read live, so a handler registered later in a notebook is picked up), else any."""
        if self.job_types is not None:
            return self.job_types
        return None if self.claim_unknown else list(self.handlers)

    def _claimable_limited(self) -> list[str]:
        """The types with a max_running limit this worker may claim."""
        return [t for t in self._limited if self.claim_unknown or t in self.handlers]

    def stop(self, immediate: bool = False) -> None:
        """Stop claiming; finish running jobs within the grace period (or at once)."""
        self._stopping.set()
        if immediate:
            self._immediate.set()
        self._wake.set()

    def __repr__(self) -> str:
        s = self.stats
        served = "" if self.queues is None else f" queues={','.join(self.queues)}"
        return (f"<Worker {self.id}{served} {self.state} running={self.running}/{self.concurrency} "
                f"done={s.completed} failed={s.failed} retried={s.retried} lost={s.lost}>")

    async def run(self) -> WorkerStats:
        """Work until stopped (or, with ``burst``, until nothing is eligible)."""
        self.state = "running"
        self.stats = WorkerStats()
        loop = asyncio.get_running_loop()
        key = queue.wake_key(self.engine)
        queue.add_waker(key, self._wake.set)
        background: list[asyncio.Task[None]] = []
        if self.handle_signals:
            self._install_signals(loop)
        try:
            await self._register()
            await self._store_limits_and_schedules()
            await self._maintenance()
            background.append(loop.create_task(self._heartbeat_loop(), name="jobkit-heartbeat"))
            if self.wakeup and not self.burst:
                background.append(loop.create_task(self._watch_loop(), name="jobkit-watch"))
            if self.schedules:
                background.append(loop.create_task(self._schedule_loop(), name="jobkit-schedules"))
            await self._main_loop()
        except asyncio.CancelledError:
            # Cancelling the worker's task (a notebook interrupt, a caller's timeout) means
            # stop now: no grace period; unfinished jobs are released, then it propagates.
            self._immediate.set()
            raise
        finally:
            self.state = "stopping"
            await self._shutdown()
            for task in background:
                task.cancel()
            if background:  # asyncio.wait never raises their CancelledError into ours
                await asyncio.wait(background)
            queue.remove_waker(key, self._wake.set)
            if self.handle_signals:
                self._remove_signals(loop)
            await self._unregister()
            self.state = "stopped"
            self.stats.finished = time.perf_counter()
        return self.stats

    # -- main loop -----------------------------------------------------------------------
    async def _main_loop(self) -> None:
        poll = self.settings.worker_poll_interval
        while not self._stopping.is_set():
            self._wake.clear()
            free = self.concurrency - len(self._tasks) + len(self._ctx.batched)
            claimed: list[Job] = []
            drained = False
            if free > 0:
                claimed = await self._claim(free)
                for job in claimed:
                    self._start(job)
                drained = len(claimed) < free
            if self._stopping.is_set():
                break
            if free > 0 and not drained:
                continue  # got all we asked for: more may be waiting
            if self.burst and not claimed and not self._tasks and self._db_backoff == 0:
                break
            # Sleep until new work may exist (an enqueue, a notification, the poll). A freed
            # slot wakes us too when we are full (the queue was not empty) and in burst mode
            # (to notice the end); otherwise claiming on every finished job would only find
            # the empty queue again.
            # (Set before the report's await: a job that finishes during it must wake us,
            # or a full worker sleeps a whole poll interval with free slots.)
            self._want_slot = self.burst or len(self._tasks) >= self.concurrency
            await self._report_done()
            timeout = self._db_backoff or poll
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout if timeout > 0 else None):
                    await self._wake.wait()
            self._want_slot = False

    async def _claim(self, n: int) -> list[Job]:
        # Fast path: claim without a job_type filter, which lets the database walk the
        # claim index in order (a type filter can make PostgreSQL sort every waiting job
        # when its statistics are stale). Jobs of a type this worker cannot run are given
        # back at once, attempt unburnt, and from then on this worker claims by type.
        filtered = self.job_types is not None or self._by_type
        types = self.claimable_types() if filtered else None
        limited = self._claimable_limited()
        try:
            if self._claim_lost:
                # The last claim was cut off in flight: it may have claimed jobs nobody
                # runs. Give them back now rather than after their lease.
                async with self.sessions() as db:
                    given = await queue.release_unrun(db, self.id, list(self._tasks))
                self._claim_lost = False
                if given:
                    log.warning("jobkit worker %s: gave back %s job(s) claimed by a claim cut "
                                "off in flight", self.id, given)
            if queue.claims_alone(self.engine, types, self.queues, limited):
                # The usual claim: one statement on the driver's connection, no session.
                jobs = await queue.claim_alone(self.engine, n, worker_id=self.id,
                                               lease_seconds=self.settings.lease_seconds,
                                               queues=self.queues)
            else:
                async with self.sessions() as db:
                    jobs = await queue.claim_jobs(db, n, worker_id=self.id,
                                                  lease_seconds=self.settings.lease_seconds,
                                                  job_types=types, queues=self.queues,
                                                  limited=limited)
            foreign = [] if filtered or self.claim_unknown else \
                [j for j in jobs if j.job_type not in self.handlers]
            if foreign:
                async with self.sessions() as db:
                    await queue.release_jobs(db, self.id, [j.id for j in foreign])
                    self._by_type = True
                    log.warning(
                        "jobkit worker %s has no handler for %s; left %s job(s) for a worker "
                        "that has one, and claims only %s from now on", self.id,
                        sorted({j.job_type for j in foreign}), len(foreign), sorted(self.handlers))
                    jobs = [j for j in jobs if j.job_type in self.handlers]
                    jobs += await queue.claim_jobs(
                        db, n - len(jobs), worker_id=self.id,
                        lease_seconds=self.settings.lease_seconds,
                        job_types=self.claimable_types(), queues=self.queues,
                        limited=limited)
        except DB_ERRORS as exc:
            # Its outcome unknown when the connection died under it (see release_unrun).
            self._claim_lost = self._claim_lost or bool(
                getattr(exc, "connection_invalidated", False))
            self._db_trouble("claim jobs", exc)
            return []
        self._db_ok()
        self.stats.claimed += len(jobs)
        return jobs

    def _db_trouble(self, what: str, exc: BaseException, retry_in: float | None = None) -> None:
        """Log a database failure with the truth about the next try.

        Claims back off exponentially (0.1 s doubling to 5 s); the heartbeat keeps its own
        interval (``retry_in``), so its leases are extended as soon as the database is back.
        """
        if retry_in is None:
            self._db_backoff = min(5.0, max(0.1, self._db_backoff * 2))
            retry_in = self._db_backoff
        log.warning("jobkit worker %s could not %s (%s); retrying in %.1fs", self.id, what,
                    describe_error(exc), retry_in)

    def _db_ok(self) -> None:
        if self._db_backoff:
            log.info("jobkit worker %s: database is back", self.id)
        self._db_backoff = 0.0

    def _start(self, job: Job) -> None:
        job_id = job.id
        task = asyncio.get_running_loop().create_task(self._run_one(job), name=f"job-{job_id}")
        tasks = self._tasks
        tasks[job_id] = task
        active = len(tasks) - len(self._ctx.batched)  # (those only wait for their record)
        if active > self.stats.max_active:
            self.stats.max_active = active
        task.add_done_callback(functools.partial(self._finished, job_id, job.job_type))

    def _slot_freed(self) -> None:
        if self._want_slot:
            self._wake.set()

    def _finished(self, job_id: uuid.UUID, job_type: str, _task: object = None) -> None:
        self._tasks.pop(job_id, None)
        self._ctx.finishing.discard(job_id)
        self._cancel_reason.pop(job_id, None)
        # A finished job of a limited type frees room under its limit: claim again at once
        # (no other worker hears of it before its next poll).
        if self._want_slot or job_type in self._limited:
            self._wake.set()

    async def _run_one(self, job: Job) -> dict[str, Any]:
        if self.events:
            await emit(self._ctx, "claimed", job, status="processing")
        try:
            # The handler's session is made only if the handler uses it (LazySession).
            async with LazySession(self.sessions) as db:
                summary = await run_job(job, db, self._ctx)
        except asyncio.CancelledError:
            reason = self._cancel_reason.get(job.id, "shutdown")
            if reason != "cancelled":
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            summary = await self._record_cancel(job)
        except DB_ERRORS as exc:
            log.error("Job %s: could not record its outcome (%s); its lease will recover it",
                      job.id, describe_error(exc))
            summary = summary_of(job, "unknown", None, 0, f"database error: {describe_error(exc)}")
        except Exception as exc:  # noqa: BLE001 - never let one job kill the worker
            log.exception("Job %s: unexpected worker error", job.id)
            summary = summary_of(job, "unknown", None, 0, describe_error(exc))
        self.stats.count(summary["status"])
        if summary["status"] == "retry":
            self._wake.set()  # it may be eligible again at once (backoff 0)
        if self.on_done is not None:
            try:
                self.on_done(summary)
            except Exception:  # noqa: BLE001
                log.exception("on_done callback failed")
        return summary

    async def _record_cancel(self, job: Job) -> dict[str, Any]:
        async with self.sessions() as db:
            status = await queue.fail_job(db, job, "cancelled", worker_id=self.id, permanent=True)
            await db.commit()
        log.warning("Job %s failed: %s", job.id, "cancelled")
        if status is None:
            return await lost_result(self._ctx, job, 0)
        await emit(self._ctx, "failed", job, status="failed", error="cancelled")
        return summary_of(job, "failed", None, 0, "cancelled")

    # -- heartbeat, leases, recovery ----------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            await self._maintenance()

    async def _maintenance(self) -> None:
        """Extend our leases, act on cancel requests and lost leases, beat, reap the dead."""
        try:
            async with self.sessions() as db:
                ids = list(self._tasks)
                held, cancel = await queue.extend_leases(db, self.id, ids,
                                                         self.settings.lease_seconds)
                for jid in ids:
                    task = self._tasks.get(jid)
                    if task is None or task.done():
                        continue
                    if jid in cancel:
                        self._cancel_reason[jid] = "cancelled"
                        task.cancel()
                    elif jid not in held and jid not in self._ctx.finishing:
                        # Not ours any more while its handler still runs: the lease expired
                        # and the job was reaped or taken over. (A job that just finished
                        # is no longer held either; that is not a takeover.)
                        self._cancel_reason[jid] = "lease lost"
                        log.warning("Job %s: lease lost; cancelling this attempt", jid)
                        task.cancel()
                await self._beat(db)
                self._limited = await queue.limited_types(db)
                await fail_blocked_by_failure(db)
                await db.commit()
                reaped = await queue.reap_expired(db)
                for r in reaped:
                    log.warning("Job %s: its worker was lost (lease expired); now %s",
                                r.id, r.status)
                    if self.events:
                        await self.events.emit("lost", {
                            "job_id": str(r.id), "job_type": r.job_type, "status": str(r.status),
                            "attempt": r.attempts, "max_attempts": r.max_attempts,
                            "error": r.error, "worker_id": self.id})
                await self._mark_dead(db)
        except DB_ERRORS as exc:
            self._db_trouble("heartbeat", exc, retry_in=self.settings.heartbeat_interval)
        else:
            self._db_ok()

    async def _report_done(self) -> None:
        """Keep the ``jobs_done`` of our ``workers`` row current for ``jobkit status``:
        written when the worker goes idle, and at most once a second while busy (the
        heartbeat alone would leave it up to a third of a lease behind)."""
        done = self.stats.jobs_done
        now = time.monotonic()
        if done == self._reported_done or (self._tasks and now - self._reported_at < 1.0):
            return
        self._reported_at = now
        try:
            async with self.sessions() as db:
                await queue.report_jobs_done(db, self.id, done)
            self._reported_done = done
        except DB_ERRORS as exc:
            log.debug("could not report jobs done (%s); the heartbeat will", describe_error(exc))

    async def _beat(self, db: AsyncSession) -> None:
        done = self.stats.jobs_done
        await queue.worker_heartbeat(db, self.id, done)
        self._reported_done = done

    async def _mark_dead(self, db: AsyncSession) -> None:
        n = await queue.mark_silent_workers_dead(db, self.settings.dead_after)
        if n:
            log.warning("marked %s silent worker(s) dead", n)

    async def _register(self) -> None:
        try:
            await self._insert_row()
        except DB_ERRORS as exc:
            raise JobkitError(
                f"worker cannot register itself in {redact_url(self.engine.url)}: {describe_error(exc)}. "
                "Check that the database is reachable and writable.") from None

    async def _insert_row(self) -> None:
        async with self.sessions() as db:
            await queue.register_worker(db, self.id, concurrency=self.concurrency,
                                        queues=self.queues)
        log.info("jobkit worker %s started (concurrency %s) on %s", self.id, self.concurrency,
                 redact_url(self.engine.url))

    async def _unregister(self) -> None:
        try:
            async with self.sessions() as db:
                await queue.mark_worker_stopped(db, self.id, self.stats.jobs_done)
        except DB_ERRORS as exc:
            log.warning("could not mark worker %s stopped: %s", self.id, describe_error(exc))

    # -- limits and schedules -------------------------------------------------------------
    def handler_queues(self) -> dict[str, str]:
        """The default queue of each handler that names one."""
        found = {name: handler_options(self.handlers, name).queue for name in self.handlers}
        return {k: v for k, v in found.items() if v is not None}

    async def _store_limits_and_schedules(self) -> None:
        """Store the limits of this worker's handlers and settings, and the schedules
        declared in code (``@jobkit.periodic``) for handlers it has."""
        from .schedules import PERIODIC, upsert_schedule

        limits = {name: opts.max_running for name in self.handlers
                  if (opts := handler_options(self.handlers, name)).max_running is not None}
        limits.update(self.settings.limits)
        try:
            async with self.sessions() as db:
                for job_type, n in limits.items():
                    await queue.set_limit(db, job_type, n)
                for spec in PERIODIC.values():
                    if spec.job_type in self.handlers:
                        await upsert_schedule(
                            db, spec.name, spec.job_type, spec.params, cron=spec.cron,
                            every=spec.every_seconds, queue_name=spec.queue,
                            priority=spec.priority)
        except DB_ERRORS as exc:
            self._db_trouble("store limits and schedules", exc)

    async def _schedule_loop(self) -> None:
        from .schedules import scheduler_loop

        await scheduler_loop(
            self.sessions, self._stopping, poll=max(self.settings.worker_poll_interval, 0.1),
            default_max_retries=self.settings.max_job_retries,
            handler_queues=self.handler_queues(),
            on_error=lambda exc: log.warning("jobkit worker %s: scheduler: %s", self.id,
                                             describe_error(exc)))

    # -- shutdown ------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        tasks = dict(self._tasks)
        if not tasks:
            return
        if not self._immediate.is_set():
            log.info("jobkit worker %s: waiting up to %gs for %s running job(s)", self.id,
                     self.settings.shutdown_grace_seconds, len(tasks))
            all_done = asyncio.ensure_future(asyncio.wait(list(tasks.values())))
            immediate = asyncio.ensure_future(self._immediate.wait())
            try:
                await asyncio.wait([all_done, immediate],
                                   timeout=self.settings.shutdown_grace_seconds,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                all_done.cancel()
                immediate.cancel()
        leftover = {jid: t for jid, t in tasks.items() if not t.done()}
        for jid, task in leftover.items():
            self._cancel_reason.setdefault(jid, "shutdown")
            task.cancel()
        if leftover:
            await asyncio.wait(leftover.values())
        if leftover:
            try:
                async with self.sessions() as db:
                    n = await queue.release_jobs(db, self.id, leftover)
                self.stats.released += n
                log.warning("jobkit worker %s: released %s unfinished job(s) at shutdown",
                            self.id, n)
            except DB_ERRORS as exc:
                log.error("could not release jobs at shutdown (%s); their leases will "
                          "recover them", describe_error(exc))

    # -- signals -------------------------------------------------------------------------
    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals_seen += 1
        self.stats.stopped_by = self.stats.stopped_by or sig.name
        immediate = self._signals_seen > 1 and sig == signal.SIGINT
        log.warning("jobkit worker %s: got %s, %s", self.id, sig.name,
                    "stopping now" if immediate else
                    f"finishing running jobs (grace {self.settings.shutdown_grace_seconds:g}s)")
        self.stop(immediate=immediate)

    # -- wake-up -------------------------------------------------------------------------
    async def _watch_loop(self) -> None:
        from .wakeup import watch

        await watch(self.engine, self._wake.set, self._stopping)


async def worker_loop(db: AsyncSession, *, settings: Settings | None = None,
                      concurrency: int | None = None, burst: bool = False,
                      handle_signals: bool = False) -> WorkerStats:
    """The original worker loop: claim, dispatch, record, forever (or until signalled).

    Runs a :class:`Worker` on ``db``'s engine; sleeps ``WORKER_POLL_INTERVAL`` when idle
    (and wakes sooner on a new job).
    """
    engine = db.bind
    if not isinstance(engine, AsyncEngine):
        raise TypeError("worker_loop(db) needs a session bound to an AsyncEngine")
    worker = Worker(engine, settings=settings, concurrency=concurrency, burst=burst,
                    handle_signals=handle_signals)
    return await worker.run()


__all__ = ["DB_ERRORS", "NO_JOBS", "Worker", "WorkerStats", "process_single_job", "run_job",
           "worker_loop"]
