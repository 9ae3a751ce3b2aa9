"""Job progress: ``await jobkit.report_progress(0.4, "decoding 12/30 s")`` from any handler.

The value is written to the job's row (``progress``, ``progress_message``,
``progress_at``) on its own short connection, outside the handler's transaction, so every
other process sees it while the job runs. Writes are:

* throttled: at most one every ``progress_interval`` seconds per job (a later value is
  written when the interval has passed, so the last one is never lost for long);
* fenced: ``WHERE id = :job AND locked_by = :worker AND attempts = :attempt AND status =
  'processing'``, so a worker that lost its lease cannot write;
* callable from a thread: code running in :func:`jobkit.run_blocking` (which copies the
  caller's context) may call ``jobkit.report_progress(...)`` without ``await``; the write
  is handed to the job's event loop.

The worker runs each handler inside :func:`tracking`; the claim clears the progress and
the completion sets it to 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Generator
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from .backends import backend_of
from .models import attempt_fence, jobs_table, utcnow

log = logging.getLogger("jobkit")

MESSAGE_MAX = 500

_current: contextvars.ContextVar[ProgressTracker | _Lazy | None] = contextvars.ContextVar(
    "jobkit_progress", default=None)
_background: set[asyncio.Task[Any]] = set()  # strong refs to writes handed to the loop


class Reported:
    """What :func:`report_progress` returns: await it in async code (True when the value
    was stored now, False when it was throttled for later or there is no job); ignore it
    in a thread."""

    __slots__ = ("_task", "_value")

    def __init__(self, value: bool = False, task: asyncio.Task[bool] | None = None) -> None:
        self._value = value
        self._task = task

    def __await__(self) -> Generator[Any, None, bool]:
        if self._task is None:
            return self._value
        return (yield from asyncio.shield(self._task).__await__())

    def __bool__(self) -> bool:  # so a thread can test it without awaiting
        return self._value or self._task is not None

    def __repr__(self) -> str:
        return f"<Reported {'pending' if self._task is not None else self._value}>"


class ProgressTracker:
    """The progress writer of ONE attempt of one job (see the module docstring)."""

    def __init__(self, engine: AsyncEngine, job_id: uuid.UUID, attempt: int, worker_id: str,
                 *, interval: float = 0.5, session: AsyncSession | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.engine = engine
        self.job_id = job_id
        self.attempt = attempt
        self.worker_id = worker_id
        self.interval = interval
        self.session = session
        self.loop = loop or asyncio.get_running_loop()
        self.lost = False        # a fenced write touched no row: this attempt is not ours
        self.closed = False
        self.writes = 0
        self._lock = threading.Lock()
        self._latest: tuple[float, str | None] | None = None
        self._written: tuple[float, str | None] | None = None
        self._last_write = -math.inf
        self._write_lock = asyncio.Lock()
        self._trailing: asyncio.Task[None] | None = None
        self._trail_sleeping = False  # only a sleeping trailing write may be cancelled
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return (f"<ProgressTracker job {self.job_id} attempt {self.attempt} "
                f"{self._latest} writes={self.writes}{' lost' if self.lost else ''}>")

    @property
    def latest(self) -> tuple[float, str | None] | None:
        return self._latest

    # -- entry points ----------------------------------------------------------------
    def report(self, fraction: float, message: str | None = None) -> Reported:
        value = _check(fraction, message)
        if self.closed or self.lost:
            return Reported(False)
        with self._lock:
            self._latest = value
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self.loop:  # a thread (run_blocking): hand the write to the loop
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing to report to
                self.loop.call_soon_threadsafe(self._schedule)
            return Reported(False)
        task = self._schedule()
        if task is None or self._may_wait_for_handler():
            return Reported(False)  # written later (or by the background task), not awaited
        return Reported(False, task)

    def _schedule(self) -> asyncio.Task[bool] | None:
        """On the loop: write now if the interval has passed, else make sure a trailing
        write will."""
        if self.closed or self.lost:
            return None
        wait = self._last_write + self.interval - time.monotonic()
        if wait > 0:
            if self._trailing is None or self._trailing.done():
                self._trailing = self._spawn(self._trail(wait))
            return None
        self._last_write = time.monotonic()
        return self._spawn(self._write())

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        for refs in (self._tasks, _background):
            refs.add(task)
            task.add_done_callback(refs.discard)
        return task

    async def _trail(self, wait: float) -> None:
        self._trail_sleeping = True
        try:
            await asyncio.sleep(wait)
        finally:
            self._trail_sleeping = False
        self._last_write = time.monotonic()
        await self._write()

    def _cancel_sleeping_trail(self) -> None:
        # A write in flight is never cancelled: cancelling a driver call mid-statement can
        # leave its pooled connection unusable for the next checkout.
        if self._trailing is not None and not self._trailing.done() and self._trail_sleeping:
            self._trailing.cancel()

    # -- the write -------------------------------------------------------------------
    async def _write(self) -> bool:
        async with self._write_lock:
            with self._lock:
                value = self._latest
            if value is None or value == self._written or self.lost or self.closed:
                return False  # closed: the job's outcome is being recorded; it sets progress
            fraction, message = value
            fence = attempt_fence(self.job_id, self.attempt, self.worker_id)
            try:
                async with self.engine.begin() as conn:
                    res = await conn.execute(update(jobs_table).where(fence).values(
                        progress=fraction, progress_message=message, progress_at=utcnow()))
            except Exception as exc:  # noqa: BLE001 - progress is advisory; the job goes on
                from .database import describe_error

                log.warning("Job %s: could not store its progress (%s)", self.job_id,
                            describe_error(exc))
                return False
            if res.rowcount != 1:
                self.lost = True
                if not self.closed:  # after close, the job simply finished first
                    log.warning("Job %s: progress not stored: this worker no longer holds "
                                "the job", self.job_id)
                return False
            self._written = value
            self.writes += 1
            return True

    async def flush(self) -> bool:
        """Write the latest value now, ignoring the throttle (tests, the end of a phase)."""
        self._cancel_sleeping_trail()
        self._last_write = time.monotonic()
        return await self._write()

    async def aclose(self) -> None:
        """Stop writing. Pending throttled writes are dropped; a write already running is
        awaited unless it could be waiting for the handler's own SQLite write lock."""
        self.closed = True
        self._cancel_sleeping_trail()
        running = [t for t in self._tasks if not t.done()]
        if not running or self._may_wait_for_handler():
            return
        await asyncio.wait(running)  # raises nothing of the writes; a new cancel propagates

    def _may_wait_for_handler(self) -> bool:
        if not backend_of(self.engine).SINGLE_WRITER or self.session is None:
            return False
        from .database import session_wrote

        return session_wrote(self.session)


def _check(fraction: float, message: str | None) -> tuple[float, str | None]:
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"progress fraction must be a number from 0 to 1, got {fraction!r}")
    value = float(fraction)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"progress fraction must be from 0 to 1, got {fraction!r}")
    if message is not None:
        message = str(message)
        if len(message) > MESSAGE_MAX:
            message = message[:MESSAGE_MAX - 1] + "…"
    return value, message


def report_progress(fraction: float, message: str | None = None) -> Reported:
    """Tell how far the running job has got: ``fraction`` from 0 to 1, and a short message.

    ``await jobkit.report_progress(0.5, "half way")`` in a handler; plain
    ``jobkit.report_progress(...)`` from code running in :func:`jobkit.run_blocking`.
    Outside a job it does nothing (returns False), so a function may report progress
    whether or not a worker runs it.

    Raises:
        ValueError / TypeError: ``fraction`` is not a number from 0 to 1.
    """
    tracker = current_tracker()
    if tracker is None:
        _check(fraction, message)
        return Reported(False)
    return tracker.report(fraction, message)


def current_tracker() -> ProgressTracker | None:
    """The progress tracker of the job running in this context, if any."""
    found = _current.get()
    return found.get() if isinstance(found, _Lazy) else found


class _Lazy:
    """A tracker made on the first report: most jobs never report, and a worker runs
    thousands of them a second."""

    __slots__ = ("args", "loop", "tracker", "token")

    def __init__(self, args: tuple[Any, ...]) -> None:
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.tracker: ProgressTracker | None = None
        self.token: contextvars.Token[Any] | None = None

    def get(self) -> ProgressTracker:
        if self.tracker is None:
            engine, job_id, attempt, worker_id, interval, session = self.args
            self.tracker = ProgressTracker(engine, job_id, attempt, worker_id,
                                           interval=interval, session=session, loop=self.loop)
        return self.tracker

    async def __aenter__(self) -> _Lazy:
        self.token = _current.set(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.token is not None:
            _current.reset(self.token)
        if self.tracker is not None:
            await self.tracker.aclose()


@contextlib.asynccontextmanager
async def tracking(engine: AsyncEngine, job_id: uuid.UUID, attempt: int, worker_id: str, *,
                   interval: float = 0.5,
                   session: AsyncSession | None = None) -> AsyncIterator[ProgressTracker]:
    """Make :func:`report_progress` write to this attempt of this job while the block runs."""
    tracker = ProgressTracker(engine, job_id, attempt, worker_id, interval=interval,
                              session=session)
    token = _current.set(tracker)
    try:
        yield tracker
    finally:
        _current.reset(token)
        await tracker.aclose()


def tracking_session(db: AsyncSession, job: Any, worker_id: str, *,
                     interval: float = 0.5) -> contextlib.AbstractAsyncContextManager[Any]:
    """:func:`tracking` for ``job`` run with ``db`` (a no-op when ``db`` is not bound to an
    engine, e.g. a session on one connection)."""
    if not isinstance(db.bind, AsyncEngine):
        return contextlib.nullcontext()
    return _Lazy((db.bind, job.id, job.attempts, worker_id, interval, db))


__all__ = ["ProgressTracker", "Reported", "current_tracker", "report_progress", "tracking",
           "tracking_session"]
