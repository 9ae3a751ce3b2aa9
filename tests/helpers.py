"""Small factories shared by the tests."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select, update

import jobkit
from jobkit.models import Clip, Job, jobs_table


async def count_jobs(runner: jobkit.Runner, **where: Any) -> int:
    async with runner.sessions() as db:
        stmt = select(func.count()).select_from(jobs_table)
        for key, value in where.items():
            stmt = stmt.where(jobs_table.c[key] == value)
        return int((await db.execute(stmt)).scalar_one())


async def count_clips(runner: jobkit.Runner, asset_id: uuid.UUID | None = None) -> int:
    async with runner.sessions() as db:
        stmt = select(func.count()).select_from(Clip)
        if asset_id is not None:
            stmt = stmt.where(Clip.video_asset_id == asset_id)
        return int((await db.execute(stmt)).scalar_one())


async def make_eligible_now(runner: jobkit.Runner, job_id: uuid.UUID) -> None:
    """Pull a scheduled retry forward (instead of sleeping through its backoff)."""
    async with runner.sessions() as db:
        await db.execute(update(jobs_table).where(jobs_table.c.id == job_id)
                         .values(run_at=jobkit.models.utcnow()))
        await db.commit()


async def all_jobs(runner: jobkit.Runner) -> list[Job]:
    async with runner.sessions() as db:
        rows = (await db.execute(select(jobs_table).order_by(jobs_table.c.created_at))).mappings()
        return [jobkit.queue.job_from_row(r) for r in rows]


def count_checkpoints(monkeypatch: Any) -> list[int]:
    """One item per WAL checkpoint the SQLite inline lane starts from now on."""
    from jobkit.backends import sqlite

    calls: list[int] = []
    real = sqlite._checkpoint  # noqa: SLF001

    async def counted(engine: Any) -> None:
        calls.append(1)
        await real(engine)

    monkeypatch.setattr(sqlite, "_checkpoint", counted)
    return calls
