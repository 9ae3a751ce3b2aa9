"""Cancellation is normal (a notebook's interrupt, a toggled refresh, a stopping worker):
any jobkit ``await`` may be cancelled at any moment, and afterwards every connection is
healthy, ``CancelledError`` got through, and no loop of jobkit's retries it as an error.

Both tests run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from helpers import count_jobs

import jobkit
from jobkit import queue, stats
from jobkit.models import JobStatus

STORM_ROUNDS = 300
TRICKLE_RUNS = 20
TRICKLE_JOBS = 100


async def _noop(job: Any, db: Any) -> dict[str, Any]:
    return {"ok": True}


def _others() -> set[asyncio.Task[Any]]:
    me = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not me and not t.done()}


async def _settle(runner: jobkit.Runner, timeout: float = 10.0) -> None:
    """Let shielded clean-ups (a session's close after a cancel) finish, then check that
    no task is left and no connection stays checked out."""
    pending = _others()
    if pending:
        done, still = await asyncio.wait(pending, timeout=timeout)
        assert not still, f"tasks left pending after cancellations: {still}"
    checked_out = runner.engine.pool.checkedout()  # type: ignore[attr-defined]
    assert checked_out == 0, f"{checked_out} connection(s) still checked out"


def _operations(runner: jobkit.Runner, wid: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    worker = runner.worker(concurrency=4, worker_id=f"{wid}-hb")

    async def claim() -> Any:
        async with runner.sessions() as db:
            return await queue.claim_jobs(db, 2, worker_id=wid, lease_seconds=60)

    async def enqueue() -> Any:
        return await runner.enqueue("noop", {"n": 1})

    async def enqueue_many() -> Any:
        return await runner.enqueue_many([("noop", {"i": i}) for i in range(20)])

    async def complete() -> Any:
        async with runner.sessions() as db:
            jobs = await queue.claim_jobs(db, 1, worker_id=wid, lease_seconds=60)
            if jobs:
                await queue.complete_job(db, jobs[0], {"done": True}, worker_id=wid)
                await db.commit()
            return jobs

    async def status_counts() -> Any:
        async with runner.sessions() as db:
            return await stats.jobs_per_status(db)

    async def frame_counts() -> Any:
        return await runner.status_counts()

    async def heartbeat() -> Any:
        return await worker._maintenance()  # noqa: SLF001 - the heartbeat itself

    async def step() -> Any:
        return await runner.step()

    return {"claim": claim, "enqueue": enqueue, "enqueue_many": enqueue_many,
            "complete": complete, "status_counts": status_counts,
            "status_counts_frame": frame_counts, "heartbeat": heartbeat, "step": step}


async def test_cancellation_storm(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    runner = await jobkit.open(db_url, handlers={"noop": _noop}, retry_backoff_base=0.0)
    rng = random.Random(20261130)
    wid = f"storm-{uuid.uuid4().hex[:6]}"
    caplog.set_level(logging.WARNING, logger="jobkit")
    try:
        await runner.enqueue_many([("noop", {"i": i}) for i in range(50)])
        ops_ = _operations(runner, wid)
        await runner.worker(worker_id=f"{wid}-hb")._insert_row()  # noqa: SLF001 - its row
        outcomes: dict[str, list[str]] = {name: [] for name in ops_}
        for _ in range(STORM_ROUNDS):
            name = rng.choice(sorted(ops_))
            task = asyncio.ensure_future(ops_[name]())
            if rng.random() < 0.5:
                for _ in range(rng.randrange(0, 12)):  # a random number of loop turns
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(rng.uniform(0, 0.004))  # or a random instant
            task.cancel()
            try:
                await task
                outcomes[name].append("finished")
            except asyncio.CancelledError:
                outcomes[name].append("cancelled")
            # Any other exception fails the test here: a cancellation never turns into one.
        await _settle(runner)
        cancelled = sum(o.count("cancelled") for o in outcomes.values())
        assert cancelled >= STORM_ROUNDS // 3, outcomes
        for name, seen in outcomes.items():
            assert "cancelled" in seen, f"{name} was never cancelled in flight: {seen}"

        # The same runner still works: enqueue, claim, complete.
        job = await runner.enqueue("noop", {"after": "storm"}, priority=100)
        summary = await runner.step()
        assert summary["processed"] and summary["job_id"] == str(job.id), summary
        assert (await runner.get_job(job.id)).status == JobStatus.COMPLETED
        stats = await runner.drain(concurrency=4, progress=False)
        assert stats.failed == 0
        assert await count_jobs(runner, status="pending") == 0
        await _settle(runner)
    finally:
        await runner.close()
    noise = [r.getMessage() for r in caplog.records
             if any(w in r.getMessage() for w in ("PendingRollbackError", "destroyed but it is pending",
                                                   "another operation is in progress"))]
    assert not noise, noise[:3]


async def test_cancel_work_while_jobs_run_returns_fast(db_url: str) -> None:
    started = asyncio.Event()

    async def forever(job: Any, db: Any) -> dict[str, Any]:
        started.set()
        await asyncio.Event().wait()
        return {}

    runner = await jobkit.open(db_url, handlers={"forever": forever},
                               shutdown_grace_seconds=30.0)
    try:
        job = await runner.enqueue("forever")
        task = asyncio.ensure_future(runner.work(concurrency=2))
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(1.0):  # not the 30 s grace: a cancel means stop now
                await task
        # The running job went back to the queue, its attempt not burnt.
        back = await runner.get_job(job.id)
        assert back.status == JobStatus.PENDING and back.attempts == 0, back
        await _settle(runner)
    finally:
        await runner.close()


class _Completed:
    """Counts completions as the worker records them (its ``on_done`` callback)."""

    def __init__(self, expected: int) -> None:
        self.expected, self.done = expected, 0
        self.all_done = asyncio.Event()

    def record(self, summary: dict[str, Any]) -> None:
        self.done += summary["status"] == "completed"
        if self.done == self.expected:
            self.all_done.set()


async def test_worker_with_trickled_enqueues_never_wedges(db_url: str) -> None:
    """The in-process worker + trickle scenario that once wedged a SQLite worker for good."""
    for run in range(TRICKLE_RUNS):
        counter = _Completed(TRICKLE_JOBS)
        recorded, all_done = counter.record, counter.all_done

        runner = await jobkit.open(db_url, handlers={"counted": _noop},
                                   worker_poll_interval=2.0)
        try:
            await runner.enqueue("counted", {"warm": run})  # the first job starts the count
            work = asyncio.ensure_future(runner.work(concurrency=10, on_done=recorded))
            await asyncio.sleep(0.01 * (run % 5))  # a varying head start, as a user's would be
            for i in range(TRICKLE_JOBS - 1):
                await runner.enqueue("counted", {"i": i})
                await asyncio.sleep(0.002)
            try:
                await asyncio.wait_for(all_done.wait(), 20)
            except TimeoutError:
                raise AssertionError(f"run {run}: only {counter.done}/{TRICKLE_JOBS} jobs ran") from None
            work.cancel()
            with pytest.raises(asyncio.CancelledError):
                async with asyncio.timeout(1.0):
                    await work
            await _settle(runner)
        finally:
            await runner.close()
        # The next run starts on a fresh runner with the jobs of this one done.
        async with await jobkit.open(db_url) as r, r.sessions() as db:
            counts = await stats.jobs_per_status(db)
        assert counts["completed"] == TRICKLE_JOBS * (run + 1), counts
