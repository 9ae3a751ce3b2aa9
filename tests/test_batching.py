"""Batched claims and completions: fewer statements, same guarantees."""

from __future__ import annotations

from typing import Any

from helpers import count_jobs
from sqlalchemy import event, update

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
