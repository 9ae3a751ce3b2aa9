"""The production worker: concurrency, crashes, shutdown, timeouts, control, wake-up, trouble.

Crash and shutdown tests start the real `jobkit work` command and really kill it.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jobs_for_tests  # noqa: F401 - registers noop, sleepy, suicide, started_at
import pytest
from helpers import count_clips, count_jobs
from sqlalchemy import event, select, text

import jobkit
from jobkit import queue
from jobkit.errors import InvalidTransition
from jobkit.models import JobStatus, jobs_table, utcnow, workers_table

TESTS = Path(__file__).resolve().parent
JOBKIT_BIN = str(Path(sys.executable).parent / "jobkit")


async def wait_until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 30.0,
                     every: float = 0.05, what: str = "condition") -> None:
    """Poll ``check`` (sync or async) until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout

    async def holds() -> bool:
        value = check()
        return bool(await value) if inspect.isawaitable(value) else bool(value)

    while not await holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


def worker_env(**settings: Any) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.setdefault("JOBKIT_WORKER_POLL_INTERVAL", "0.2")
    for key, value in settings.items():
        env[f"JOBKIT_{key.upper()}"] = str(value)
    return env


def start_worker(url: str, log: Path, *args: str, **settings: Any) -> subprocess.Popen[bytes]:
    cmd = [JOBKIT_BIN, "work", "--force", "--database-url", url, "--import", "jobs_for_tests",
           *args]
    return subprocess.Popen(cmd, env=worker_env(**settings), stdout=subprocess.DEVNULL,
                            stderr=log.open("ab"))


async def job_status(runner: jobkit.Runner, job_id: Any) -> jobkit.Job:
    return await runner.get_job(job_id)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=timeout)


# ------------------------------------------------------------------------------------
# Concurrency
# ------------------------------------------------------------------------------------


async def test_concurrency_overlaps_jobs(runner: jobkit.Runner) -> None:
    active = 0
    tally: list[int] = []

    @runner.handler("slow")
    async def slow(job: jobkit.Job, db: Any) -> dict[str, Any]:
        nonlocal active
        active += 1
        tally.append(active)
        await asyncio.sleep(0.5)
        active -= 1
        return {}

    await runner.enqueue_many([("slow", {"i": i}) for i in range(10)], allow_unknown=True)
    stats = await runner.drain(concurrency=10, progress=False)
    assert stats.completed == 10
    assert max(tally) == 10 and stats.max_active == 10, "all ten ran at once"

    await runner.enqueue_many([("slow", {"i": i}) for i in range(200)], allow_unknown=True)
    started = time.perf_counter()
    stats = await runner.drain(concurrency=50, progress=False)
    elapsed = time.perf_counter() - started
    assert stats.completed == 200 and max(tally) == 50
    assert elapsed < 50, f"200 x 0.5 s at concurrency 50 took {elapsed:.1f}s (serial: 100 s)"
    assert await count_jobs(runner, status="completed") == 210


async def test_worker_repr_is_a_live_status_line(runner: jobkit.Runner) -> None:
    gate = asyncio.Event()
    started = asyncio.Event()

    @runner.handler("gated")
    async def gated(job: jobkit.Job, db: Any) -> dict[str, Any]:
        started.set()
        await gate.wait()
        return {}

    await runner.enqueue("gated", {}, allow_unknown=True)
    worker = runner.worker(concurrency=3, burst=True)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)
    assert "running=1/3" in repr(worker) and "done=0" in repr(worker)
    gate.set()
    stats = await asyncio.wait_for(task, 10)
    assert "done=1" in repr(worker) and "stopped" in repr(worker)
    assert stats.completed == 1


async def test_exactly_once_claims_across_processes(db_url: str, runner: jobkit.Runner) -> None:
    """4 OS processes x 4 coroutines claim from 2,000 jobs: each job claimed exactly once."""
    await runner.enqueue_many([("noop", {"i": i}) for i in range(2000)], allow_unknown=True)
    procs = [subprocess.Popen([sys.executable, str(TESTS / "claim_proc.py"), db_url, "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=worker_env())
             for _ in range(4)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    claimed = [line for out, _ in outs for line in out.decode().split()]
    errors = "".join(err.decode() for _, err in outs)
    assert "database is locked" not in errors and "ERROR" not in errors, errors[-2000:]
    counts = collections.Counter(claimed)
    assert len(claimed) == 2000 and len(counts) == 2000, "no job claimed twice, none missed"
    assert sum(1 for out, _ in outs if out.strip()) >= 2, "several processes took part"
    assert await count_jobs(runner, status="processing") == 2000


async def test_many_worker_processes_run_every_job_exactly_once(
        backend: str, db_url: str, runner: jobkit.Runner, tmp_path: Path) -> None:
    """8 worker processes on PostgreSQL (4 on SQLite) x 2,000 jobs: each runs exactly once."""
    n_procs = 8 if backend == "postgresql" else 4
    await runner.enqueue_many([("noop", {"i": i}) for i in range(2000)], allow_unknown=True)
    logs = [tmp_path / f"w{i}.log" for i in range(n_procs)]
    procs = [start_worker(db_url, log, "--burst", "--concurrency", "4") for log in logs]
    codes = [p.wait(timeout=300) for p in procs]
    text_logs = [log.read_text() for log in logs]
    assert codes == [0] * n_procs, text_logs
    runs = collections.Counter(
        line.split("Processing job ")[1].split()[0]
        for log in text_logs for line in log.splitlines() if "Processing job " in line)
    assert len(runs) == 2000 and set(runs.values()) == {1}, "every job ran exactly once"
    assert await count_jobs(runner, status="completed") == 2000
    for log in text_logs:
        assert " ERROR " not in log and "Traceback" not in log and "locked" not in log, log[-3000:]


# ------------------------------------------------------------------------------------
# Crashes: the real command, really killed
# ------------------------------------------------------------------------------------


async def test_killed_worker_job_is_completed_by_another_after_lease(
        db_url: str, runner: jobkit.Runner, tmp_path: Path) -> None:
    asset, job = await runner.upload_video("crash.mp4", duration_ms=60_000)
    first = start_worker(db_url, tmp_path / "w1.log", lease_seconds=1.5, heartbeat_seconds=0.3,
                         cut_analysis_seconds=30)

    async def claimed_by_first() -> bool:
        j = await runner.get_job(job.id)
        return j.status is JobStatus.PROCESSING and j.locked_by is not None

    await wait_until(claimed_by_first, what="the first worker to claim the job")
    dead_id = (await runner.get_job(job.id)).locked_by
    first.kill()  # SIGKILL in the middle of the analysis
    assert first.wait(timeout=10) == -signal.SIGKILL
    assert await count_clips(runner, asset.id) == 0

    second = start_worker(db_url, tmp_path / "w2.log", lease_seconds=1.5,
                          heartbeat_seconds=0.3, cut_analysis_seconds=0.05)
    try:
        async def completed() -> bool:
            return (await runner.get_job(job.id)).status is JobStatus.COMPLETED

        await wait_until(completed, timeout=60, what="the second worker to finish the job")
        stored = await runner.get_job(job.id)
        assert stored.attempts == 2 and stored.locked_by is None
        assert await count_clips(runner, asset.id) == 3, "exactly one set of clips"

        async def marked_dead() -> bool:
            async with runner.sessions() as db:
                state = (await db.execute(select(workers_table.c.state).where(
                    workers_table.c.id == dead_id))).scalar_one_or_none()
            return state == "dead"

        await wait_until(marked_dead, timeout=30, what="the killed worker to be marked dead")
    finally:
        assert stop(second) == 0


async def test_poison_job_that_kills_its_worker_ends_failed(
        db_url: str, runner: jobkit.Runner, tmp_path: Path) -> None:
    job = await runner.enqueue("suicide", {}, max_retries=1, allow_unknown=True)
    other = await runner.enqueue("noop", {"i": 1}, priority=-1, allow_unknown=True)
    deaths = 0
    for attempt in range(8):
        proc = start_worker(db_url, tmp_path / f"w{attempt}.log", lease_seconds=1.0,
                            heartbeat_seconds=0.2)

        async def settled(p: subprocess.Popen[bytes] = proc) -> bool:
            stored = await runner.get_job(job.id)
            return p.poll() is not None or stored.status is JobStatus.FAILED

        await wait_until(settled, timeout=60, what="a worker death or the job to fail")
        if proc.poll() is not None:
            deaths += 1
            assert proc.returncode == -signal.SIGKILL
            continue
        # The job failed for good; this worker is alive and finishes the other job.
        await wait_until(lambda: _is_status(runner, other.id, JobStatus.COMPLETED),
                         what="the healthy job to complete")
        assert stop(proc) == 0
        break
    stored = await runner.get_job(job.id)
    assert stored.status is JobStatus.FAILED
    assert stored.attempts == 2 and deaths == 2, "two attempts, two dead workers, then it stops"
    assert "worker lost" in (stored.error or "")


async def _is_status(runner: jobkit.Runner, job_id: Any, status: JobStatus) -> bool:
    return (await runner.get_job(job_id)).status is status


# ------------------------------------------------------------------------------------
# Graceful shutdown
# ------------------------------------------------------------------------------------


async def test_sigterm_lets_the_running_job_finish(db_url: str, runner: jobkit.Runner,
                                                   tmp_path: Path) -> None:
    job = await runner.enqueue("sleepy", {"s": 1.5}, allow_unknown=True)
    proc = start_worker(db_url, tmp_path / "w.log")
    await wait_until(lambda: _is_status(runner, job.id, JobStatus.PROCESSING),
                     what="the job to start")
    assert stop(proc, signal.SIGTERM) == 0
    stored = await runner.get_job(job.id)
    assert stored.status is JobStatus.COMPLETED and stored.attempts == 1
    async with runner.sessions() as db:
        states = (await db.execute(select(workers_table.c.state))).scalars().all()
    assert states == ["stopped"]


async def test_short_grace_releases_the_job_without_burning_an_attempt(
        db_url: str, runner: jobkit.Runner, tmp_path: Path) -> None:
    job = await runner.enqueue("sleepy", {"s": 30}, allow_unknown=True)
    proc = start_worker(db_url, tmp_path / "w.log", shutdown_grace_seconds=0.3)
    await wait_until(lambda: _is_status(runner, job.id, JobStatus.PROCESSING),
                     what="the job to start")
    assert stop(proc, signal.SIGTERM) == 0
    released = await runner.get_job(job.id)
    assert released.status is JobStatus.PENDING and released.attempts == 0
    assert released.locked_by is None
    assert "released 1 unfinished job" in (tmp_path / "w.log").read_text()
    # Another worker completes it later; the release cost no attempt.
    async with runner.sessions() as db:
        await db.execute(jobs_table.update().where(jobs_table.c.id == job.id)
                         .values(params={"s": 0.01}))
        await db.commit()
    stats = await runner.drain(progress=False)
    assert stats.completed == 1
    assert (await runner.get_job(job.id)).attempts == 1


async def test_second_sigint_stops_at_once(db_url: str, runner: jobkit.Runner,
                                           tmp_path: Path) -> None:
    job = await runner.enqueue("sleepy", {"s": 60}, allow_unknown=True)
    proc = start_worker(db_url, tmp_path / "w.log", shutdown_grace_seconds=60)
    await wait_until(lambda: _is_status(runner, job.id, JobStatus.PROCESSING),
                     what="the job to start")
    proc.send_signal(signal.SIGINT)
    await wait_until(lambda: _log_has(tmp_path / "w.log", "finishing running jobs"),
                     what="the first SIGINT to be handled")
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert time.monotonic() - started < 20
    released = await runner.get_job(job.id)
    assert released.status is JobStatus.PENDING and released.attempts == 0


async def _log_has(path: Path, needle: str) -> bool:
    return path.exists() and needle in path.read_text()


async def test_in_process_stop_releases_after_grace(db_url: str, handlers: dict) -> None:
    runner = await jobkit.open(db_url, handlers=handlers, shutdown_grace_seconds=0.2,
                               worker_poll_interval=0.1)
    try:
        started = asyncio.Event()

        @runner.handler("forever")
        async def forever(job: jobkit.Job, db: Any) -> None:
            started.set()
            await asyncio.Event().wait()

        job = await runner.enqueue("forever", {}, allow_unknown=True)
        worker = runner.worker(concurrency=2)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 10)
        worker.stop()
        stats = await asyncio.wait_for(task, 10)
        assert stats.released == 1
        stored = await runner.get_job(job.id)
        assert stored.status is JobStatus.PENDING and stored.attempts == 0
    finally:
        await runner.close()


# ------------------------------------------------------------------------------------
# Timeouts, cancellation, retry_job, scheduling, priorities, dedupe
# ------------------------------------------------------------------------------------


async def test_timeout_cancels_the_attempt(runner: jobkit.Runner) -> None:
    @runner.handler("hang")
    async def hang(job: jobkit.Job, db: Any) -> None:
        await asyncio.sleep(60)

    job = await runner.enqueue("hang", {}, timeout=0.2, max_retries=1, allow_unknown=True)
    stats = await runner.drain(progress=False)
    stored = await runner.get_job(job.id)
    assert stored.status is JobStatus.FAILED and stored.attempts == 2
    assert stats.retried == 1 and stats.failed == 1
    assert stored.error == "TimeoutError: job timed out after 0.2 s"


async def test_default_timeout_from_settings(db_url: str, handlers: dict) -> None:
    async with await jobkit.open(db_url, handlers=handlers, job_timeout=0.1,
                                 max_job_retries=0) as runner:
        @runner.handler("hang")
        async def hang(job: jobkit.Job, db: Any) -> None:
            await asyncio.sleep(60)

        job = await runner.enqueue("hang", {}, allow_unknown=True)
        await runner.step()
        stored = await runner.get_job(job.id)
        assert stored.status is JobStatus.FAILED and "timed out after 0.1 s" in stored.error


async def test_cancel_waiting_and_running_jobs(db_url: str, handlers: dict) -> None:
    async with await jobkit.open(db_url, handlers=handlers, heartbeat_seconds=0.1,
                                 worker_poll_interval=0.1) as runner:
        waiting = await runner.enqueue("x", {}, delay=3600, allow_unknown=True)
        cancelled = await runner.cancel(waiting.id)
        assert cancelled.status is JobStatus.FAILED and cancelled.error == "cancelled"
        with pytest.raises(InvalidTransition, match="only pending, retry or processing"):
            await runner.cancel(waiting.id)

        started = asyncio.Event()
        finished_normally = []

        @runner.handler("long")
        async def long(job: jobkit.Job, db: Any) -> dict[str, Any]:
            started.set()
            await asyncio.sleep(60)
            finished_normally.append(job.id)
            return {}

        running = await runner.enqueue("long", {}, allow_unknown=True)
        worker = runner.worker()
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 10)
        requested = await runner.cancel(running.id)
        assert requested.status is JobStatus.PROCESSING and requested.cancel_requested
        await wait_until(lambda: _is_status(runner, running.id, JobStatus.FAILED),
                         timeout=10, what="the running job to be cancelled")
        worker.stop()
        await asyncio.wait_for(task, 10)
        stored = await runner.get_job(running.id)
        assert stored.error == "cancelled" and stored.attempts == 1 and not finished_normally


async def test_retry_job_sends_a_failed_job_back(runner: jobkit.Runner) -> None:
    calls = []

    @runner.handler("once_broken")
    async def once_broken(job: jobkit.Job, db: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise jobkit.PermanentError("broken the first time")
        return {"ok": True}

    job = await runner.enqueue("once_broken", {}, allow_unknown=True)
    await runner.step()
    assert (await runner.get_job(job.id)).status is JobStatus.FAILED
    again = await runner.retry_job(job.id)
    assert again.status is JobStatus.PENDING and again.attempts == 0
    assert (await runner.step())["status"] == "completed"
    with pytest.raises(InvalidTransition, match="only failed or retry"):
        await runner.retry_job(job.id)
    with pytest.raises(jobkit.JobNotFound):
        await runner.retry_job("00000000-0000-0000-0000-000000000000")
    with pytest.raises(jobkit.JobNotFound):
        await runner.get_job("not-an-id")


async def test_run_at_is_respected_by_a_worker(runner: jobkit.Runner) -> None:
    job = await runner.enqueue("noop", {}, delay=0.6, allow_unknown=True)
    assert (await runner.step())["processed"] is False
    worker = runner.worker()
    task = asyncio.create_task(worker.run())
    await wait_until(lambda: _is_status(runner, job.id, JobStatus.COMPLETED), timeout=10,
                     what="the scheduled job to run")
    stored = await runner.get_job(job.id)
    assert stored.started_at is not None and stored.started_at >= stored.run_at
    worker.stop()
    await task


async def test_priorities_order_a_single_worker(runner: jobkit.Runner) -> None:
    order: list[int] = []

    @runner.handler("rec")
    async def rec(job: jobkit.Job, db: Any) -> dict[str, Any]:
        order.append(job.params["p"])
        return {}

    for p in (0, 5, -3, 5, 10):
        await runner.enqueue("rec", {"p": p}, priority=p, allow_unknown=True)
    await runner.drain(progress=False)
    assert order == [10, 5, 5, 0, -3]


async def test_dedupe_under_eight_concurrent_enqueuers(runner: jobkit.Runner) -> None:
    async def enqueuer() -> jobkit.Job:
        async with runner.sessions() as db:
            return await queue.enqueue(db, "noop", {"v": 1}, dedupe_key="video-42")

    jobs = await asyncio.gather(*(enqueuer() for _ in range(8)))
    assert len({j.id for j in jobs}) == 1, "everyone got the same job back"
    assert await count_jobs(runner, dedupe_key="video-42") == 1
    # Once it is finished, the key is free again.
    await runner.drain(progress=False)
    fresh = await runner.enqueue("noop", {}, dedupe_key="video-42", allow_unknown=True)
    assert fresh.id != jobs[0].id
    assert await count_jobs(runner, dedupe_key="video-42") == 2


def _dedupe_proc(url: str, n: int) -> subprocess.Popen[bytes]:
    code = ("import asyncio, sys, jobkit\n"
            "async def main():\n"
            f"    async with await jobkit.open({url!r}) as r:\n"
            "        js = await asyncio.gather(*(r.enqueue('noop', {}, dedupe_key='k', allow_unknown=True)"
            f" for _ in range({n})))\n"
            "        print(*sorted({str(j.id) for j in js}))\n"
            "asyncio.run(main())\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=worker_env())


async def test_dedupe_across_processes(db_url: str, runner: jobkit.Runner) -> None:
    procs = [_dedupe_proc(db_url, 4) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1].decode()[-1500:] for o in outs]
    ids = {i for out, _ in outs for i in out.decode().split()}
    assert len(ids) == 1 and await count_jobs(runner, dedupe_key="k") == 1


# ------------------------------------------------------------------------------------
# Wake-up
# ------------------------------------------------------------------------------------


async def test_in_process_enqueue_wakes_an_idle_worker(db_url: str, handlers: dict) -> None:
    async with await jobkit.open(db_url, handlers=handlers, worker_poll_interval=30) as runner:
        started = asyncio.Event()

        @runner.handler("ping")
        async def ping(job: jobkit.Job, db: Any) -> dict[str, Any]:
            started.set()
            return {}

        worker = runner.worker(wakeup=False)  # only the in-process path
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: _worker_idle(worker), what="the worker to go idle")
        t0 = time.perf_counter()
        await runner.enqueue("ping", {}, allow_unknown=True)
        await asyncio.wait_for(started.wait(), 5)
        latency = time.perf_counter() - t0
        worker.stop()
        await task
        assert latency < 2.0, f"woke after {latency:.3f}s; the poll interval is 30 s"


async def _worker_idle(worker: jobkit.Worker) -> bool:
    return worker.state == "running" and worker.stats.claimed == 0


async def test_another_process_wakes_within_the_poll_interval(
        db_url: str, runner: jobkit.Runner, tmp_path: Path) -> None:
    """LISTEN/NOTIFY on PostgreSQL, PRAGMA data_version on SQLite: far below a 5 s poll."""
    proc = start_worker(db_url, tmp_path / "w.log", worker_poll_interval=5)
    try:
        warm = await runner.enqueue("noop", {}, allow_unknown=True)  # the worker is up once this one is done
        await wait_until(lambda: _is_status(runner, warm.id, JobStatus.COMPLETED), timeout=30,
                         what="the worker to start")
        latencies = []
        for _ in range(3):
            t0 = time.time()
            job = await runner.enqueue("started_at", {}, allow_unknown=True)
            await wait_until(lambda j=job: _is_status(runner, j.id, JobStatus.COMPLETED),
                             timeout=10, every=0.01, what="the job to run")
            latencies.append((await runner.get_job(job.id)).result["started"] - t0)
        assert max(latencies) < 2.0, f"latencies {latencies}; the poll interval is 5 s"
    finally:
        assert stop(proc) == 0


# ------------------------------------------------------------------------------------
# Database trouble
# ------------------------------------------------------------------------------------


async def test_terminated_postgres_connections_do_not_lose_jobs(
        pg_url: str, handlers: dict, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="jobkit")
    async with await jobkit.open(pg_url, handlers=handlers, lease_seconds=1.5,
                                 heartbeat_seconds=0.3, worker_poll_interval=0.1) as runner:
        @runner.handler("work")
        async def work(job: jobkit.Job, db: Any) -> dict[str, Any]:
            await asyncio.sleep(0.02)
            await db.execute(text("SELECT 1"))
            return {"i": job.params["i"]}

        await runner.enqueue_many([("work", {"i": i}) for i in range(300)], allow_unknown=True)
        worker = runner.worker(concurrency=5)
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: _completed_at_least(runner, 50), what="50 jobs done")
        dbname = runner.engine.url.database
        async with runner.sessions() as db:  # kill every other connection to this database
            killed = (await db.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": dbname})).scalar()
            await db.commit()
        assert killed and killed >= 1
        await wait_until(lambda: _completed_at_least(runner, 300), timeout=90,
                         what="every job to complete after the connections were killed")
        worker.stop()
        await asyncio.wait_for(task, 30)
        assert await count_jobs(runner, status="completed") == 300
        assert task.exception() is None


async def _completed_at_least(runner: jobkit.Runner, n: int) -> bool:
    return await count_jobs(runner, status="completed") >= n


async def test_read_only_sqlite_backs_off_and_recovers(
        sqlite_url: str, handlers: dict, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="jobkit")
    read_only = {"on": False}
    async with await jobkit.open(sqlite_url, handlers=handlers, worker_poll_interval=0.05,
                                 heartbeat_seconds=0.2) as runner:
        @event.listens_for(runner.engine.sync_engine, "connect")
        def _maybe_read_only(dbapi_conn: Any, record: Any) -> None:
            if read_only["on"]:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA query_only=1")
                cur.close()

        worker = runner.worker()
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: _worker_idle(worker), what="the worker to start")
        read_only["on"] = True
        await runner.engine.dispose()  # new connections are read-only from now on
        # The file turned read-only while jobs wait (written through another engine).
        other = jobkit.create_engine(sqlite_url)
        async with jobkit.database.make_sessionmaker(other)() as db:
            job = await queue.enqueue(db, "noop", {})
        await other.dispose()
        await wait_until(lambda: _log_count(caplog, "readonly database") >= 3, timeout=20,
                         what="the worker to report the read-only database")
        t0 = time.monotonic()
        seen = _log_count(caplog, "could not claim jobs")
        await wait_until(lambda: _log_count(caplog, "could not claim jobs") >= seen + 2,
                         timeout=20, what="two more backed-off claim attempts")
        elapsed = time.monotonic() - t0
        assert elapsed > 0.2, "the worker backs off instead of spinning"
        assert _log_count(caplog, "could not claim jobs") < 60, "no busy spin"
        assert not task.done(), "the worker survives a read-only database"
        read_only["on"] = False
        await runner.engine.dispose()
        await wait_until(lambda: _is_status(runner, job.id, JobStatus.COMPLETED), timeout=30,
                         what="the worker to resume once the database is writable")
        worker.stop()
        await task
    assert any("readonly database" in r.getMessage() for r in caplog.records)


def _log_count(caplog: pytest.LogCaptureFixture, needle: str) -> int:
    return sum(needle in r.getMessage() for r in caplog.records)


async def test_worker_on_a_read_only_file_exits_with_a_clear_error(sqlite_url: str) -> None:
    await (await jobkit.open(sqlite_url)).close()  # the schema exists; the file is fine
    path = sqlite_url.split("///", 1)[1]
    ro_url = f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true"
    proc = subprocess.run([JOBKIT_BIN, "work", "--force", "--database-url", ro_url],
                          capture_output=True, text=True, timeout=60, env=worker_env())
    assert proc.returncode == 1
    assert "readonly database" in proc.stderr and "writable" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_unreachable_postgres_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [JOBKIT_BIN, "work", "--force", "--database-url",
         "postgresql+asyncpg://u:pw@127.0.0.1:1/x"],
        capture_output=True, text=True, timeout=60, env=worker_env())
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "pw@" not in proc.stderr
    assert "127.0.0.1" in proc.stderr


def test_work_refuses_when_disabled(sqlite_url: str) -> None:
    env = worker_env(worker_enabled="false")
    proc = subprocess.run([JOBKIT_BIN, "work", "--database-url", sqlite_url],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 3
    assert "JOBKIT_WORKER_ENABLED" in proc.stderr and "--force" in proc.stderr


async def test_worker_loop_like_the_seed(runner: jobkit.Runner) -> None:
    await runner.enqueue("noop", {}, allow_unknown=True)
    async with runner.sessions() as db:
        stats = await jobkit.worker_loop(db, settings=runner.settings, burst=True)
    assert stats.completed == 1


async def test_reaper_marks_expired_jobs_and_silent_workers(runner: jobkit.Runner) -> None:
    job = await runner.enqueue("noop", {}, allow_unknown=True)
    async with runner.sessions() as db:
        # A lease that has already run out: the ghost died right after claiming.
        [claimed] = await queue.claim_jobs(db, 1, worker_id="ghost", lease_seconds=-1)
        await db.execute(workers_table.insert().values(
            id="ghost", hostname="h", pid=1, concurrency=1, state="running", jobs_done=0,
            started_at=utcnow(), last_heartbeat_at=utcnow().replace(year=2020)))
        await db.commit()
    stats = await runner.drain(progress=False)
    assert stats.completed == 1
    stored = await runner.get_job(job.id)
    assert stored.status is JobStatus.COMPLETED and stored.attempts == 2
    async with runner.sessions() as db:
        state = (await db.execute(select(workers_table.c.state).where(
            workers_table.c.id == "ghost"))).scalar_one()
    assert state == "dead"


async def test_heartbeats_keep_a_long_job_leased(db_url: str, handlers: dict) -> None:
    """A job running 3x its lease is not stolen while its worker heartbeats (eight beats per
    lease: a loaded machine can delay a few without the lease lapsing)."""
    async with await jobkit.open(db_url, handlers=handlers, lease_seconds=1.2,
                                 heartbeat_seconds=0.15, worker_poll_interval=0.05) as runner:
        runs: list[int] = []

        @runner.handler("long")
        async def long(job: jobkit.Job, db: Any) -> dict[str, Any]:
            runs.append(job.attempts)
            await asyncio.sleep(3.6)
            return {}

        job = await runner.enqueue("long", {}, allow_unknown=True)
        a, b = runner.worker(), runner.worker()  # b reaps expired leases all along
        tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
        await wait_until(lambda: _is_status(runner, job.id, JobStatus.COMPLETED), timeout=20,
                         what="the long job to complete")
        a.stop()
        b.stop()
        await asyncio.gather(*tasks)
        assert runs == [1], "ran once: the live lease was never reaped"
        assert (await runner.get_job(job.id)).attempts == 1


async def test_listen_connection_comes_back_after_being_killed(pg_url: str,
                                                              handlers: dict) -> None:
    async with await jobkit.open(pg_url, handlers=handlers, worker_poll_interval=30) as runner:
        started = asyncio.Event()

        @runner.handler("ping")
        async def ping(job: jobkit.Job, db: Any) -> dict[str, Any]:
            started.set()
            return {}

        async def listeners() -> int:
            async with runner.sessions() as db:
                n = (await db.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = :d "
                    "AND query ILIKE 'LISTEN%'"), {"d": runner.engine.url.database})).scalar()
                await db.commit()
            return int(n or 0)

        # Only the LISTEN path can wake this worker quickly: not in-process, not the poll.
        worker = runner.worker()
        key = queue.wake_key(runner.engine)
        task = asyncio.create_task(worker.run())
        await wait_until(lambda: _listening(listeners), what="the LISTEN connection")
        queue.remove_waker(key, worker._wake.set)
        async with runner.sessions() as db:
            await db.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d "
                "AND query ILIKE 'LISTEN%'"), {"d": runner.engine.url.database})
            await db.commit()
        await wait_until(lambda: _listening(listeners), timeout=20,
                         what="the LISTEN connection to come back")
        other = jobkit.create_engine(pg_url)
        async with jobkit.database.make_sessionmaker(other)() as db:
            t0 = time.perf_counter()
            await queue.enqueue(db, "ping", {})
        await other.dispose()
        await asyncio.wait_for(started.wait(), 10)
        latency = time.perf_counter() - t0
        worker.stop()
        await task
        assert latency < 5, f"woken after {latency:.2f}s; the poll interval is 30 s"


async def _listening(listeners: Callable[[], Awaitable[int]]) -> bool:
    return await listeners() >= 1


async def test_a_worker_leaves_jobs_it_has_no_handler_for_waiting(
        runner: jobkit.Runner, caplog: pytest.LogCaptureFixture) -> None:
    """A mis-deployed worker must not destroy other teams' jobs as 'unknown'."""
    caplog.set_level(logging.WARNING, logger="jobkit")
    foreign = await runner.enqueue("thumbnail", {"asset": 1}, allow_unknown=True)  # asked for
    mine = await runner.enqueue("noop", {}, allow_unknown=True)
    stats = await runner.drain(progress=False)
    assert stats.completed == 1 and stats.failed == 0
    assert "has no handler for ['thumbnail']" in caplog.text
    left = await runner.get_job(foreign.id)
    assert left.status is JobStatus.PENDING and left.attempts == 0 and left.locked_by is None
    assert (await runner.get_job(mine.id)).status is JobStatus.COMPLETED
    # Once a worker has the handler, it runs.
    @runner.handler("thumbnail")
    async def thumbnail(job: jobkit.Job, db: Any) -> dict[str, Any]:
        return {"ok": True}

    assert (await runner.drain(progress=False)).completed == 1
    # claim_unknown=True restores the seed's behaviour: unknown types fail at once.
    odd = await runner.enqueue("nobody", {}, allow_unknown=True)
    stats = await runner.worker(burst=True, claim_unknown=True).run()
    stored = await runner.get_job(odd.id)
    assert stats.failed == 1 and stored.status is JobStatus.FAILED
    assert "UnknownJobType" in (stored.error or "")


def test_cli_step_without_the_handler_module_leaves_the_job_and_says_why(
        sqlite_url: str) -> None:
    env = worker_env()
    run = lambda *a: subprocess.run([JOBKIT_BIN, *a, "--database-url", sqlite_url],  # noqa: E731
                                    capture_output=True, text=True, timeout=60, env=env)
    assert run("init").returncode == 0
    made = run("enqueue", "sleepy", "--params", '{"s": 0}', "--import", "jobs_for_tests")
    assert made.returncode == 0, made.stderr
    out = run("step")
    assert out.returncode == 0
    assert "waiting for a handler: 1 'sleepy'" in out.stdout and "--import" in out.stdout
    done = run("step", "--import", "jobs_for_tests")
    assert "completed" in done.stdout, done.stdout + done.stderr


async def test_interrupted_step_releases_its_job(runner: jobkit.Runner) -> None:
    started = asyncio.Event()

    @runner.handler("slowpoke")
    async def slowpoke(job: jobkit.Job, db: Any) -> None:
        started.set()
        await asyncio.sleep(60)

    job = await runner.enqueue("slowpoke", {}, allow_unknown=True)
    task = asyncio.create_task(runner.step())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()  # what Ctrl-C does to `jobkit step`
    with pytest.raises(asyncio.CancelledError):
        await task
    stored = await runner.get_job(job.id)
    assert stored.status is JobStatus.PENDING and stored.attempts == 0
