"""Job progress: stored outside the handler's transaction, seen by others, fenced, throttled."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

import jobkit
from jobkit import progress, queue, shapes
from jobkit.models import Job, JobStatus, jobs_table, utcnow


@pytest.fixture
async def observer(db_url: str) -> AsyncIterator[jobkit.Runner]:
    """A second runner (its own engine and connections): what another process would see."""
    r = await jobkit.open(db_url)
    try:
        yield r
    finally:
        await r.close()


async def _progress_of(r: jobkit.Runner, job_id: Any) -> tuple[Any, Any, Any]:
    async with r.sessions() as db:
        row = (await db.execute(select(jobs_table.c.progress, jobs_table.c.progress_message,
                                       jobs_table.c.status).where(jobs_table.c.id == job_id))
               ).one()
        await db.commit()
    return row[0], row[1], row[2]


async def test_progress_is_seen_from_a_second_connection_while_the_job_runs(
        db_url: str, handlers: dict, observer: jobkit.Runner) -> None:
    runner = await jobkit.open(db_url, handlers=handlers, progress_interval=0.0)
    step_reached = asyncio.Event()
    go_on, go_on_2 = asyncio.Event(), asyncio.Event()
    thread_reported = threading.Event()

    def blocking_part() -> None:  # runs in run_blocking's thread
        jobkit.report_progress(0.75, "in a thread")
        thread_reported.set()

    @runner.handler("long")
    async def long(job: Job, db: Any) -> dict[str, Any]:
        assert await jobkit.report_progress(0.25, "reading") is True
        step_reached.set()
        await go_on.wait()
        await jobkit.run_blocking(blocking_part)
        step_reached.set()
        await go_on_2.wait()
        return {"ok": True}

    try:
        job = await runner.enqueue("long")
        task = asyncio.create_task(runner.step())
        await asyncio.wait_for(step_reached.wait(), 10)
        # The handler's own session holds no transaction for it: another engine sees it now.
        assert await _progress_of(observer, job.id) == (0.25, "reading", "processing")
        seen = await observer.get_job(job.id)
        assert seen.progress_at is not None and seen.progress == 0.25
        step_reached.clear()
        go_on.set()
        await asyncio.wait_for(step_reached.wait(), 10)
        assert thread_reported.is_set()
        # The thread handed its write to the loop; wait for that write (not for time).
        for _ in range(200):
            if (await _progress_of(observer, job.id))[0] == 0.75:
                break
            await asyncio.sleep(0.02)
        assert await _progress_of(observer, job.id) == (0.75, "in a thread", "processing")
        go_on_2.set()
        summary = await asyncio.wait_for(task, 10)
        assert summary["status"] == "completed"
        assert (await _progress_of(observer, job.id))[:1] == (1.0,), "set to 1 at completion"
        # A new attempt starts from nothing: the claim clears the progress.
        async with runner.sessions() as db:
            await db.execute(update(jobs_table).where(jobs_table.c.id == job.id).values(
                status="pending", progress=0.4, progress_message="old"))
            await db.commit()
        async with runner.sessions() as db:
            [claimed] = await queue.claim_jobs(db, 1, worker_id="w")
        assert (claimed.progress, claimed.progress_message, claimed.progress_at) == (
            None, None, None)
    finally:
        go_on.set()
        go_on_2.set()
        await runner.close()


async def test_a_worker_that_lost_its_lease_cannot_write_progress(
        runner: jobkit.Runner, observer: jobkit.Runner) -> None:
    job = await runner.enqueue("cut_analysis", {"video_asset_id": str(uuid.uuid4())})
    async with runner.sessions() as db:
        [old] = await queue.claim_jobs(db, 1, worker_id="worker-a", lease_seconds=60)
    async with progress.tracking(runner.engine, old.id, old.attempts, "worker-a",
                                 interval=0.0) as a:
        assert await jobkit.report_progress(0.1, "a starts") is True
        # worker-a stalls; its lease runs out; the reaper and worker-b take the job over.
        async with runner.sessions() as db:
            await db.execute(update(jobs_table).where(jobs_table.c.id == job.id).values(
                locked_until=utcnow() - timedelta(seconds=1)))
            await db.commit()
            [reaped] = await queue.reap_expired(db)
            assert reaped.status is JobStatus.RETRY
            [new] = await queue.claim_jobs(db, 1, worker_id="worker-b")
        assert new.attempts == 2
        async with progress.tracking(runner.engine, new.id, new.attempts, "worker-b",
                                     interval=0.0):
            assert await jobkit.report_progress(0.5, "b half way") is True
        a.report(0.9, "a, too late")  # worker-a wakes up and reports again
        assert await a.flush() is False
        assert a.lost is True
    assert await _progress_of(observer, job.id) == (0.5, "b half way", "processing")
    # Same attempt number but another worker: still fenced.
    async with progress.tracking(runner.engine, new.id, new.attempts, "worker-a",
                                 interval=0.0) as impostor:
        assert await jobkit.report_progress(0.99, "impostor") is False
        assert impostor.lost
    assert await _progress_of(observer, job.id) == (0.5, "b half way", "processing")


async def test_progress_is_throttled_and_the_last_value_still_lands(
        db_url: str, handlers: dict, observer: jobkit.Runner) -> None:
    async with await jobkit.open(db_url, handlers=handlers, progress_interval=0.2) as runner:
        job = await runner.enqueue("x", allow_unknown=True)
        async with runner.sessions() as db:
            [claimed] = await queue.claim_jobs(db, 1, worker_id="w")
        async with progress.tracking(runner.engine, claimed.id, claimed.attempts, "w",
                                     interval=0.2) as tracker:
            results = [await jobkit.report_progress(i / 100, f"step {i}") for i in range(50)]
            assert results[0] is True and not any(results[1:]), "one write per interval"
            assert tracker.writes == 1
            assert tracker._trailing is not None
            await asyncio.wait_for(tracker._trailing, 5)  # the trailing write of the interval
            assert tracker.writes == 2
            assert await _progress_of(observer, job.id) == (0.49, "step 49", "processing")


async def test_report_progress_outside_a_job_and_bad_values() -> None:
    assert await jobkit.report_progress(0.5, "no job here") is False
    assert not jobkit.report_progress(0.5)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="from 0 to 1"):
            jobkit.report_progress(bad)
    with pytest.raises(TypeError, match="a number from 0 to 1"):
        jobkit.report_progress("half")  # type: ignore[arg-type]


async def test_progress_shows_in_the_job_views(
        db_url: str, handlers: dict, tmp_path: Any) -> None:
    """GET /jobs/{id}, job_dict (CLI --json), the CLI cell, explain, the HTML display, watch."""
    from jobkit.api import create_app
    from jobkit.cli.output import progress_cell as _progress_cell
    from jobkit.display import job_html

    runner = await jobkit.open(db_url, handlers=handlers, progress_interval=0.0)
    reported = asyncio.Event()
    go_on = asyncio.Event()

    @runner.handler("slow")
    async def slow(job: Job, db: Any) -> dict[str, Any]:
        await jobkit.report_progress(0.4, "decoding 12.0/30.0 s")
        reported.set()
        await go_on.wait()
        return {"done": True}

    try:
        job = await runner.enqueue("slow")
        task = asyncio.create_task(runner.step())
        watcher = asyncio.create_task(runner.watch(job.id, interval=0.02, progress=True))
        await asyncio.wait_for(reported.wait(), 10)
        app = create_app(runner.settings.replace(media_dir=str(tmp_path)), runner=runner)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://jobkit.test") as client:
            got = (await client.get(f"/jobs/{job.id}")).json()
        assert got["progress"] == 0.4 and got["progress_message"] == "decoding 12.0/30.0 s"
        assert got["progress_at"] is not None
        running = await runner.get_job(job.id)
        assert shapes.job_dict(running)["progress"] == 0.4
        assert _progress_cell(running) == "[####      ]  40% decoding 12.0/30.0 s"
        html = job_html(running)
        assert "width:40.0%" in html and "40% decoding 12.0/30.0 s" in html
        explained = await runner.explain(job.id)
        assert explained.progress == 0.4
        assert any(d.startswith("Progress: 40% (decoding 12.0/30.0 s), reported ")
                   for d in explained.details), explained.details
        assert not watcher.done()
        go_on.set()
        assert (await task)["status"] == "completed"
        finished = await asyncio.wait_for(watcher, 10)
        assert finished.status is JobStatus.COMPLETED and finished.progress == 1.0
        assert _progress_cell(finished) == "[##########] 100%"
    finally:
        go_on.set()
        await runner.close()


async def test_cut_analysis_reports_its_decoding_progress(
        db_url: str, handlers: dict, tmp_path: Any, observer: jobkit.Runner) -> None:
    from jobkit.video import make_test_video

    v = make_test_video(tmp_path / "v.mp4", [2.0, 2.0, 2.0])
    runner = await jobkit.open(db_url, handlers=handlers, progress_interval=0.0)
    seen: list[tuple[float, str]] = []
    try:
        _, job = await runner.upload_video(v.path)
        step = asyncio.create_task(runner.step())
        while not step.done():
            p, msg, status = await _progress_of(observer, job.id)
            if status == "processing" and p is not None and (not seen or seen[-1] != (p, msg)):
                seen.append((p, msg))
            await asyncio.sleep(0.005)
        assert (await step)["status"] == "completed"
    finally:
        await runner.close()
    assert seen, "progress was visible while the analysis ran"
    assert all(0.0 <= p < 1.0 for p, _ in seen)
    assert any(m.startswith(("opening", "decoding", "storing")) for _, m in seen)


async def test_running_progress_frame_and_a_dashboard_bar_per_running_job(
        db_url: str, handlers: dict) -> None:
    runner = await jobkit.open(db_url, handlers=handlers, progress_interval=0.0)
    started = [asyncio.Event(), asyncio.Event()]
    go_on = asyncio.Event()

    @runner.handler("part")
    async def part(job: Job, db: Any) -> dict[str, Any]:
        n = job.params["n"]
        if n == 0:
            await jobkit.report_progress(0.3, "first third")
        started[n].set()
        await go_on.wait()
        return {}

    try:
        jobs = [await runner.enqueue("part", {"n": n}) for n in (0, 1)]
        worker = runner.worker(concurrency=2, burst=True)
        task = asyncio.create_task(worker.run())
        for e in started:
            await asyncio.wait_for(e.wait(), 10)
        frame = await runner.running_progress()
        assert list(frame["job_id"]) == [str(j.id) for j in jobs]
        assert frame["progress"].iloc[0] == 0.3 and frame["progress"].isna().iloc[1]
        assert frame["progress_message"].iloc[0] == "first third"
        assert (frame["running_s"] >= 0).all() and set(frame["worker_id"]) == {worker.id}
        dash = runner.dashboard()
        await dash.refresh()
        bars = dash.running_html.value
        assert bars.count("<tr>") == 3  # a header and one row per running job
        assert "width:30.0%" in bars and "30% first third" in bars and "no progress" in bars
        go_on.set()
        assert (await asyncio.wait_for(task, 10)).completed == 2
        await dash.refresh()
        assert dash.running_html.value == "" and len(await runner.running_progress()) == 0
        dash.close()
    finally:
        go_on.set()
        await runner.close()
