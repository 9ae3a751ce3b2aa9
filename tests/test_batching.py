"""Batched claims and completions: fewer statements, same guarantees."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import count_jobs
from sqlalchemy import event, select, update

import jobkit
from jobkit import queue
from jobkit.models import JobStatus, jobs_table


def count_statements(runner: jobkit.Runner, prefix: str) -> list[str]:
    seen: list[str] = []

    @event.listens_for(runner.engine.sync_engine, "before_cursor_execute")
    def _count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(prefix):
            seen.append(statement)

    return seen


async def test_noop_jobs_are_claimed_and_completed_in_batches(runner: jobkit.Runner) -> None:
    @runner.handler("nothing")
    async def nothing(job: jobkit.Job, db: Any) -> dict[str, Any]:
        return {"i": job.params["i"]}

    await runner.enqueue_many([("nothing", {"i": i}) for i in range(200)], allow_unknown=True)
    updates = count_statements(runner, "UPDATE JOBS")
    batched = count_statements(runner, "WITH")
    stats = await runner.drain(concurrency=100, progress=False)
    assert stats.completed == 200
    assert await count_jobs(runner, status="completed") == 200
    # Claims of up to 100 and completions grouped per event-loop turn: a handful of
    # statements, not 400 (a claim and a completion per job).
    assert len(updates) + len(batched) < 40, (len(updates), len(batched))
    assert batched, "completions went through the batched statement"


async def test_handlers_that_write_complete_in_their_own_transaction(
        runner: jobkit.Runner) -> None:
    for i in range(5):
        await runner.upload_video(f"v{i}.mp4", duration_ms=20_000)
    updates = count_statements(runner, "UPDATE JOBS")
    batched = count_statements(runner, "WITH")
    stats = await runner.drain(concurrency=5, progress=False)
    assert stats.completed == 5
    completions = [s for s in updates if "result=" in s.replace(" ", "")]
    assert len(completions) == 5, "one fenced completion per job, in the clips' transaction"
    assert not batched


async def test_batched_completion_is_fenced_per_job(runner: jobkit.Runner) -> None:
    await runner.enqueue_many([("x", {"i": i}) for i in range(3)], allow_unknown=True)
    async with runner.sessions() as db:
        jobs = await queue.claim_jobs(db, 3, worker_id="me")
    async with runner.sessions() as db:  # the second job was taken over by another worker
        await db.execute(update(jobs_table).where(jobs_table.c.id == jobs[1].id)
                         .values(locked_by="other", attempts=2))
        await db.commit()
    async with runner.sessions() as db:
        done = await queue.complete_many(db, [(j, {"n": n}) for n, j in enumerate(jobs)],
                                         worker_id="me")
        await db.commit()
    assert done == {jobs[0].id, jobs[2].id}
    assert (await runner.get_job(jobs[0].id)).result == {"n": 0}
    assert (await runner.get_job(jobs[2].id)).result == {"n": 2}
    taken = await runner.get_job(jobs[1].id)
    assert taken.status is JobStatus.PROCESSING and taken.locked_by == "other"


async def test_the_next_claim_overlaps_the_last_completion(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job whose handler wrote nothing frees its slot when it joins the completion batch:
    the worker claims the next job while that statement is in flight, instead of after it
    (two round trips one after the other per cycle, each waiting for its commit). Still
    one handler at a time at concurrency 1, every job completed once."""
    running: list[int] = []
    peak: list[int] = []
    claims = 0
    first_done_at: int | None = None  # claims made when the first job's handler returned
    claimed_again = asyncio.Event()

    async def counted(job: jobkit.Job, db: Any) -> dict[str, Any]:
        nonlocal first_done_at
        running.append(1)
        peak.append(len(running))
        await asyncio.sleep(0)
        running.pop()
        if job.params["i"] == 0:
            first_done_at = claims
        return {"i": job.params["i"]}

    real_claim, real_complete = queue.claim_alone, queue.complete_many_alone

    async def claim(*args: Any, **kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        if first_done_at is not None and claims > first_done_at:
            claimed_again.set()
        return await real_claim(*args, **kwargs)

    async def complete(engine: Any, items: Any, **kwargs: Any) -> Any:
        if items[0][0].params["i"] == 0:
            # Record the first job only once the worker has claimed again: without the
            # overlap it never would (its only slot is taken until this returns).
            await asyncio.wait_for(claimed_again.wait(), 30)
        return await real_complete(engine, items, **kwargs)

    monkeypatch.setattr(queue, "claim_alone", claim)
    monkeypatch.setattr(queue, "complete_many_alone", complete)
    async with await jobkit.open(db_url, handlers={"counted": counted}) as runner:
        await runner.enqueue_many([("counted", {"i": i}) for i in range(5)])
        stats = await asyncio.wait_for(runner.worker(concurrency=1, burst=True).run(), 60)
        assert claimed_again.is_set()
        assert stats.completed == 5 and stats.max_active == 1, stats.as_dict()
        assert max(peak) == 1, "one handler at a time"
        assert await count_jobs(runner, status="completed") == 5
        async with runner.sessions() as db:
            attempts = (await db.execute(select(jobs_table.c.attempts))).scalars().all()
        assert sorted(attempts) == [1] * 5
