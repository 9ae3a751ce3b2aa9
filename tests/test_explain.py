"""``runner.explain(job_id)``: one test per case it names, on both backends."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

import jobkit
from jobkit import queue
from jobkit.explain import CASES, Explanation
from jobkit.models import jobs_table, utcnow, workers_table


async def add_worker(runner: jobkit.Runner, wid: str, *, state: str = "running",
                     heartbeat_age: float = 0.0) -> None:
    now = utcnow()
    async with runner.sessions() as db:
        await db.execute(workers_table.insert().values(
            id=wid, hostname="box", pid=4242, concurrency=1, state=state, jobs_done=0,
            started_at=now - timedelta(hours=1),
            last_heartbeat_at=now - timedelta(seconds=heartbeat_age)))
        await db.commit()


async def claim_as(runner: jobkit.Runner, wid: str, lease: float = 60.0) -> jobkit.Job:
    async with runner.sessions() as db:
        (job,) = await queue.claim_jobs(db, 1, worker_id=wid, lease_seconds=lease)
    return job


@pytest.fixture
def handlers_ok(runner: jobkit.Runner) -> jobkit.Runner:
    @runner.handler("ok")
    async def ok(job: jobkit.Job, db: Any) -> dict[str, Any]:
        return {"answer": 42}

    @runner.handler("flaky")
    async def flaky(job: jobkit.Job, db: Any) -> None:
        raise RuntimeError("flaky network")

    @runner.handler("bad")
    async def bad(job: jobkit.Job, db: Any) -> None:
        raise jobkit.PermanentError("params are nonsense")

    return runner


async def test_scheduled_for_later(runner: jobkit.Runner) -> None:
    job = await runner.enqueue("x", {}, delay=7200, allow_unknown=True)
    ex = await runner.explain(job.id)
    assert ex.case == "scheduled" and ex.status == "pending"
    assert "is scheduled for later: it becomes eligible in 2 h (at " in ex.summary
    assert ex.eligible_in_s == pytest.approx(7200, abs=30)


async def test_waiting_behind_n_eligible_jobs(runner: jobkit.Runner) -> None:
    first = await runner.enqueue("x", {}, allow_unknown=True)
    mine = await runner.enqueue("x", {}, allow_unknown=True)
    await runner.enqueue("x", {}, allow_unknown=True)                      # after mine: not ahead
    await runner.enqueue("x", {}, priority=5, allow_unknown=True)          # higher priority: ahead
    await runner.enqueue("x", {}, delay=3600, priority=9, allow_unknown=True)  # not eligible: not ahead
    ex = await runner.explain(mine.id)
    assert ex.case == "waiting" and ex.ahead == 2
    assert "waiting behind 2 eligible jobs" in ex.summary
    assert any("No live worker" in d for d in ex.details)
    top = await runner.enqueue("x", {}, priority=10, allow_unknown=True)
    head = await runner.explain(top.id)
    assert head.ahead == 0 and "next in line" in head.summary
    await add_worker(runner, "w-live")
    ex = await runner.explain(first.id)
    assert any("1 live worker is polling" in d for d in ex.details)


async def test_waiting_job_without_a_handler_is_flagged(runner: jobkit.Runner) -> None:
    job = await runner.enqueue("nobody_handles_this", {}, allow_unknown=True)
    ex = await runner.explain(job.id)
    assert any("No handler named 'nobody_handles_this'" in d for d in ex.details)


async def test_retry_pending_backoff(handlers_ok: jobkit.Runner) -> None:
    runner = handlers_ok
    job = await runner.enqueue("flaky", {}, allow_unknown=True)
    await runner.step()
    await _push_run_at(runner, job.id, seconds=120)
    ex = await runner.explain(job.id)
    assert ex.case == "retry_backoff" and ex.status == "retry"
    assert "retry backoff: attempt 2 of 4 becomes eligible in 2 min" in ex.summary
    assert ex.details[0].startswith("Attempt 1 of 4 failed: RuntimeError: flaky network")
    assert ex.last_error == "RuntimeError: flaky network"
    # Once the backoff has passed, it is simply waiting (with the failed attempt noted).
    await _push_run_at(runner, job.id, seconds=-1)
    ex = await runner.explain(job.id)
    assert ex.case == "waiting" and "attempt 2 of 4 is due" in ex.details[0]


async def _push_run_at(runner: jobkit.Runner, job_id: uuid.UUID, seconds: float) -> None:
    async with runner.sessions() as db:
        await db.execute(update(jobs_table).where(jobs_table.c.id == job_id)
                         .values(run_at=utcnow() + timedelta(seconds=seconds)))
        await db.commit()


async def test_leased_by_a_live_worker(runner: jobkit.Runner) -> None:
    await add_worker(runner, "w-live", heartbeat_age=1)
    job = await runner.enqueue("x", {}, allow_unknown=True)
    await claim_as(runner, "w-live")
    ex = await runner.explain(job.id)
    assert ex.case == "running" and ex.worker_alive is True
    assert ex.worker_id == "w-live" and ex.worker_state == "running"
    assert "running for" in ex.summary and "live worker w-live (host box, pid 4242)" in ex.summary
    assert "attempt 1 of 4" in ex.summary
    assert ex.heartbeat_age_s is not None and ex.heartbeat_age_s < 30
    assert any("lease runs" in d for d in ex.details)


async def test_leased_by_a_dead_worker(runner: jobkit.Runner) -> None:
    await add_worker(runner, "w-dead", state="dead")
    await add_worker(runner, "w-silent", heartbeat_age=3600)
    a = await runner.enqueue("x", {}, allow_unknown=True)
    await claim_as(runner, "w-dead")
    b = await runner.enqueue("x", {}, allow_unknown=True)
    await claim_as(runner, "w-silent")
    ex = await runner.explain(a.id)
    assert ex.case == "worker_dead" and ex.worker_alive is False
    assert "looks dead (the worker is marked dead)" in ex.summary
    assert any("a worker's reaper sends it to retry" in d for d in ex.details)
    ex = await runner.explain(b.id)
    assert ex.case == "worker_dead" and "looks dead (its last heartbeat was 1 h ago)" in ex.summary


async def test_expired_lease_means_a_lost_worker(runner: jobkit.Runner) -> None:
    job = await runner.enqueue("x", {}, max_retries=0, allow_unknown=True)
    await claim_as(runner, "host:999", lease=60)
    async with runner.sessions() as db:
        await db.execute(update(jobs_table).where(jobs_table.c.id == job.id)
                         .values(locked_until=utcnow() - timedelta(seconds=30)))
        await db.commit()
    ex = await runner.explain(job.id)
    assert ex.case == "worker_dead" and "lease ran out 30 s ago" in ex.summary
    assert "not a registered worker" in ex.summary
    assert any("sends it to failed" in d for d in ex.details), "its only attempt is spent"


async def test_a_one_off_step_is_running_on_an_unregistered_worker(
        runner: jobkit.Runner) -> None:
    job = await runner.enqueue("x", {}, allow_unknown=True)
    await claim_as(runner, "host:1")
    await runner.cancel(job.id)  # a running job: only asked to stop
    ex = await runner.explain(job.id)
    assert ex.case == "running" and ex.worker_alive is None
    assert "not a registered worker" in ex.summary
    assert any("cancel was requested" in d for d in ex.details)


async def test_attempts_spent_with_the_last_error(handlers_ok: jobkit.Runner) -> None:
    runner = handlers_ok
    job = await runner.enqueue("flaky", {}, max_retries=1, allow_unknown=True)
    for _ in range(2):
        await runner.step()
        await _push_run_at(runner, job.id, seconds=-1)
    ex = await runner.explain(job.id)
    assert ex.case == "failed" and (ex.attempts, ex.max_attempts) == (2, 2)
    assert ex.summary.endswith("all 2 attempts are spent. Last error: RuntimeError: flaky network")
    assert any("retry_job" in d for d in ex.details)


async def test_permanent_error_fails_at_once(handlers_ok: jobkit.Runner) -> None:
    job = await handlers_ok.enqueue("bad", {}, allow_unknown=True)
    await handlers_ok.step()
    ex = await handlers_ok.explain(job.id)
    assert ex.case == "failed"
    assert "failed at once on attempt 1 of 4" in ex.summary
    assert "PermanentError: params are nonsense" in ex.summary


async def test_cancelled(runner: jobkit.Runner) -> None:
    job = await runner.enqueue("x", {}, allow_unknown=True)
    await runner.cancel(job.id)
    ex = await runner.explain(job.id)
    assert ex.case == "cancelled" and ex.status == "failed"
    assert "was cancelled" in ex.summary and "it will not run" in ex.summary


async def test_completed_with_result_summary(handlers_ok: jobkit.Runner) -> None:
    runner = handlers_ok
    asset, video_job = await runner.upload_video("match.mp4", duration_ms=60_000)
    other = await runner.enqueue("ok", {}, allow_unknown=True)
    await runner.drain(progress=False)
    ex = await runner.explain(video_job.id)
    assert ex.case == "completed"
    best = max(c.visual_score for c in await runner.clips_of(asset.id))
    assert ex.result_summary == (f"3 clips created from a 60 s video "
                                 f"(best visual_score {best:.2f})")
    assert "completed on its first attempt" in ex.summary
    assert any(d.startswith("Its last attempt ran") for d in ex.details)
    assert (await runner.explain(str(other.id))).result_summary == "{'answer': 42}"


async def test_unknown_job_and_bad_id(runner: jobkit.Runner) -> None:
    with pytest.raises(jobkit.JobNotFound):
        await runner.explain(uuid.uuid4())
    with pytest.raises(jobkit.JobNotFound):
        await runner.explain("not-a-uuid")


async def test_the_explanation_reads_well_everywhere(runner: jobkit.Runner) -> None:
    job = await runner.enqueue("x", {}, allow_unknown=True)
    ex = await runner.explain(job.id)
    assert isinstance(ex, Explanation) and ex.case in CASES
    assert str(ex).splitlines()[0] == ex.summary
    assert str(ex).splitlines()[1].startswith("  - ")
    assert repr(ex).startswith(f"<Explanation {job.id} waiting: ")
    html = ex._repr_html_()
    assert "<li>" in html and "pending" in html and str(job.id) in html
