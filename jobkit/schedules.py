"""Periodic jobs: schedules stored in the database, enqueued by workers, each tick once.

A schedule is a ``cron`` expression (parsed by `cronsim`, UTC) or a fixed ``every``
interval (ticks aligned on the Unix epoch, so ``every=60 s`` ticks on whole minutes). Any
worker that runs its scheduler (``jobkit work`` does) enqueues the due ticks; however many
workers run, a tick is enqueued once, because the job's insert and the move of the
schedule's ``last_tick_at`` commit together, guarded by the ``last_tick_at`` it read (a
compare-and-set: the second worker's update matches no row).

Catch-up: ticks that come due while a scheduler is watching are all enqueued, even when
it checks late (at most :data:`MAX_CATCH_UP` per check); of the ticks missed while no
scheduler ran (downtime), only the latest is enqueued — no burst after an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from . import queue
from .backends import backend_of
from .errors import InvalidTransition, JobkitError
from .jsonutil import check_params
from .models import Job, schedules_table, utcnow

log = logging.getLogger("jobkit")

__all__ = ["MAX_CATCH_UP", "PERIODIC", "PeriodicSpec", "ScheduleNotFound", "periodic"]

#: Most ticks one check enqueues for a schedule (the latest ones), however late it is.
MAX_CATCH_UP = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
H = TypeVar("H")


class ScheduleNotFound(JobkitError, KeyError):
    """No schedule has this name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no schedule named {name!r}; list them with `jobkit schedules`")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class PeriodicSpec:
    """A schedule declared in code (``@jobkit.periodic``); workers store it when they start."""

    name: str
    job_type: str
    params: Mapping[str, Any]
    cron: str | None = None
    every_seconds: float | None = None
    queue: str | None = None
    priority: int = 0


#: Schedules declared in code with :func:`periodic`, by name (like the handler table).
PERIODIC: dict[str, PeriodicSpec] = {}


def check_timing(cron: str | None, every: timedelta | float | None) -> tuple[str | None,
                                                                         float | None]:
    """``(cron, every_seconds)``, exactly one set, or :class:`InvalidTransition`."""
    if (cron is None) == (every is None):
        raise InvalidTransition("give cron='*/5 * * * *' or every=timedelta(...), exactly one")
    if cron is not None:
        if not isinstance(cron, str):
            raise InvalidTransition(f"cron must be a cron expression string, got {cron!r}")
        from cronsim import CronSim, CronSimError

        try:
            CronSim(cron, utcnow())
        except CronSimError as exc:
            raise InvalidTransition(
                f"cron {cron!r} is not a valid cron expression ({exc}); use five fields, "
                "e.g. '*/5 * * * *' for every five minutes (times are UTC)") from None
        return cron, None
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0 \
            or seconds != seconds or seconds == float("inf"):
        raise InvalidTransition(f"every must be a positive timedelta or number of seconds, "
                                f"got {every!r}")
    if seconds < 0.1:
        raise InvalidTransition(f"every must be at least 0.1 s, got {seconds:g} s")
    return None, float(seconds)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidTransition(f"a schedule name must be a non-empty string of at most 200 "
                                f"characters, got {name!r}")
    return name


def _every_us(every_seconds: float) -> int:
    return max(1, round(every_seconds * 1_000_000))


def _since_epoch_us(t: datetime) -> int:
    return (t - _EPOCH) // _US


def next_tick(cron: str | None, every_seconds: float | None, after: datetime) -> datetime:
    """The first tick strictly after ``after``."""
    if cron is not None:
        from cronsim import CronSim

        return next(CronSim(cron, after.astimezone(UTC)))
    step = _every_us(every_seconds or 1.0)
    k = _since_epoch_us(after) // step + 1
    return _EPOCH + timedelta(microseconds=k * step)


def latest_tick(cron: str | None, every_seconds: float | None, upto: datetime) -> datetime:
    """The last tick at or before ``upto``."""
    if cron is not None:
        from cronsim import CronSim

        return next(CronSim(cron, upto.astimezone(UTC) + _US, reverse=True))
    step = _every_us(every_seconds or 1.0)
    return _EPOCH + timedelta(microseconds=_since_epoch_us(upto) // step * step)


def due_ticks(cron: str | None, every_seconds: float | None, last_tick: datetime,
              watched_since: datetime, now: datetime) -> list[datetime]:
    """The ticks to enqueue now, oldest first.

    Ticks in ``(last_tick, now]`` are due. Those after ``watched_since`` (when this
    scheduler began watching) are all enqueued, the latest :data:`MAX_CATCH_UP` at most;
    of those before it, missed while no scheduler ran, only the latest one.
    """
    latest = latest_tick(cron, every_seconds, now)
    if latest <= last_tick:
        return []
    start = max(last_tick, watched_since)
    watched: list[datetime] = []
    if latest > start:
        if cron is None:
            step = _every_us(every_seconds or 1.0)
            first = _since_epoch_us(start) // step + 1
            last = _since_epoch_us(latest) // step
            first = max(first, last - MAX_CATCH_UP + 1)
            watched = [_EPOCH + timedelta(microseconds=k * step) for k in range(first, last + 1)]
        else:
            t = next_tick(cron, None, start)
            while t <= latest:
                watched.append(t)
                watched = watched[-MAX_CATCH_UP:]
                t = next_tick(cron, None, t)
    ticks = list(watched)
    if start > last_tick:
        missed = latest_tick(cron, every_seconds, start)
        if missed > last_tick and (not ticks or missed < ticks[0]):
            ticks.insert(0, missed)
    return ticks


def _insert(db: AsyncSession) -> Any:
    return backend_of(db).insert(schedules_table)


async def upsert_schedule(db: AsyncSession, name: str, job_type: str,
                          params: Mapping[str, Any] | None = None, *, cron: str | None = None,
                          every: timedelta | float | None = None, queue_name: str | None = None,
                          priority: int = 0, paused: bool | None = None) -> dict[str, Any]:
    """Create the schedule, or change its definition (its ticks so far are kept). Commits."""
    _check_name(name)
    cron, every_seconds = check_timing(cron, every)
    queue.build_job_row(job_type, params, priority=priority, queue=queue_name)  # validates
    checked = check_params(params)
    now = utcnow()
    definition = {"job_type": job_type, "params": checked, "queue": queue_name,
                  "priority": priority, "cron": cron, "every_seconds": every_seconds}
    await db.execute(_insert(db).values(
        name=name, **definition, paused=bool(paused), last_tick_at=now,
        next_tick_at=next_tick(cron, every_seconds, now), created_at=now, updated_at=now,
    ).on_conflict_do_nothing(index_elements=[schedules_table.c.name]))
    row = (await db.execute(select(schedules_table).where(schedules_table.c.name == name)
                            .with_for_update())).mappings().one()
    changes: dict[str, Any] = {k: v for k, v in definition.items() if row[k] != v}
    if paused is not None and bool(row["paused"]) != paused:
        changes["paused"] = paused
    if changes:
        if "cron" in changes or "every_seconds" in changes:
            changes["next_tick_at"] = next_tick(cron, every_seconds, row["last_tick_at"])
        changes["updated_at"] = now
        await db.execute(update(schedules_table).where(schedules_table.c.name == name)
                         .values(**changes))
    await db.commit()
    return await get_schedule(db, name)


async def get_schedule(db: AsyncSession, name: str) -> dict[str, Any]:
    row = (await db.execute(select(schedules_table).where(schedules_table.c.name == name))
           ).mappings().first()
    await db.commit()
    if row is None:
        raise ScheduleNotFound(name)
    return dict(row)


async def list_schedules(db: AsyncSession) -> list[dict[str, Any]]:
    """Every schedule, by name."""
    rows = (await db.execute(select(schedules_table).order_by(schedules_table.c.name))
            ).mappings().all()
    await db.commit()
    return [dict(r) for r in rows]


async def set_paused(db: AsyncSession, name: str, paused: bool) -> dict[str, Any]:
    """Pause, or resume: a resumed schedule skips the ticks of its pause. Commits."""
    row = await get_schedule(db, name)
    now = utcnow()
    values: dict[str, Any] = {"paused": paused, "updated_at": now}
    if not paused and row["paused"]:
        values["last_tick_at"] = max(row["last_tick_at"],
                                     latest_tick(row["cron"], row["every_seconds"], now))
        values["next_tick_at"] = next_tick(row["cron"], row["every_seconds"], now)
    await db.execute(update(schedules_table).where(schedules_table.c.name == name)
                     .values(**values))
    await db.commit()
    return await get_schedule(db, name)


async def remove_schedule(db: AsyncSession, name: str) -> None:
    """Delete a schedule (its jobs stay). Commits."""
    res = await db.execute(schedules_table.delete().where(schedules_table.c.name == name))
    await db.commit()
    if not res.rowcount:  # type: ignore[attr-defined]
        raise ScheduleNotFound(name)


def tick_key(name: str, tick: datetime) -> str:
    """The dedupe key of a schedule's job for one tick."""
    return f"schedule:{name}:{tick.astimezone(UTC).isoformat()}"


async def enqueue_due(sessions: async_sessionmaker[AsyncSession], watched_since: datetime,
                      *, default_max_retries: int = 3,
                      handler_queues: Mapping[str, str] | None = None) -> list[Job]:
    """Enqueue the due ticks of every schedule that has some; returns the jobs enqueued."""
    now = utcnow()
    async with sessions() as db:
        due = (await db.execute(select(schedules_table).where(
            schedules_table.c.paused.is_(False), schedules_table.c.next_tick_at <= now))
        ).mappings().all()
        await db.commit()
    jobs: list[Job] = []
    for row in due:
        ticks = due_ticks(row["cron"], row["every_seconds"], row["last_tick_at"],
                          watched_since, now)
        following = next_tick(row["cron"], row["every_seconds"], now)
        async with sessions() as db:
            values: dict[str, Any] = {"next_tick_at": following, "updated_at": now}
            if ticks:
                values["last_tick_at"] = ticks[-1]
            res = await db.execute(update(schedules_table).where(
                schedules_table.c.name == row["name"],
                schedules_table.c.last_tick_at == row["last_tick_at"],
                schedules_table.c.paused.is_(False)).values(**values))
            if res.rowcount != 1:  # type: ignore[attr-defined]
                await db.rollback()  # another worker took these ticks
                continue
            q = row["queue"] or (handler_queues or {}).get(row["job_type"])
            made = [await queue.enqueue(
                db, row["job_type"], row["params"], priority=row["priority"], queue=q,
                dedupe_key=tick_key(row["name"], tick), commit=False,
                default_max_retries=default_max_retries) for tick in ticks]
            if made:
                await db.execute(update(schedules_table)
                                 .where(schedules_table.c.name == row["name"])
                                 .values(last_job_id=made[-1].id))
            await db.commit()
        for tick, job in zip(ticks, made, strict=True):
            log.info("schedule %r: enqueued job %s for the tick of %s", row["name"], job.id,
                     tick.isoformat())
        jobs += made
    return jobs


async def next_due(db: AsyncSession) -> datetime | None:
    """When the soonest unpaused schedule is next due (None: no schedule)."""
    value = (await db.execute(select(func.min(schedules_table.c.next_tick_at)).where(
        schedules_table.c.paused.is_(False)))).scalar()
    await db.commit()
    if isinstance(value, str):  # SQLite's min() loses the column type
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value if isinstance(value, datetime) else None


async def scheduler_loop(sessions: async_sessionmaker[AsyncSession], stopping: asyncio.Event,
                         *, poll: float, default_max_retries: int = 3,
                         handler_queues: Mapping[str, str] | None = None,
                         on_error: Callable[[BaseException], None] | None = None) -> None:
    """Enqueue due ticks until ``stopping`` is set: wakes at the soonest tick (at most
    ``poll`` seconds apart, to notice new or resumed schedules)."""
    watched_since = utcnow()
    while not stopping.is_set():
        try:
            await enqueue_due(sessions, watched_since, default_max_retries=default_max_retries,
                              handler_queues=handler_queues)
            async with sessions() as db:
                soonest = await next_due(db)
        except Exception as exc:  # noqa: BLE001 - a database hiccup must not stop the worker
            if on_error is not None:
                on_error(exc)
            soonest = None
        wait = poll if poll > 0 else 1.0
        if soonest is not None:
            wait = min(wait, max(0.0, (soonest - utcnow()).total_seconds()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait + 0.001):
                await stopping.wait()


def periodic(cron: str | None = None, *, every: timedelta | float | None = None,
             name: str | None = None, params: Mapping[str, Any] | None = None,
             queue: str | None = None, priority: int = 0,
             max_running: int | None = None) -> Callable[[H], H]:
    """Decorator: a handler that also runs on a schedule.

    ``@jobkit.periodic("0 * * * *")`` or ``@jobkit.periodic(every=timedelta(minutes=5))``
    registers the function as the handler of its name and declares a schedule of the
    same name, which every worker stores in the database when it starts.
    """
    timing = check_timing(cron, every)

    def decorate(fn: H) -> H:
        from .dispatcher import register_handler

        job_type = getattr(fn, "__name__", None) if name is None else name
        if not isinstance(job_type, str):
            raise TypeError("periodic needs name= for a handler without a __name__")
        register_handler(job_type, fn, replace=True, queue=queue,  # type: ignore[arg-type]
                         max_running=max_running)
        PERIODIC[job_type] = PeriodicSpec(
            name=job_type, job_type=job_type, params=check_params(params), cron=timing[0],
            every_seconds=timing[1], queue=queue, priority=priority)
        return fn

    return decorate
