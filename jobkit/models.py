"""Tables: jobs (with their queues and dependencies), video_assets, clips, workers,
schedules, per-type limits, and the schema version.

Changing a table here needs a migration too: see jobkit/migrations/README.md.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    Uuid,
    and_,
    or_,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import ColumnElement
from sqlalchemy.types import TypeDecorator

#: The queue of a job enqueued without one.
DEFAULT_QUEUE = "default"


class JobStatus(str, Enum):
    """A job's state. ``pending → processing → completed``; ``retry`` and ``failed`` on errors."""

    PENDING = "pending"
    PROCESSING = "processing"
    RETRY = "retry"
    COMPLETED = "completed"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


#: Every status in lifecycle order (the order of monitoring tables and plots).
ALL_STATUSES: tuple[JobStatus, ...] = tuple(JobStatus)
#: Waiting to be claimed.
ELIGIBLE: frozenset[JobStatus] = frozenset({JobStatus.PENDING, JobStatus.RETRY})
#: Not finished yet.
ACTIVE: frozenset[JobStatus] = ELIGIBLE | {JobStatus.PROCESSING}
#: Finished for good.
TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.COMPLETED, JobStatus.FAILED})
#: The waiting statuses as stored text, in a fixed order (for ``status IN (...)`` filters).
ELIGIBLE_VALUES: tuple[str, ...] = (JobStatus.PENDING.value, JobStatus.RETRY.value)
#: The unfinished statuses as stored text.
ACTIVE_VALUES: tuple[str, ...] = (*ELIGIBLE_VALUES, JobStatus.PROCESSING.value)
#: Not a status: the error of a ``failed`` job that was cancelled (``jobs --status cancelled``).
CANCELLED = "cancelled"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


_id_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> uuid.UUID:
    """A time-ordered UUID (version 7) that is monotonic within this process.

    Ids sort in creation order on both backends, which makes ``id`` a stable
    tie-breaker for jobs enqueued in the same instant.
    """
    rand = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    with _id_lock:
        stamp = _next_stamp(time.time_ns() // 1_000_000)
    return _uuid_of(stamp | rand)


def new_ids(n: int) -> list[uuid.UUID]:
    """``n`` ids as ``n`` calls of :func:`new_id` would give them, made in one go (one lock,
    one clock reading, one read of random bytes)."""
    rand = os.urandom(8 * n)
    with _id_lock:
        now_ms = time.time_ns() // 1_000_000
        stamps = [_next_stamp(now_ms) for _ in range(n)]
    randoms = memoryview(rand).cast("Q")  # (the byte order does not matter: random)
    return [_uuid_of(stamp | (r & 0x3FFF_FFFF_FFFF_FFFF))
            for stamp, r in zip(stamps, randoms, strict=True)]


def _next_stamp(now_ms: int) -> int:
    """The next id's time, counter, version and variant bits (call with ``_id_lock`` held):
    ``now_ms``, or the last id's millisecond with its counter + 1 when the clock has not
    moved past it (or went back)."""
    global _last_ms, _counter
    if now_ms <= _last_ms:
        _counter += 1
        if _counter > 0xFFF:  # 4096 ids in one ms: borrow the next ms
            _last_ms += 1
            _counter = 0
    else:
        _last_ms = now_ms
        _counter = 0
    return (_last_ms << 80) | (0x7 << 76) | (_counter << 64) | (0b10 << 62)


_new_uuid = object.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def _uuid_of(value: int) -> uuid.UUID:
    """``uuid.UUID(int=value)`` without its argument checks (a third of the cost)."""
    made = _new_uuid(uuid.UUID)
    _set(made, "int", value)
    _set(made, "is_safe", _UNKNOWN)
    return made  # type: ignore[no-any-return]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    Values are converted to UTC before binding. SQLite stores naive UTC text: its
    ``DATETIME`` type writes the UTC fields and drops the offset; loaded values get UTC back.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime (UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return as_utc(value)


def as_utc(value: datetime | None) -> datetime | None:
    """A loaded datetime as timezone-aware UTC (:class:`UTCDateTime`'s loading): a naive
    one is UTC already (how SQLite stores it)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class StatusType(TypeDecorator[JobStatus]):
    """Stores the status as its lower-case text; loads it as a :class:`JobStatus`."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else JobStatus(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> JobStatus | None:
        return None if value is None else JobStatus(value)


JSONType = JSON().with_variant(JSONB(), "postgresql")

#: The waiting filter as literal SQL: the partial claim indexes and both backends' CLAIM
#: use this same text (a planner matches a partial index only on the identical expression).
ELIGIBLE_SQL = "status IN (" + ", ".join(f"'{v}'" for v in ELIGIBLE_VALUES) + ")"

#: The claim order, as (column, descending): highest priority first, then the oldest, then
#: the id (time-ordered, so a stable tie-breaker). The claim's indexes, both backends' claim
#: statements, the re-sort of a claim's jobs and ``explain``'s count of the jobs ahead all
#: follow it.
CLAIM_ORDER: tuple[tuple[str, bool], ...] = (("priority", True), ("created_at", False),
                                             ("id", False))
#: :data:`CLAIM_ORDER` as an ``ORDER BY`` list: ``priority DESC, created_at, id``.
CLAIM_ORDER_SQL = ", ".join(f"{name} DESC" if desc else name for name, desc in CLAIM_ORDER)


def claim_sort_key(job: Any) -> tuple[Any, ...]:
    """Sorts jobs (or rows with these attributes) in :data:`CLAIM_ORDER`.

    Only ``priority`` (an int) is descending, so negating it sorts it that way.
    """
    return tuple(-getattr(job, name) if desc else getattr(job, name)
                 for name, desc in CLAIM_ORDER)


def claim_row_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """:func:`claim_sort_key` of a row ``{column: value}`` (a claim's ``RETURNING``), spelt
    out: the claim sorts its rows with it before making them jobs."""
    return (-row["priority"], row["created_at"], row["id"])


if CLAIM_ORDER != (("priority", True), ("created_at", False), ("id", False)):
    raise AssertionError("CLAIM_ORDER changed: change claim_row_key with it")


def ahead_in_claim_order(columns: Any, row: Mapping[str, Any]) -> ColumnElement[bool]:
    """SQL: the job of these ``columns`` comes before ``row`` in :data:`CLAIM_ORDER`."""
    ahead: ColumnElement[bool] | None = None
    for name, desc in reversed(CLAIM_ORDER):
        col, value = columns[name], row[name]
        before = col > value if desc else col < value
        ahead = before if ahead is None else or_(before, and_(col == value, ahead))
    assert ahead is not None
    return ahead


def _claim_index(**columns: Any) -> list[Any]:
    """:data:`CLAIM_ORDER` as index columns (``columns``: the descending ones, by name)."""
    return [columns[name].desc() if desc else name for name, desc in CLAIM_ORDER]
_ACTIVE_SQL = "status IN (" + ", ".join(f"'{v}'" for v in ACTIVE_VALUES) + ")"


class Base(DeclarativeBase):
    pass


class Job(Base):
    """One unit of work: a ``job_type`` naming its handler, and JSON ``params``."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    job_type: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(100), default=DEFAULT_QUEUE,
                                       server_default=DEFAULT_QUEUE)
    status: Mapped[JobStatus] = mapped_column(StatusType, default=JobStatus.PENDING)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    result: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=4)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    timeout: Mapped[float | None] = mapped_column(Float, nullable=True)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    locked_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # How far the running attempt has got (jobkit.report_progress): 0..1, cleared by the
    # claim, 1 at completion.
    progress: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress_message: Mapped[str | None] = mapped_column(String(500), nullable=True)
    progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        # The claim's index: only waiting jobs, in claim order.
        Index("ix_jobs_eligible", *_claim_index(priority=priority),
              sqlite_where=text(ELIGIBLE_SQL), postgresql_where=text(ELIGIBLE_SQL)),
        # The claim of a worker serving one queue: that queue's waiting jobs, in claim order.
        Index("ix_jobs_eligible_queue", "queue", *_claim_index(priority=priority),
              sqlite_where=text(ELIGIBLE_SQL), postgresql_where=text(ELIGIBLE_SQL)),
        # Running jobs of a type (the max_running limit counts them).
        Index("ix_jobs_processing_type", "job_type",
              sqlite_where=text("status = 'processing'"),
              postgresql_where=text("status = 'processing'")),
        # The reaper's index: running jobs by lease end.
        Index("ix_jobs_processing_lease", "locked_until",
              sqlite_where=text("status = 'processing'"),
              postgresql_where=text("status = 'processing'")),
        # At most one unfinished job per dedupe key.
        Index("ux_jobs_dedupe_active", "dedupe_key", unique=True,
              sqlite_where=text(f"dedupe_key IS NOT NULL AND {_ACTIVE_SQL}"),
              postgresql_where=text(f"dedupe_key IS NOT NULL AND {_ACTIVE_SQL}")),
        Index("ix_jobs_status_finished", "status", "finished_at"),
    )

    #: Not a column: True on the job an ``enqueue(..., dedupe_key=…)`` returned because an
    #: unfinished job already held the key.
    deduplicated = False

    @property
    def retries_left(self) -> int:
        return max(0, (self.max_attempts or 0) - (self.attempts or 0))

    def __repr__(self) -> str:
        return (f"<Job {self.id} {self.job_type} {self.status}"
                f" attempt {self.attempts}/{self.max_attempts}>")

    def _repr_html_(self) -> str:
        from .display import job_html

        return job_html(self)


class VideoAsset(Base):
    """An uploaded video that ``cut_analysis`` cuts into clips."""

    __tablename__ = "video_assets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    filename: Mapped[str] = mapped_column(String(500))
    duration_ms: Mapped[int] = mapped_column(Integer)
    stored_path: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Probed from the stored file (None for a name-only upload).
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fps: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<VideoAsset {self.id} {self.filename!r} {self.duration_ms} ms>"

    def _repr_html_(self) -> str:
        from .display import asset_html

        return asset_html(self)


class Clip(Base):
    """A candidate clip of a video, with its ``visual_score`` in [0, 1]."""

    __tablename__ = "clips"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    video_asset_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("video_assets.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True, index=True)
    start_ms: Mapped[int] = mapped_column(Integer)
    end_ms: Mapped[int] = mapped_column(Integer)
    visual_score: Mapped[float] = mapped_column(Float)
    # A small JPEG (~160 px wide) of the clip, stored in the database so that it travels
    # with it; loaded only when asked for (``Clip.thumbnail``).
    thumbnail: Mapped[bytes | None] = mapped_column(
        LargeBinary, nullable=True, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return (f"<Clip {self.id} {self.start_ms}-{self.end_ms} ms"
                f" score {self.visual_score:.3f}>")


class WorkerRow(Base):
    """A worker process, for health checks and for telling live leases from dead ones."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    queues: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)  # None: all
    state: Mapped[str] = mapped_column(String(16), default="running")
    jobs_done: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"<Worker {self.id} {self.state} done={self.jobs_done}>"


class JobDependency(Base):
    """``job_id`` may run only once ``depends_on`` has completed."""

    __tablename__ = "job_dependencies"

    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    depends_on: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True, index=True)


class JobTypeLimit(Base):
    """At most ``max_running`` jobs of ``job_type`` run at once, across every worker."""

    __tablename__ = "job_type_limits"

    job_type: Mapped[str] = mapped_column(String(200), primary_key=True)
    max_running: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Schedule(Base):
    """A periodic job: every due tick of ``cron`` (or of ``every_seconds``) enqueues one job."""

    __tablename__ = "schedules"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    job_type: Mapped[str] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    queue: Mapped[str | None] = mapped_column(String(100), nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    cron: Mapped[str | None] = mapped_column(String(200), nullable=True)
    every_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The latest tick already enqueued (or skipped); ticks after it are due when passed.
    last_tick_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_tick_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def __repr__(self) -> str:
        when = f"cron {self.cron!r}" if self.cron else f"every {self.every_seconds:g} s"
        state = " paused" if self.paused else ""
        return f"<Schedule {self.name!r} {self.job_type} {when}{state}>"


class Meta(Base):
    """Key/value facts about the schema.

    ``schema_version`` is the number of the current schema revision (Alembic's
    ``alembic_version`` is the authority; this copy is what jobkit 0.1.0 reads).
    """

    __tablename__ = "jobkit_meta"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String(500))


jobs_table: Table = cast(Table, Job.__table__)
workers_table: Table = cast(Table, WorkerRow.__table__)
meta_table: Table = cast(Table, Meta.__table__)
dependencies_table: Table = cast(Table, JobDependency.__table__)
limits_table: Table = cast(Table, JobTypeLimit.__table__)
schedules_table: Table = cast(Table, Schedule.__table__)


# ---------------------------------------------------------------------------
# Worker liveness: ONE definition, used by the reaper, status, /health, explain and the
# notebook's worker_health.
# ---------------------------------------------------------------------------
def worker_alive(now: Any, dead_after: float) -> ColumnElement[bool]:
    """SQL: the worker row is alive — state ``running`` and a heartbeat less than
    ``dead_after`` seconds before ``now`` (pass the database clock,
    ``backend_of(db).now()``). The reaper marks dead exactly the running rows that are not."""
    return and_(workers_table.c.state == "running",
                workers_table.c.last_heartbeat_at > now - timedelta(seconds=dead_after))


def is_worker_alive(state: str, heartbeat_age_s: float, dead_after: float) -> bool:
    """The same rule in Python, for a row already read (age measured on the database clock)."""
    return state == "running" and heartbeat_age_s < dead_after


def attempt_fence(job_id: Any, attempt: Any, worker_id: Any) -> ColumnElement[bool]:
    """SQL: the row is still this attempt of this worker — THE fence of every statement that
    records an attempt's outcome or progress (values, or bind parameters for a prebuilt
    statement). Zero rows matched means the lease was lost."""
    return and_(jobs_table.c.id == job_id, jobs_table.c.attempts == attempt,
                jobs_table.c.locked_by == worker_id,
                jobs_table.c.status == JobStatus.PROCESSING.value)
