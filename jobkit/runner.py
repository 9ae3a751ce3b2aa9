"""The Runner: one object a notebook (or script) holds to drive jobkit."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from . import checks
from . import queue as queue_mod
from .backends import backend_of
from .config import Settings
from .database import attach_settings, create_engine, describe_error, init_schema, make_sessionmaker
from .dispatcher import DISPATCH_TABLE, Handler, check_job, handler_options, register_handler
from .errors import DatabaseURLError, InvalidParams, InvalidTransition, JobkitError, JobNotFound
from .events import Callback, EventBus
from .jsonutil import short_repr
from .models import Clip, Job, VideoAsset, new_id, utcnow
from .stats import queue_depth
from .urls import redact_url
from .worker import Worker, WorkerStats, process_single_job

log = logging.getLogger("jobkit")


class StepSummary(dict[str, Any]):
    """The summary dict of one processed job, with a readable display."""

    def __repr__(self) -> str:
        if not self.get("processed"):
            return f"<Step: {self.get('message')}>"
        err = f" error={self['error']!r}" if self.get("error") else ""
        return (f"<Step job {self['job_id']} {self['job_type']} → {self['status']} "
                f"in {self['processing_time_ms']}ms{err}>")

    def _repr_html_(self) -> str:
        from .display import summary_html

        return summary_html(self)


class Runner:
    """Engine, sessions, settings and handlers in one place.

    Open one with ``runner = await jobkit.open()``; use ``async with`` or
    ``await runner.close()`` when done.
    """

    def __init__(self, engine: AsyncEngine, settings: Settings,
                 handlers: dict[str, Handler] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.handlers = DISPATCH_TABLE if handlers is None else handlers
        self.sessions: async_sessionmaker[AsyncSession] = make_sessionmaker(engine)
        self.events = EventBus()
        self.last_step: StepSummary | None = None
        self._closed = False
        self._close_callbacks: list[Callable[[], object]] = []

    # -- lifecycle -----------------------------------------------------------------------
    async def close(self) -> None:
        """Release the database connections (a dashboard on this runner disables itself)."""
        if not self._closed:
            self._closed = True
            for callback in list(self._close_callbacks):
                try:
                    callback()
                except Exception:  # noqa: BLE001 - closing must not fail because of a view
                    log.exception("runner close callback %r failed", callback)
            self._close_callbacks.clear()
            await backend_of(self.engine).release(self.engine)
            await self.engine.dispose()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def on_close(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` when this runner closes (at once if it already has)."""
        if self._closed:
            callback()
        else:
            self._close_callbacks.append(callback)

    def off_close(self, callback: Callable[[], object]) -> None:
        """Forget a callback given to :meth:`on_close`."""
        if callback in self._close_callbacks:
            self._close_callbacks.remove(callback)

    async def __aenter__(self) -> Runner:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def backend(self) -> str:
        """``"postgresql"`` or ``"sqlite"``."""
        return backend_of(self.engine).NAME

    def __repr__(self) -> str:
        return f"<Runner {redact_url(self.engine.url)} handlers={sorted(self.handlers)}>"

    def _repr_html_(self) -> str:
        from .display import runner_html

        return runner_html(self)

    # -- handlers & events --------------------------------------------------------------
    def handler(self, name: str | None = None, *, replace: bool = False,
                queue: str | None = None, max_running: int | None = None) -> Any:
        """Decorator registering a handler in this runner's table (options as
        :func:`jobkit.handler`: its jobs' default ``queue``, a global ``max_running``)."""

        def decorate(fn: Handler) -> Handler:
            register_handler(name or fn.__name__, fn, replace=replace, table=self.handlers,
                             queue=queue, max_running=max_running)
            return fn

        return decorate

    def _queue_for(self, job_type: str, queue_name: str | None) -> str | None:
        if queue_name is not None:
            return queue_name
        return handler_options(self.handlers, job_type).queue

    def enable_alerts(self, url: str | None = None, **kwargs: Any) -> Any:
        """POST an alert to ``url`` (default ``JOBKIT_ALERT_URL``) for each job that ends
        ``failed`` in this runner's workers; see :func:`jobkit.alerts.enable_alerts`."""
        from .alerts import enable_alerts

        return enable_alerts(self, url, **kwargs)

    def on(self, event: str, callback: Callback) -> Callback:
        """Call ``callback(event, payload)`` on job events (claimed, completed, retried,
        failed, lost) of work run through this runner."""
        return self.events.on(event, callback)

    # -- enqueue ------------------------------------------------------------------------
    async def enqueue(self, job_type: str, params: Mapping[str, Any] | None = None, *,
                      priority: int = 0, run_at: datetime | None = None,
                      delay: float | None = None, max_retries: int | None = None,
                      timeout: float | None = None, dedupe_key: str | None = None,
                      allow_unknown: bool = False, queue: str | None = None,
                      after: Iterable[Any] | None = None) -> Job:
        """Add a pending job (see :func:`jobkit.queue.enqueue`).

        A type this runner has no handler for is refused with :class:`UnknownJobType`
        unless ``allow_unknown=True`` (a producer that does not import the handlers: only a
        worker that has one will claim it). A handler's own params check (``cut_analysis``
        needs a ``video_asset_id``) runs here too. ``job.deduplicated`` tells whether a
        ``dedupe_key`` returned an existing job.

        ``queue``: default the handler's queue, else ``"default"``. ``after``: jobs (or
        ids) that must complete first.
        """
        check_job(job_type, params, table=self.handlers, allow_unknown=allow_unknown)
        if dedupe_key is None and not after:  # the fast path: one statement, no ORM session
            row = queue_mod.build_job_row(
                job_type, params, priority=priority, run_at=run_at, delay=delay,
                max_retries=max_retries, timeout=timeout,
                default_max_retries=self.settings.max_job_retries,
                queue=self._queue_for(job_type, queue))
            return await queue_mod.insert_job(self.engine, row)
        async with self.sessions() as db:
            return await queue_mod.enqueue(
                db, job_type, params, priority=priority, run_at=run_at, delay=delay,
                max_retries=max_retries, timeout=timeout, dedupe_key=dedupe_key,
                default_max_retries=self.settings.max_job_retries,
                queue=self._queue_for(job_type, queue), after=after)

    async def enqueue_many(self, jobs: Iterable[Mapping[str, Any] | tuple[Any, ...]], *,
                           allow_unknown: bool = False) -> list[Job]:
        """Add many jobs in one round trip, all or nothing; types and params are checked as
        in :meth:`enqueue` before anything is written.

        Items are dicts of :meth:`enqueue`'s arguments or ``(job_type, params)`` tuples; an
        item's ``after`` may name earlier items by index, so a small pipeline is one call::

            await runner.enqueue_many([
                {"job_type": "fetch"},                      # 0
                {"job_type": "cut", "after": [0]},          # 1
                {"job_type": "score", "after": [0]},        # 2
                {"job_type": "publish", "after": [1, 2]},   # 3
            ])
        """
        items: list[Mapping[str, Any] | tuple[Any, ...]] = []
        # job_type -> its handler's queue, for the types checked once for all their items
        # (those whose handler has no params check of its own).
        checked: dict[str, str | None] = {}
        for i, item in enumerate(jobs):
            spec = dict(item) if isinstance(item, Mapping) else \
                dict(zip(("job_type", "params"), item, strict=False))
            job_type = spec.get("job_type")
            if type(job_type) is str and job_type in checked:
                found = checked[job_type]
            else:
                try:
                    check_job(job_type, spec.get("params"), table=self.handlers,
                              allow_unknown=allow_unknown)
                except InvalidParams as exc:
                    raise InvalidParams(exc.path, exc.problem, f"jobs[{i}].params") from None
                except InvalidTransition as exc:
                    raise InvalidTransition(f"jobs[{i}]: {exc}") from None
                found = self._queue_for(job_type, None) if isinstance(job_type, str) else None
                if type(job_type) is str and getattr(
                        self.handlers.get(job_type), "check_params", None) is None:
                    checked[job_type] = found
            if spec.get("queue") is None and found is not None:
                spec["queue"] = found
            items.append(spec)
        async with self.sessions() as db:
            return await queue_mod.enqueue_many(
                db, items, default_max_retries=self.settings.max_job_retries)

    async def upload_video(self, filename: str | os.PathLike[str], duration_ms: int | None = None,
                           *, priority: int = 0, stored_path: str | None = None,
                           size_bytes: int | None = None) -> tuple[VideoAsset, Job]:
        """Create a VideoAsset and its pending ``cut_analysis`` job in one transaction.

        ``upload_video("match.mp4", 60_000)`` registers a video by name only (its analysis
        is simulated). ``upload_video("videos/match.mp4")`` without a duration registers an
        existing file: its duration, size and frame size are probed from it (the ``video``
        extra) and ``cut_analysis`` decodes it. A file that is not a readable video within
        the ``video_max_*`` limits is refused here, and nothing is stored.
        """
        width = height = None
        fps = None
        if duration_ms is None and stored_path is None:
            info = await self.probe_video(filename)
            filename, duration_ms = os.path.basename(info.path), info.duration_ms
            stored_path, size_bytes = info.path, info.size_bytes
            width, height, fps = info.width, info.height, round(info.fps, 3)
        if isinstance(filename, os.PathLike):
            filename = os.fspath(filename)
        if not isinstance(filename, str):
            raise InvalidTransition(f"filename must be a string, got {short_repr(filename)}")
        try:
            checks.check_filename(filename)
        except ValueError as exc:
            raise InvalidTransition(str(exc)) from None
        if duration_ms is None:
            raise InvalidTransition("duration_ms is required with stored_path")
        if isinstance(duration_ms, bool) or not isinstance(duration_ms, int):
            raise InvalidTransition(
                f"duration_ms must be a whole number of milliseconds, got {short_repr(duration_ms)}")
        if duration_ms <= 0:
            raise InvalidTransition(f"duration_ms must be > 0, got {duration_ms}")
        if duration_ms > checks.INT32_MAX:
            raise InvalidTransition(f"duration_ms must be at most {checks.INT32_MAX} (about 24 "
                                    f"days), got {short_repr(duration_ms)}")
        asset = VideoAsset(id=new_id(), filename=filename, duration_ms=duration_ms,
                           stored_path=stored_path, size_bytes=size_bytes, width=width,
                           height=height, fps=fps, created_at=utcnow())
        async with self.sessions() as db:
            db.add(asset)
            await db.flush()
            job = await queue_mod.enqueue(db, "cut_analysis", {"video_asset_id": str(asset.id)},
                                          queue=self._queue_for("cut_analysis", None),
                                          priority=priority, commit=False,
                                          default_max_retries=self.settings.max_job_retries)
            await db.commit()
        return asset, job

    async def probe_video(self, path: str | os.PathLike[str]) -> Any:
        """A video file's :class:`jobkit.video.VideoInfo` (duration, size, frame rate), read in
        a thread; :class:`jobkit.video.VideoError` when it is not a video within the
        ``video_max_*`` limits."""
        from .blocking import run_blocking

        s = self.settings
        return await run_blocking(_probe_upload, os.fspath(path), s.video_max_width,
                                  s.video_max_height, s.video_max_seconds)

    # -- run ----------------------------------------------------------------------------
    async def step(self, *, job_types: list[str] | None = None,
                   queues: list[str] | str | None = None) -> StepSummary:
        """Process ONE job (``process_single_job``) and return its summary.

        Any type is claimed and an unknown one fails at once; pass ``job_types`` to claim
        only those, ``queues`` to claim only from those queues.
        """
        async with self.sessions() as db:
            summary = StepSummary(await process_single_job(
                db, settings=self.settings, handlers=self.handlers, events=self.events,
                job_types=job_types, queues=checks.check_queues(queues)))
        self.last_step = summary
        return summary

    def worker(self, *, concurrency: int | None = None, burst: bool = False,
               handle_signals: bool = False, queues: list[str] | str | None = None,
               **kwargs: Any) -> Worker:
        """A :class:`Worker` on this runner's database, handlers and events.

        ``queues``: serve only these queues (default: all).
        """
        return Worker(self.engine, settings=self.settings, concurrency=concurrency,
                      handlers=self.handlers, burst=burst, handle_signals=handle_signals,
                      events=self.events, queues=queues, **kwargs)

    async def drain(self, concurrency: int = 1, *, progress: bool | None = None,
                    handle_signals: bool = False,
                    queues: list[str] | str | None = None) -> WorkerStats:
        """Process jobs until nothing is eligible; returns what was done.

        ``progress``: show a progress bar (default: only in a notebook).
        ``handle_signals``: stop gracefully on SIGTERM/SIGINT, as ``work`` does (the
        command line's ``jobkit drain``); ``stats.stopped_by`` then names the signal.
        ``queues``: only the jobs of these queues.
        """
        from .notebook.progress import progress_bar

        checked = checks.check_queues(queues)
        async with self.sessions() as db:
            total = (await queue_depth(db, queues=checked))["eligible"]
        bar = progress_bar(total, progress)
        worker = self.worker(concurrency=concurrency, burst=True, handle_signals=handle_signals,
                             queues=checked,
                             on_done=(lambda s: bar.update(1)) if bar else None)
        try:
            stats = await worker.run()
        except BaseException:
            if bar:
                bar.close()
            raise
        if bar:
            bar.finish(stats)
        return stats

    async def work(self, concurrency: int | None = None, *, handle_signals: bool = False,
                   **kwargs: Any) -> WorkerStats:
        """Run a long-lived worker until it is stopped (or cancelled)."""
        return await self.worker(concurrency=concurrency, handle_signals=handle_signals,
                                 **kwargs).run()

    # -- inspect & control -------------------------------------------------------------
    async def get_job(self, job_id: uuid.UUID | str) -> Job:
        async with self.sessions() as db:
            return await queue_mod.get_job(db, job_id)

    async def get_asset(self, asset_id: uuid.UUID | str) -> VideoAsset:
        async with self.sessions() as db:
            asset = await db.get(VideoAsset, uuid.UUID(str(asset_id)))
        if asset is None:
            raise JobNotFound(asset_id)
        return asset

    async def clips_of(self, asset_id: uuid.UUID | str) -> list[Clip]:
        async with self.sessions() as db:
            rows = (await db.execute(select(Clip).where(
                Clip.video_asset_id == uuid.UUID(str(asset_id))).order_by(Clip.start_ms))).scalars()
            return list(rows)

    async def watch(self, job_id: uuid.UUID | str | Job, *, interval: float = 0.5,
                    progress: bool | None = None, timeout: float | None = None) -> Job:
        """Follow a job until it finishes and return it, showing a live progress bar of its
        ``progress`` and ``progress_message`` (in a notebook by default; ``progress=True``
        for a text bar in a terminal, ``False`` for none).

        The job is run by a worker elsewhere (another process, or a task of this loop such
        as ``asyncio.create_task(runner.drain())``); ``watch`` only reads. ``timeout``:
        give up after this many seconds (TimeoutError); the job is not touched.
        """
        from .models import TERMINAL
        from .notebook.progress import job_progress_bar

        jid = job_id.id if isinstance(job_id, Job) else job_id
        job = await self.get_job(jid)
        bar = job_progress_bar(job, progress)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if bar is not None:
                        bar.show(job)
                    if job.status in TERMINAL:
                        return job
                    await asyncio.sleep(interval)
                    job = await self.get_job(jid)
        finally:
            if bar is not None:
                bar.close()

    async def cancel(self, job_id: uuid.UUID | str) -> Job:
        """Cancel a waiting job (ends ``failed``/"cancelled"), or ask a running one to stop."""
        async with self.sessions() as db:
            return await queue_mod.cancel_job(db, job_id)

    async def retry_job(self, job_id: uuid.UUID | str) -> Job:
        """Send a failed job back to ``pending`` with fresh attempts."""
        async with self.sessions() as db:
            return await queue_mod.retry_job(db, job_id)

    async def set_limit(self, job_type: str, max_running: int | None) -> None:
        """At most ``max_running`` jobs of ``job_type`` run at once, across every worker
        (None removes the limit). Workers see a change at their next heartbeat."""
        async with self.sessions() as db:
            await queue_mod.set_limit(db, job_type, max_running)

    async def limits(self) -> dict[str, int]:
        """The per-type ``max_running`` limits stored in the database."""
        async with self.sessions() as db:
            found = await queue_mod.limited_types(db)
            await db.commit()
            return found

    # -- schedules ------------------------------------------------------------------------
    async def schedule(self, name: str, job_type: str, params: Mapping[str, Any] | None = None,
                       *, cron: str | None = None, every: timedelta | float | None = None,
                       queue: str | None = None, priority: int = 0,
                       paused: bool | None = None) -> dict[str, Any]:
        """Create (or redefine) a periodic job: each tick of ``cron`` (UTC) or of
        ``every`` enqueues one ``job_type`` job. Workers enqueue the ticks (each once);
        returns the stored schedule."""
        from .schedules import upsert_schedule

        # The handler's own params check, when this runner has the handler.
        check_job(job_type, params, table=self.handlers, allow_unknown=True)
        async with self.sessions() as db:
            return await upsert_schedule(db, name, job_type, params, cron=cron, every=every,
                                         queue_name=self._queue_for(job_type, queue),
                                         priority=priority, paused=paused)

    async def pause_schedule(self, name: str) -> dict[str, Any]:
        """Stop enqueueing a schedule's ticks until :meth:`resume_schedule`."""
        from .schedules import set_paused

        async with self.sessions() as db:
            return await set_paused(db, name, True)

    async def resume_schedule(self, name: str) -> dict[str, Any]:
        """Enqueue a paused schedule's ticks again, from the next one (the paused ones are
        skipped)."""
        from .schedules import set_paused

        async with self.sessions() as db:
            return await set_paused(db, name, False)

    async def remove_schedule(self, name: str) -> None:
        """Delete a schedule (the jobs it enqueued stay)."""
        from .schedules import remove_schedule

        async with self.sessions() as db:
            await remove_schedule(db, name)

    async def schedules(self) -> _pd.DataFrame:
        """One row per schedule: its job, timing, state, last and next tick."""
        from .notebook.frames import schedules_frame

        async with self._reading() as db:
            return await schedules_frame(db)

    # -- monitoring & notebook views ------------------------------------------------------
    # pandas, matplotlib and ipywidgets are imported only when these methods are called
    # (`import jobkit` stays light); the names below exist for type checkers only.
    from typing import TYPE_CHECKING as _TYPE_CHECKING

    if _TYPE_CHECKING:
        from datetime import timedelta as _timedelta

        import pandas as _pd

        from .explain import Explanation as _Explanation
        from .models import JobStatus as _JobStatus
        from .notebook.dashboard import Dashboard as _Dashboard

    def _reading(self) -> AsyncSession:
        db = self.sessions()
        attach_settings(db, self.settings)
        return db

    async def jobs(self, status: str | _JobStatus | Iterable[str | _JobStatus] | None = None,
                   job_type: str | Iterable[str] | None = None,
                   since: datetime | _timedelta | None = None,
                   limit: int | None = None,
                   queue: str | Iterable[str] | None = None) -> _pd.DataFrame:
        """One row per job with wait/run times (see :func:`jobkit.notebook.frames.jobs_frame`)."""
        from .notebook.frames import jobs_frame

        async with self._reading() as db:
            return await jobs_frame(db, status=status, job_type=job_type, since=since,
                                    limit=limit, queue=queue)

    async def dependencies(self, jobs: Iterable[Any] | None = None) -> _pd.DataFrame:
        """Dependency edges (``job_id`` waits for ``depends_on``), of ``jobs`` if given."""
        from .notebook.frames import dependencies_frame

        async with self._reading() as db:
            return await dependencies_frame(db, jobs)

    async def status_counts(self, *, by_queue: bool = False) -> Any:
        """Jobs per status, all five in lifecycle order, zeros included (a Series); with
        ``by_queue``, a DataFrame of one row per queue."""
        from .notebook.frames import queue_counts, status_counts

        async with self._reading() as db:
            return await (queue_counts(db) if by_queue else status_counts(db))

    async def queue_depth(self) -> _pd.Series:
        """Waiting jobs: ``eligible`` now vs ``scheduled`` for later."""
        from .notebook.frames import queue_depth

        async with self._reading() as db:
            return await queue_depth(db)

    async def recent_failures(self, limit: int = 10) -> _pd.DataFrame:
        """The most recently failed jobs, newest first, with their error's last line."""
        from .notebook.frames import recent_failures

        async with self._reading() as db:
            return await recent_failures(db, limit=limit)

    async def processing_stats(self) -> _pd.DataFrame:
        """Per job_type: count, failed, mean/p50/p95/max run time and mean wait (ms)."""
        from .notebook.frames import processing_stats

        async with self._reading() as db:
            return await processing_stats(db)

    async def throughput(self, freq: str = "1min",
                         since: datetime | _timedelta | None = None) -> _pd.DataFrame:
        """Completed and failed jobs per interval of ``freq`` (a pandas frequency)."""
        from .notebook.frames import throughput

        async with self._reading() as db:
            return await throughput(db, freq=freq, since=since)

    async def clips(self, video_asset_id: uuid.UUID | str | None = None, *,
                    latest_videos: int | None = None) -> _pd.DataFrame:
        """Clips with their video's filename (see :func:`jobkit.notebook.frames.clips_frame`);
        ``latest_videos=n`` keeps only the clips of the ``n`` latest videos."""
        from .notebook.frames import clips_frame

        async with self._reading() as db:
            return await clips_frame(db, video_asset_id=video_asset_id,
                                     latest_videos=latest_videos)

    async def running_progress(self) -> _pd.DataFrame:
        """The running jobs with their progress (see :func:`jobkit.notebook.frames.running_progress`)."""
        from .notebook.frames import running_progress

        async with self._reading() as db:
            return await running_progress(db)

    async def thumbnails(self, video_asset_id: uuid.UUID | str) -> Any:
        """One video's clip thumbnails with their scores, shown as a strip in a notebook."""
        from .display import thumbnail_strip
        from .notebook.frames import clip_thumbnails

        async with self._reading() as db:
            frame = await clip_thumbnails(db, video_asset_id)
        asset = await self.get_asset(video_asset_id)
        return thumbnail_strip(frame, f"{asset.filename}: {len(frame)} clips")

    async def worker_health(self, dead_after: float | None = None) -> _pd.DataFrame:
        """Registered workers with heartbeat age and a ``healthy`` flag."""
        from .notebook.frames import worker_health

        async with self._reading() as db:
            return await worker_health(db, dead_after=dead_after)

    async def explain(self, job_id: uuid.UUID | str, *, face: str = "python") -> _Explanation:
        """Why a job is not running, or what happened to it, in words (hints name Python
        calls; ``face="cli"``/``"http"`` name commands/routes instead)."""
        from .explain import explain_job

        async with self._reading() as db:
            return await explain_job(db, job_id, settings=self.settings, handlers=self.handlers,
                                     face=face)

    def dashboard(self, *, refresh_interval: float = 2.0, drain_concurrency: int = 4,
                  max_videos: int = 8) -> _Dashboard:
        """An ipywidgets dashboard: counts, queue depth, last step, the clips of the latest
        ``max_videos`` videos, and buttons (see :class:`jobkit.notebook.dashboard.Dashboard`)."""
        from .notebook.dashboard import Dashboard

        return Dashboard(self, refresh_interval=refresh_interval,
                         drain_concurrency=drain_concurrency, max_videos=max_videos)
    # -- end of monitoring & notebook views ------------------------------------------------


def _probe_upload(path: str, max_width: int, max_height: int, max_seconds: float) -> Any:
    """The probed :class:`jobkit.video.VideoInfo` of a file to upload (absolute path)."""
    if not os.path.isfile(path):
        raise InvalidTransition(
            f"no video file at {path!r}: give the path of an existing file, or a name and "
            "its duration_ms to register a video without a file")
    from .video import Limits, probe

    return probe(os.path.abspath(path), Limits(max_width, max_height, max_seconds))


async def open(url: str | None = None, *, settings: Settings | None = None,
               handlers: dict[str, Handler] | None = None, create_schema: bool = True,
               **overrides: Any) -> Runner:
    """Open a :class:`Runner` on ``url`` (default: ``JOBKIT_DATABASE_URL`` or ``./jobkit.db``).

    Creates the schema if needed. Extra keyword arguments override settings, e.g.
    ``await jobkit.open(cut_analysis_seconds=0.1)``.
    """
    try:
        settings = settings.replace(database_url=url, **overrides) if settings is not None \
            else Settings.from_env(database_url=url, **overrides)
        engine = create_engine(settings.database_url, settings=settings)
    except DatabaseURLError as exc:
        if url is None:
            raise
        # Name what the caller passed, not an environment variable they never set.
        raise DatabaseURLError("url", exc.value, exc.expected) from None
    try:
        if create_schema:
            await init_schema(engine, settings)
    except JobkitError:
        await engine.dispose()
        raise
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a driver traceback
        await engine.dispose()
        raise JobkitError(f"cannot open the database {redact_url(settings.database_url)}: "
                          f"{describe_error(exc)}") from None
    except BaseException:
        await engine.dispose()
        raise
    return Runner(engine, settings, handlers)
