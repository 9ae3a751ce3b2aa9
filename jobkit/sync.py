"""jobkit from synchronous code (a Flask or Django view, a plain script): :class:`SyncRunner`.

It runs an ordinary :class:`~jobkit.Runner` on a private event loop in a background
thread, and each method hands its coroutine to that loop and waits for the answer. So
validation, errors and SQL are exactly the async API's, and any number of threads may
call it at once (each call is one task on the loop; the connection pool serves them).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import Future
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

from .errors import JobkitError
from .models import Job

T = TypeVar("T")

__all__ = ["SyncRunner", "connect_sync"]


class SyncRunner:
    """The blocking face of a :class:`~jobkit.Runner`. Open it with :func:`connect_sync`.

    Use it as a context manager, or call :meth:`close` when done. Do not call it from
    inside a coroutine: use the async :class:`~jobkit.Runner` there.
    """

    def __init__(self, url: str | None = None, **overrides: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="jobkit-sync",
                                        daemon=True)
        self._thread.start()
        self._closed = False
        from .runner import open as open_runner

        try:
            self.runner = self._call(open_runner(url, **overrides))
        except BaseException:
            self._stop_loop()
            raise

    # -- plumbing -----------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise JobkitError("SyncRunner was called from its own event loop; await the "
                              "async Runner (sync_runner.runner) there instead")
        if self._closed and getattr(self, "runner", None) is not None:
            coro.close()
            raise JobkitError("this SyncRunner is closed; open another with "
                              "jobkit.connect_sync(url)")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def close(self) -> None:
        """Release the database connections and stop the background thread."""
        if self._closed:
            return
        try:
            self._call(self.runner.close())
        finally:
            self._closed = True
            self._stop_loop()

    def __enter__(self) -> SyncRunner:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SyncRunner {state} {self.runner!r}>"

    @property
    def backend(self) -> str:
        return self.runner.backend

    # -- the API ------------------------------------------------------------------------
    def enqueue(self, job_type: str, params: Mapping[str, Any] | None = None, *,
                priority: int = 0, run_at: datetime | None = None, delay: float | None = None,
                max_retries: int | None = None, timeout: float | None = None,
                dedupe_key: str | None = None, queue: str | None = None,
                after: Iterable[Any] | None = None) -> Job:
        """Add a pending job (see :meth:`jobkit.Runner.enqueue`)."""
        return self._call(self.runner.enqueue(
            job_type, params, priority=priority, run_at=run_at, delay=delay,
            max_retries=max_retries, timeout=timeout, dedupe_key=dedupe_key, queue=queue,
            after=after))

    def enqueue_many(self, jobs: Iterable[Mapping[str, Any] | tuple[Any, ...]]) -> list[Job]:
        """Add many jobs in one round trip, all or nothing (``after`` may name earlier
        items by index)."""
        return self._call(self.runner.enqueue_many(list(jobs)))

    def get_job(self, job_id: uuid.UUID | str) -> Job:
        return self._call(self.runner.get_job(job_id))

    def cancel(self, job_id: uuid.UUID | str) -> Job:
        """Cancel a waiting job, or ask a running one to stop."""
        return self._call(self.runner.cancel(job_id))

    def retry_job(self, job_id: uuid.UUID | str) -> Job:
        """Send a failed job back to ``pending`` (and the jobs that failed with it)."""
        return self._call(self.runner.retry_job(job_id))

    def status_counts(self) -> dict[str, int]:
        """Jobs per status, every status present, in lifecycle order (no pandas needed)."""
        from . import stats

        async def counts() -> dict[str, int]:
            async with self.runner.sessions() as db:
                found = await stats.jobs_per_status(db)
                await db.commit()
                return found

        return self._call(counts())

    def explain(self, job_id: uuid.UUID | str) -> Any:
        """Why a job is in its state, in words (see :meth:`jobkit.Runner.explain`)."""
        return self._call(self.runner.explain(job_id))

    def schedule(self, name: str, job_type: str, params: Mapping[str, Any] | None = None,
                 *, cron: str | None = None, every: timedelta | float | None = None,
                 queue: str | None = None, priority: int = 0) -> dict[str, Any]:
        """Create (or redefine) a periodic job (see :meth:`jobkit.Runner.schedule`)."""
        return self._call(self.runner.schedule(name, job_type, params, cron=cron, every=every,
                                               queue=queue, priority=priority))


def connect_sync(url: str | None = None, **overrides: Any) -> SyncRunner:
    """A :class:`SyncRunner` on ``url`` (default ``JOBKIT_DATABASE_URL`` or ./jobkit.db)."""
    return SyncRunner(url, **overrides)
