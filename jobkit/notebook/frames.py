"""Monitoring frames: pandas over jobkit's tables (also importable as ``jobkit.monitoring``).

Every helper takes an :class:`~sqlalchemy.ext.asyncio.AsyncSession` and returns a
tidy DataFrame (or Series) with stable dtypes, also when there is nothing to show:

- datetimes are timezone-aware UTC (``datetime64[us, UTC]``);
- ``status`` is a categorical with the five states in lifecycle order
  (:data:`jobkit.models.ALL_STATUSES`), so counts and plots keep that order;
- counts are ``int64``; durations are ``float64`` milliseconds (``NaN`` when not
  applicable, e.g. the run time of a job still waiting).

The helpers only read; they never commit the session they are given. pandas is
imported in :mod:`jobkit.notebook` (here, the plots and the dashboard) and nowhere else.
"""

from __future__ import annotations

from ..extras import require

require("jobkit.notebook.frames", 'pandas')

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import Select, and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import stats
from ..backends import backend_of
from ..database import settings_of
from ..errors import last_line
from ..models import (
    ALL_STATUSES,
    JobStatus,
    is_worker_alive,
    jobs_table,
    utcnow,
    workers_table,
)
from ..models import Clip as _Clip
from ..models import VideoAsset as _VideoAsset

__all__ = [
    "STATUS_DTYPE", "Counts", "clip_thumbnails", "clips_frame", "jobs_frame",
    "processing_stats", "queue_depth", "recent_failures", "running_progress",
    "status_counts", "throughput", "videos_with_clips", "worker_health",
]

#: The dtype of every ``status`` column: the five states, ordered as the lifecycle.
STATUS_DTYPE = pd.CategoricalDtype([s.value for s in ALL_STATUSES], ordered=True)
#: The dtype of every datetime column.
DATETIME_DTYPE = "datetime64[us, UTC]"
# pandas' own default for text (``str`` on pandas 3, ``object`` before).
_STR_DTYPE = pd.Series(["x"]).dtype

_clips = _Clip.__table__
_assets = _VideoAsset.__table__


if TYPE_CHECKING:
    _IntSeries = pd.Series[int]
else:
    _IntSeries = pd.Series


class Counts(_IntSeries):
    """A Series of counts that a notebook shows as a small table like jobkit's other views
    (coloured status headers), not as plain ``Name: jobs, dtype: int64`` text. It is a
    ``pandas.Series`` in every other way; what you derive from it is a plain Series."""

    @property
    def _constructor(self) -> type[pd.Series]:  # type: ignore[override]
        return pd.Series

    def _repr_html_(self) -> str:
        from ..display import counts_html

        return counts_html(self)


# ---------------------------------------------------------------------------
# Building frames with stable dtypes
# ---------------------------------------------------------------------------
def _column(values: list[Any], kind: str) -> pd.Series:
    if kind == "datetime":
        return pd.Series(pd.to_datetime(values, utc=True), dtype=DATETIME_DTYPE)
    if kind == "status":
        return pd.Series(pd.Categorical([None if v is None else str(v) for v in values],
                                        dtype=STATUS_DTYPE))
    if kind == "int":
        return pd.Series(values, dtype="int64")
    if kind == "float":
        return pd.Series([float("nan") if v is None else float(v) for v in values],
                         dtype="float64")
    if kind == "bool":
        return pd.Series(values, dtype="bool")
    if kind == "str":
        return pd.Series([None if v is None else str(v) for v in values], dtype=_STR_DTYPE)
    return pd.Series(values, dtype="object")


def _frame(records: Sequence[Mapping[Any, Any]], schema: Mapping[str, str]) -> pd.DataFrame:
    """A DataFrame with exactly ``schema``'s columns and dtypes (also when empty)."""
    return pd.DataFrame({col: _column([r[col] for r in records], kind)
                         for col, kind in schema.items()})


def _ms(later: pd.Series, earlier: pd.Series) -> pd.Series:
    return ((later - earlier).dt.total_seconds() * 1000.0).astype("float64")


# ---------------------------------------------------------------------------
# Argument checks: bad input gets a clear error
# ---------------------------------------------------------------------------
def _statuses(status: str | JobStatus | Iterable[str | JobStatus]) -> list[str]:
    items = [status] if isinstance(status, str | JobStatus) else list(status)
    valid = [s.value for s in ALL_STATUSES]
    out = []
    for item in items:
        value = item.value if isinstance(item, JobStatus) else item
        if value not in valid:
            raise ValueError(f"unknown status {item!r}; choose from {', '.join(valid)}")
        out.append(value)
    return out


def _since(since: datetime | timedelta) -> datetime:
    if isinstance(since, timedelta):
        return utcnow() - since
    if isinstance(since, datetime):
        if since.tzinfo is None:
            raise ValueError(f"since={since!r} is naive; pass a timezone-aware datetime "
                             "(e.g. datetime.now(UTC) - timedelta(hours=1)) or a timedelta")
        return since
    raise TypeError(f"since must be a datetime or a timedelta, got {since!r}")


def _positive_int(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------
JOBS_SCHEMA = {
    "id": "str", "job_type": "str", "status": "status", "priority": "int", "attempts": "int",
    "max_attempts": "int", "created_at": "datetime", "run_at": "datetime",
    "started_at": "datetime", "finished_at": "datetime", "locked_by": "str", "error": "str",
    "params": "object", "queue": "str",
}


async def jobs_frame(db: AsyncSession, status: str | JobStatus | Iterable[str | JobStatus] | None = None,
                     job_type: str | Iterable[str] | None = None,
                     since: datetime | timedelta | None = None,
                     limit: int | None = None,
                     queue: str | Iterable[str] | None = None) -> pd.DataFrame:
    """One row per job, oldest first, with its wait and run times.

    Args:
        status: keep only jobs in this status (or these statuses).
        job_type: keep only jobs of this type (or these types).
        since: keep jobs created at or after this (aware) datetime, or within this timedelta.
        limit: keep only the ``limit`` most recent jobs (still shown oldest first).
        queue: keep only jobs of this queue (or these queues).

    Returns:
        Columns ``id, job_type, status, priority, attempts, max_attempts, created_at,
        run_at, started_at, finished_at, wait_ms, run_ms, locked_by, error, params, queue``.
        ``wait_ms`` is created → started and ``run_ms`` is started → finished, both of the
        latest attempt (``started_at`` is stamped at every claim); ``error`` is the last
        line of the stored error.
    """
    _positive_int("limit", limit)
    stmt: Select[Any] = select(*(jobs_table.c[c] for c in JOBS_SCHEMA))
    if status is not None:
        stmt = stmt.where(jobs_table.c.status.in_(_statuses(status)))
    if job_type is not None:
        types = [job_type] if isinstance(job_type, str) else list(job_type)
        stmt = stmt.where(jobs_table.c.job_type.in_(types))
    if queue is not None:
        queues = [queue] if isinstance(queue, str) else list(queue)
        stmt = stmt.where(jobs_table.c.queue.in_(queues))
    if since is not None:
        stmt = stmt.where(jobs_table.c.created_at >= _since(since))
    stmt = stmt.order_by(jobs_table.c.created_at.desc(), jobs_table.c.id.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    rows = [dict(r) for r in (await db.execute(stmt)).mappings()]
    rows.reverse()
    for r in rows:
        r["error"] = last_line(r["error"])
    df = _frame(rows, JOBS_SCHEMA)
    df.insert(10, "wait_ms", _ms(df["started_at"], df["created_at"]))
    df.insert(11, "run_ms", _ms(df["finished_at"], df["started_at"]))
    return df


async def status_counts(db: AsyncSession) -> pd.Series:
    """Jobs per status: all five states in lifecycle order, zeros included (``int64``)."""
    found = await stats.jobs_per_status(db)
    index = pd.CategoricalIndex(STATUS_DTYPE.categories, dtype=STATUS_DTYPE, name="status")
    return Counts([found[s] for s in index], index=index, dtype="int64", name="jobs")


async def queue_counts(db: AsyncSession) -> pd.DataFrame:
    """Jobs per queue (index, sorted) and status (columns, all five), zeros included."""
    per_queue = await stats.jobs_per_queue(db)
    columns = [s.value for s in JobStatus]
    df = pd.DataFrame(0, index=pd.Index(list(per_queue), name="queue"), columns=columns,
                      dtype="int64")
    for q, counts in per_queue.items():
        df.loc[q, columns] = [counts[c] for c in columns]
    return df


async def dependencies_frame(db: AsyncSession,
                             job_ids: Iterable[Any] | None = None) -> pd.DataFrame:
    """Dependency edges: ``job_id`` waits for ``depends_on`` (ids as text); only those of
    ``job_ids`` (on either end) when given."""
    from ..models import dependencies_table

    d = dependencies_table.c
    stmt = select(d.job_id, d.depends_on).order_by(d.job_id, d.depends_on)
    if job_ids is not None:
        wanted = [uuid.UUID(str(getattr(j, "id", j))) for j in job_ids]
        stmt = stmt.where(d.job_id.in_(wanted) | d.depends_on.in_(wanted))
    rows = [dict(r) for r in (await db.execute(stmt)).mappings()]
    return _frame(rows, {"job_id": "str", "depends_on": "str"})


async def schedules_frame(db: AsyncSession) -> pd.DataFrame:
    """One row per schedule: name, job_type, queue, timing (cron or every), paused, the
    last tick enqueued, the next tick, and the last job's id."""
    from ..schedules import list_schedules

    rows = []
    for r in await list_schedules(db):
        rows.append({
            "name": r["name"], "job_type": r["job_type"], "queue": r["queue"] or "",
            "timing": (f"cron {r['cron']}" if r["cron"] else f"every {r['every_seconds']:g} s"),
            "paused": bool(r["paused"]), "last_tick_at": r["last_tick_at"],
            "next_tick_at": r["next_tick_at"],
            "last_job_id": None if r["last_job_id"] is None else str(r["last_job_id"]),
            "params": r["params"]})
    return _frame(rows, {"name": "str", "job_type": "str", "queue": "str", "timing": "str",
                         "paused": "bool", "last_tick_at": "datetime",
                         "next_tick_at": "datetime", "last_job_id": "str", "params": "object"})


async def queue_depth(db: AsyncSession) -> pd.Series:
    """Jobs waiting to be claimed: ``eligible`` now vs ``scheduled`` for later (``int64``).

    A job waits when it is ``pending`` or ``retry``; it is eligible once its ``run_at``
    has passed (by the clock the queue claims with).
    """
    found = await stats.queue_depth(db)
    index = pd.Index(["eligible", "scheduled"], name="queue")
    return Counts([found[k] for k in index], index=index, dtype="int64", name="jobs")


FAILURES_SCHEMA = {
    "id": "str", "job_type": "str", "attempts": "int", "max_attempts": "int",
    "finished_at": "datetime", "error": "str", "params": "object",
}


async def recent_failures(db: AsyncSession, limit: int = 10) -> pd.DataFrame:
    """The ``limit`` most recently failed jobs, newest first, with their error's last line."""
    _positive_int("limit", limit)
    rows = [{c: getattr(job, c) for c in FAILURES_SCHEMA}
            for job in await stats.recent_failures(db, limit=limit)]
    for r in rows:
        r["error"] = last_line(r["error"])
    return _frame(rows, FAILURES_SCHEMA)


STATS_COLUMNS = {"count": "int64", "failed": "int64", "mean_ms": "float64",
                 "p50_ms": "float64", "p95_ms": "float64", "max_ms": "float64",
                 "mean_wait_ms": "float64"}


async def processing_stats(db: AsyncSession) -> pd.DataFrame:
    """Run-time statistics per ``job_type`` (index), over finished jobs.

    Columns: ``count`` (completed jobs), ``failed`` (failed jobs), ``mean_ms``,
    ``p50_ms``, ``p95_ms``, ``max_ms`` (run time of the completed jobs' successful
    attempt, percentiles interpolated linearly) and ``mean_wait_ms`` (created → started
    of those jobs), rounded to 0.1 ms. Statistics are ``NaN`` for a type with no completed job.
    """
    rows = (await db.execute(
        select(jobs_table.c.job_type, jobs_table.c.status, jobs_table.c.created_at,
               jobs_table.c.started_at, jobs_table.c.finished_at)
        .where(jobs_table.c.status.in_((JobStatus.COMPLETED.value, JobStatus.FAILED.value)))
    )).mappings().all()
    df = _frame(rows, {"job_type": "str", "status": "status", "created_at": "datetime",
                       "started_at": "datetime", "finished_at": "datetime"})
    types = sorted(df["job_type"].unique())
    out = pd.DataFrame({c: pd.Series(index=pd.Index(types, dtype=_STR_DTYPE), dtype=t)
                        for c, t in STATS_COLUMNS.items()})
    out.index.name = "job_type"
    if not types:
        return out
    done = df[df["status"] == JobStatus.COMPLETED.value].assign(
        run_ms=lambda d: _ms(d["finished_at"], d["started_at"]),
        wait_ms=lambda d: _ms(d["started_at"], d["created_at"]))
    runs = done.groupby("job_type")["run_ms"]
    out["count"] = done.groupby("job_type").size().reindex(types, fill_value=0).astype("int64")
    out["failed"] = (df[df["status"] == JobStatus.FAILED.value].groupby("job_type").size()
                     .reindex(types, fill_value=0).astype("int64"))
    out["mean_ms"] = runs.mean().reindex(types).astype("float64")
    out["p50_ms"] = runs.quantile(0.5).reindex(types).astype("float64")
    out["p95_ms"] = runs.quantile(0.95).reindex(types).astype("float64")
    out["max_ms"] = runs.max().reindex(types).astype("float64")
    out["mean_wait_ms"] = done.groupby("job_type")["wait_ms"].mean().reindex(types).astype("float64")
    # Milliseconds to one decimal: the clocks behind them are not finer than that.
    floats = [c for c, t in STATS_COLUMNS.items() if t == "float64"]
    out[floats] = out[floats].round(1)
    return out


def _check_freq(freq: str | pd.DateOffset | timedelta) -> Any:
    from pandas.tseries.frequencies import to_offset

    try:
        offset = to_offset(freq)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"freq={freq!r} is not a pandas frequency; use e.g. '10s', '1min', "
                         f"'1h' ({exc})") from None
    if offset is None:
        raise ValueError(f"freq={freq!r} is not a pandas frequency; use e.g. '1min'")
    return offset


async def throughput(db: AsyncSession, freq: str | pd.DateOffset | timedelta = "1min",
                     since: datetime | timedelta | None = None) -> pd.DataFrame:
    """Finished jobs per time interval: columns ``completed`` and ``failed`` (``int64``).

    The index holds each interval's start (``finished_at``, UTC), one row per interval
    from the first finish to the last, zeros included; intervals are aligned to midnight
    UTC (``"1min"`` buckets start on the minute).
    """
    offset = _check_freq(freq)
    stmt = (select(jobs_table.c.status, jobs_table.c.finished_at)
            .where(jobs_table.c.status.in_((JobStatus.COMPLETED.value, JobStatus.FAILED.value)),
                   jobs_table.c.finished_at.is_not(None)))
    if since is not None:
        stmt = stmt.where(jobs_table.c.finished_at >= _since(since))
    rows = (await db.execute(stmt)).mappings().all()
    df = _frame(rows, {"status": "status", "finished_at": "datetime"})
    columns = [JobStatus.COMPLETED.value, JobStatus.FAILED.value]
    if df.empty:
        index = pd.DatetimeIndex([], dtype=DATETIME_DTYPE, name="finished_at")
        return pd.DataFrame({c: pd.Series(index=index, dtype="int64") for c in columns})
    counts = pd.crosstab(df["finished_at"].dt.floor(offset), df["status"].astype(str))
    start, end = counts.index.min(), counts.index.max()
    full = pd.date_range(start, end, freq=offset, name="finished_at")
    out = counts.reindex(index=full, columns=columns, fill_value=0).astype("int64")
    out.index = out.index.astype(DATETIME_DTYPE)
    out.index.name = "finished_at"
    out.columns.name = None
    return out


# ---------------------------------------------------------------------------
# Clips
# ---------------------------------------------------------------------------
CLIPS_SCHEMA = {
    "clip_id": "str", "video_asset_id": "str", "filename": "str", "video_duration_ms": "int",
    "job_id": "str", "start_ms": "int", "end_ms": "int", "visual_score": "float",
    "created_at": "datetime",
}


async def clips_frame(db: AsyncSession, video_asset_id: uuid.UUID | str | None = None, *,
                      latest_videos: int | None = None) -> pd.DataFrame:
    """Every clip with its video's filename, ordered by video (upload order) then start.

    Args:
        video_asset_id: only this video's clips.
        latest_videos: only the clips of the ``latest_videos`` most recently uploaded
            videos that have clips (a bounded view, e.g. for the dashboard).

    Returns:
        Columns ``clip_id, video_asset_id, filename, video_duration_ms, job_id,
        clip_index, start_ms, end_ms, visual_score, is_best, created_at``;
        ``clip_index`` counts from 0 within a video and ``is_best`` marks each video's
        highest-scoring clip (the earliest one on a tie).
    """
    stmt = (select(_clips.c.id.label("clip_id"), _clips.c.video_asset_id, _assets.c.filename,
                   _assets.c.duration_ms.label("video_duration_ms"), _clips.c.job_id,
                   _clips.c.start_ms, _clips.c.end_ms, _clips.c.visual_score,
                   _clips.c.created_at)
            .join(_assets, _assets.c.id == _clips.c.video_asset_id)
            .order_by(_assets.c.created_at, _assets.c.id, _clips.c.start_ms, _clips.c.id))
    if video_asset_id is not None:
        try:
            asset_uuid = (video_asset_id if isinstance(video_asset_id, uuid.UUID)
                          else uuid.UUID(str(video_asset_id)))
        except ValueError:
            raise ValueError(f"video_asset_id {video_asset_id!r} is not a valid UUID") from None
        stmt = stmt.where(_clips.c.video_asset_id == asset_uuid)
    if latest_videos is not None:
        _positive_int("latest_videos", latest_videos)
        latest = (select(_assets.c.id)
                  .where(select(_clips.c.id).where(_clips.c.video_asset_id == _assets.c.id)
                         .exists())
                  .order_by(_assets.c.created_at.desc(), _assets.c.id.desc())
                  .limit(latest_videos).scalar_subquery())
        stmt = stmt.where(_clips.c.video_asset_id.in_(latest))
    rows = (await db.execute(stmt)).mappings().all()
    df = _frame(rows, CLIPS_SCHEMA)
    by_video = df.groupby("video_asset_id", sort=False)
    df.insert(5, "clip_index", by_video.cumcount().astype("int64"))
    best = by_video["visual_score"].idxmax() if len(df) else pd.Series(dtype="int64")
    df.insert(9, "is_best", df.index.isin(list(best)))
    return df


THUMBNAILS_SCHEMA = {
    "clip_id": "str", "start_ms": "int", "end_ms": "int", "visual_score": "float",
    "thumbnail": "object",
}


async def clip_thumbnails(db: AsyncSession, video_asset_id: uuid.UUID | str) -> pd.DataFrame:
    """One video's clips in order with their JPEG ``thumbnail`` bytes (None for clips of a
    simulated analysis). Show them with :func:`jobkit.display.thumbnail_strip`."""
    try:
        asset_uuid = (video_asset_id if isinstance(video_asset_id, uuid.UUID)
                      else uuid.UUID(str(video_asset_id)))
    except ValueError:
        raise ValueError(f"video_asset_id {video_asset_id!r} is not a valid UUID") from None
    rows = (await db.execute(
        select(_clips.c.id.label("clip_id"), _clips.c.start_ms, _clips.c.end_ms,
               _clips.c.visual_score, _clips.c.thumbnail)
        .where(_clips.c.video_asset_id == asset_uuid)
        .order_by(_clips.c.start_ms, _clips.c.id))).mappings().all()
    return _frame(rows, THUMBNAILS_SCHEMA)


# ---------------------------------------------------------------------------
# Running jobs and their progress
# ---------------------------------------------------------------------------
PROGRESS_SCHEMA = {
    "job_id": "str", "job_type": "str", "worker_id": "str", "started_at": "datetime",
    "running_s": "float", "progress": "float", "progress_message": "str",
    "progress_at": "datetime",
}


async def running_progress(db: AsyncSession) -> pd.DataFrame:
    """The ``processing`` jobs, oldest first, with how far each has got.

    ``progress`` is NaN for a job that has not reported any (see
    :func:`jobkit.report_progress`); ``running_s`` counts from the attempt's start.
    """
    rows = [dict(r) for r in (await db.execute(
        select(jobs_table.c.id.label("job_id"), jobs_table.c.job_type,
               jobs_table.c.locked_by.label("worker_id"), jobs_table.c.started_at,
               jobs_table.c.progress, jobs_table.c.progress_message, jobs_table.c.progress_at)
        .where(jobs_table.c.status == JobStatus.PROCESSING.value)
        .order_by(jobs_table.c.started_at, jobs_table.c.id))).mappings()]
    now = await backend_of(db).clock(db)
    for r in rows:
        r["running_s"] = (now - r["started_at"]).total_seconds() if r["started_at"] else None
    return _frame(rows, PROGRESS_SCHEMA)


async def videos_with_clips(db: AsyncSession) -> int:
    """How many videos have at least one clip."""
    return int((await db.execute(
        select(func.count(func.distinct(_clips.c.video_asset_id))))).scalar_one())


# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------
WORKERS_SCHEMA = {
    "worker_id": "str", "hostname": "str", "pid": "int", "concurrency": "int", "state": "str",
    "jobs_done": "int", "running_jobs": "int", "started_at": "datetime",
    "last_heartbeat_at": "datetime", "heartbeat_age_s": "float", "healthy": "bool",
    "verdict": "str",
}


async def _has_table(db: AsyncSession, name: str) -> bool:
    conn = await db.connection()
    return bool(await conn.run_sync(lambda c: c.dialect.has_table(c, name)))


def _dead_after(db: AsyncSession, dead_after: float | None) -> float:
    if dead_after is not None:
        if not dead_after > 0:
            raise ValueError(f"dead_after must be a number of seconds > 0, got {dead_after!r}")
        return float(dead_after)
    return settings_of(db).dead_after


async def worker_health(db: AsyncSession, dead_after: float | None = None) -> pd.DataFrame:
    """Workers that registered in the ``workers`` table, with a health verdict.

    ``healthy`` is False only for a worker in trouble: one that should be running but
    whose last heartbeat is ``dead_after`` seconds old or older (default: the settings'
    ``dead_after``, read from ``db.info['jobkit.settings']`` or the environment), or one
    that the reaper marked ``dead``. A worker that stopped cleanly (``stopped``) is
    healthy: it simply is not running. ``verdict`` says the same in words (``running``,
    ``stopped``, ``no heartbeat for 75 s``, ``dead``). ``running_jobs`` counts the
    ``processing`` jobs it holds. A database without the table gives an empty frame.
    """
    limit = _dead_after(db, dead_after)
    if not await _has_table(db, workers_table.name):
        return _frame([], WORKERS_SCHEMA)
    running = (select(jobs_table.c.locked_by, func.count().label("n"))
               .where(jobs_table.c.status == JobStatus.PROCESSING.value)
               .group_by(jobs_table.c.locked_by).subquery())
    w = workers_table.c
    rows = [dict(r) for r in (await db.execute(
        select(w.id.label("worker_id"), w.hostname, w.pid, w.concurrency, w.state, w.jobs_done,
               func.coalesce(running.c.n, 0).label("running_jobs"), w.started_at,
               w.last_heartbeat_at)
        .outerjoin(running, and_(running.c.locked_by == w.id))
        .order_by(w.started_at, w.id))).mappings()]
    now = await backend_of(db).clock(db)
    for r in rows:
        age = (now - r["last_heartbeat_at"]).total_seconds()
        r["heartbeat_age_s"] = age
        alive = is_worker_alive(r["state"], age, limit)
        # Only a row still marked running can be silent; the others say their state.
        r["verdict"] = (f"no heartbeat for {age:.0f} s" if r["state"] == "running" and not alive
                        else r["state"])
        r["healthy"] = alive or r["state"] == "stopped"
    return _frame(rows, WORKERS_SCHEMA)

