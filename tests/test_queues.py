"""Named queues, global per-type limits, dependencies, and the synchronous API."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from test_worker import JOBKIT_BIN, start_worker, stop, wait_until, worker_env

import jobkit
from jobkit.backends import backend_of
from jobkit.errors import InvalidTransition
from jobkit.models import JobStatus

# ------------------------------------------------------------------------------------
# Queues
# ------------------------------------------------------------------------------------


def _burst(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JOBKIT_BIN, "work", "--force", "--burst", "--database-url", url,
                           "--import", "jobs_for_tests", *args],
                          env=worker_env(), capture_output=True, text=True, timeout=120)


async def test_a_worker_of_queue_a_never_runs_queue_b_and_the_default_serves_all(
        db_url: str, runner: jobkit.Runner) -> None:
    a = [await runner.enqueue("noop", {"i": i}, queue="a") for i in range(5)]
    b = [await runner.enqueue("noop", {"i": i}, queue="b", priority=10) for i in range(5)]
    d = await runner.enqueue("noop", {"i": 99})
    assert d.queue == "default" and a[0].queue == "a"

    proc = _burst(db_url, "--queue", "a", "--concurrency", "4")
    assert proc.returncode == 0, proc.stderr
    for job in a:
        assert (await runner.get_job(job.id)).status is JobStatus.COMPLETED
    for job in [*b, d]:
        stored = await runner.get_job(job.id)
        assert stored.status is JobStatus.PENDING and stored.attempts == 0, \
            "a worker of queue a never claimed (not even released) another queue's job"

    proc = _burst(db_url, "--queue", "b", "--queue", "nothing-here")
    assert proc.returncode == 0, proc.stderr
    assert all([(await runner.get_job(j.id)).status is JobStatus.COMPLETED for j in b])
    assert (await runner.get_job(d.id)).status is JobStatus.PENDING

    await runner.enqueue("noop", {"i": 7}, queue="c")
    proc = _burst(db_url)  # no --queue: every queue
    assert proc.returncode == 0, proc.stderr
    counts = await runner.status_counts(by_queue=True)
    assert counts.index.tolist() == ["a", "b", "c", "default"]
    assert counts["completed"].tolist() == [5, 5, 1, 1]
    assert int(counts.drop(columns="completed").to_numpy().sum()) == 0


async def test_queue_options_step_drain_and_views(runner: jobkit.Runner) -> None:
    @runner.handler("render", queue="video")
    async def render(job: jobkit.Job, db: Any) -> dict[str, Any]:
        return {"ok": True}

    job = await runner.enqueue("render", {})
    assert job.queue == "video", "the handler's queue is the default"
    other = await runner.enqueue("render", {}, queue="urgent")
    assert other.queue == "urgent"
    many = await runner.enqueue_many([("render", {}), {"job_type": "noop", "params": {}}])
    assert [j.queue for j in many] == ["video", "default"]

    assert (await runner.step(queues="nope"))["processed"] is False
    stats = await runner.drain(queues=["video"], progress=False)
    assert stats.completed == 2
    assert (await runner.get_job(other.id)).status is JobStatus.PENDING
    frame = await runner.jobs(queue="urgent")
    assert frame["id"].tolist() == [str(other.id)] and frame["queue"].tolist() == ["urgent"]

    with pytest.raises(InvalidTransition, match="queue must be a non-empty name"):
        await runner.enqueue("render", {}, queue="")
    with pytest.raises(InvalidTransition, match="queue must be"):
        runner.worker(queues=[" padded "])


async def test_the_claim_of_one_queue_uses_the_queue_index(runner: jobkit.Runner) -> None:
    """The claim's own predicates, on a table of mostly finished jobs with fresh statistics:
    one queue's claim walks ix_jobs_eligible_queue in claim order (no sort)."""
    from sqlalchemy import text

    pg = runner.backend == "postgresql"
    async with runner.sessions() as db:
        rows = "generate_series(1, 20000) g" if pg else (
            "(WITH RECURSIVE c(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM c WHERE g < 20000)"
            " SELECT g FROM c)")
        uid = "gen_random_uuid()" if pg else "lower(hex(randomblob(16)))"
        await db.execute(text(
            "INSERT INTO jobs (id, job_type, queue, status, params, attempts, max_attempts,"
            " priority, cancel_requested, run_at, created_at, updated_at) "
            f"SELECT {uid}, 'noop', CASE WHEN g % 10 = 0 THEN 'video' ELSE 'default' END, "
            "CASE WHEN g % 100 = 0 THEN 'pending' ELSE 'completed' END, '{}', 0, 4, 0, "
            f"false, {'now()' if pg else 'CURRENT_TIMESTAMP'}, "
            f"{'now()' if pg else 'CURRENT_TIMESTAMP'}, {'now()' if pg else 'CURRENT_TIMESTAMP'}"
            f" FROM {rows}"))
        await db.commit()
        await db.execute(text("ANALYZE jobs" if pg else "ANALYZE"))
        await db.commit()
        until = "now()" if pg else "'9999'"
        backend = backend_of(runner.backend)
        deps_done, unlimited = backend.DEPS_DONE, backend.UNLIMITED
        where = (f"status IN ('pending', 'retry') AND run_at <= {until} "
                 f"AND {{queue}} AND {unlimited} AND {deps_done} "
                 "ORDER BY priority DESC, created_at, id LIMIT 10")
        one_queue = where.format(queue="queue = 'video'")
        if pg:
            plan = "\n".join(r[0] for r in (await db.execute(text(
                f"EXPLAIN SELECT id FROM jobs WHERE {one_queue} "
                "FOR UPDATE SKIP LOCKED"))).all())
            ok = "ix_jobs_eligible_queue" in plan and "Sort" not in plan
            every = "\n".join(r[0] for r in (await db.execute(text(
                f"EXPLAIN SELECT id FROM jobs WHERE {where.format(queue='true')} "
                "FOR UPDATE SKIP LOCKED"))).all())
            print(every)
            assert "ix_jobs_eligible" in every and "Sort" not in every, every
        else:
            plan = "\n".join(str(r[-1]) for r in (await db.execute(text(
                "EXPLAIN QUERY PLAN SELECT id FROM jobs INDEXED BY ix_jobs_eligible_queue "
                f"WHERE {one_queue}"))).all())
            ok = "ix_jobs_eligible_queue" in plan and "TEMP B-TREE" not in plan
        await db.commit()
    print(plan)
    assert ok, plan


# ------------------------------------------------------------------------------------
# Global limits
# ------------------------------------------------------------------------------------


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans],
                    key=lambda ev: (ev[0], ev[1]))  # an end before a start at the same time
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


@pytest.mark.slow
async def test_max_running_holds_across_four_processes(
        db_url: str, runner: jobkit.Runner, tmp_path: Path) -> None:
    jobs = await runner.enqueue_many([("timed", {"s": 0.2, "i": i}) for i in range(30)])
    procs = [start_worker(db_url, tmp_path / f"w{i}.log", "--concurrency", "10",
                          max_running="timed=2") for i in range(4)]
    try:
        async def all_done() -> bool:
            return (await runner.status_counts())["completed"] == len(jobs)

        await wait_until(all_done, timeout=120, what="the 30 limited jobs to complete")
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0, 0, 0, 0], [(tmp_path / f"w{i}.log").read_text() for i in range(4)]
    results = [(await runner.get_job(j.id)).result for j in jobs]
    spans = [(r["start"], r["end"]) for r in results]
    overlap = _max_overlap(spans)
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    busy = sum(e - s for s, e in spans) / span
    paired = sum(1 for i, (s, e) in enumerate(spans)
                 if any(s < e2 and s2 < e for j, (s2, e2) in enumerate(spans) if j != i))
    print(f"max overlap {overlap}; {paired}/30 jobs ran beside another; mean running "
          f"{busy:.2f} over {span:.2f} s; processes used {len({r['pid'] for r in results})}")
    assert overlap == 2, "never more than the limit, and the limit is used"
    assert await runner.limits() == {"timed": 2}
    # Not serialised further than the limit needs: jobs ran two at a time, not one by one.
    assert paired >= 20, f"only {paired} of 30 jobs overlapped another"


async def test_max_running_from_the_handler_option_and_explain(runner: jobkit.Runner) -> None:
    running = 0
    peak = 0
    release = asyncio.Event()

    @runner.handler("cut", max_running=2)
    async def cut(job: jobkit.Job, db: Any) -> dict[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return {}

    jobs = await runner.enqueue_many([("cut", {"i": i}) for i in range(6)])
    workers = [runner.worker(concurrency=5, burst=False, schedules=False) for _ in range(2)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        await wait_until(lambda: running == 2, what="two cut jobs running")
        third = await runner.explain(jobs[2].id)
        assert third.case == "limited"
        assert "2 cut jobs are running and at most 2 may run at once" in third.summary
        assert peak == 2
        release.set()
        await wait_until(lambda: sum(w.stats.completed for w in workers) == 6,
                         what="all six to complete")
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*tasks)
    assert peak == 2
    await runner.set_limit("cut", None)
    assert await runner.limits() == {}
    with pytest.raises(InvalidTransition, match="max_running must be a whole number >= 1"):
        await runner.set_limit("cut", 0)


# ------------------------------------------------------------------------------------
# Dependencies
# ------------------------------------------------------------------------------------


async def test_pipeline_runs_in_order_fails_together_and_revives(runner: jobkit.Runner) -> None:
    log: list[tuple[str, str]] = []
    broken = {"A": True}

    def step(name: str) -> Any:
        async def run(job: jobkit.Job, db: Any) -> dict[str, Any]:
            log.append((name, "start"))
            await asyncio.sleep(0.05)
            if name == "A" and broken["A"]:
                raise jobkit.PermanentError("A is broken")
            log.append((name, "end"))
            return {"step": name}
        return run

    for name in "ABCD":
        runner.handler(f"step_{name}")(step(name))

    # A → (B, C) → D, in one call.
    a, b, c, d = await runner.enqueue_many([
        {"job_type": "step_A"},
        {"job_type": "step_B", "after": [0]},
        {"job_type": "step_C", "after": [0]},
        {"job_type": "step_D", "after": [1, 2]},
    ])
    waiting = await runner.explain(d.id)
    assert waiting.case == "dependency"
    assert f"waiting for job {b.id} (pending) and job {c.id} (pending)" in waiting.summary

    stats = await runner.drain(concurrency=4, progress=False)
    assert stats.failed == 1 and stats.completed == 0, "only A ran"
    stored = {j.id: await runner.get_job(j.id) for j in (a, b, c, d)}
    assert stored[a.id].status is JobStatus.FAILED
    assert stored[b.id].error == f"dependency {a.id} failed"
    assert stored[c.id].error == f"dependency {a.id} failed"
    assert stored[d.id].status is JobStatus.FAILED
    assert stored[d.id].error in (f"dependency {b.id} failed", f"dependency {c.id} failed")
    why = await runner.explain(b.id)
    assert why.case == "dependency_failed" and str(a.id) in why.summary

    broken["A"] = False
    log.clear()
    await runner.retry_job(a.id)
    for j in (b, c, d):
        revived = await runner.get_job(j.id)
        assert revived.status is JobStatus.PENDING and revived.error is None
    stats = await runner.drain(concurrency=4, progress=False)
    assert stats.completed == 4
    order = [f"{n}:{e}" for n, e in log]
    assert order.index("A:end") < order.index("B:start")
    assert order.index("A:end") < order.index("C:start")
    assert max(order.index("B:end"), order.index("C:end")) < order.index("D:start")


async def test_after_accepts_jobs_and_ids_and_refuses_what_does_not_exist(
        runner: jobkit.Runner) -> None:
    first = await runner.enqueue("noop", {"i": 1})
    second = await runner.enqueue("noop", {"i": 2}, after=[first])
    third = await runner.enqueue("noop", {"i": 3}, after=[str(second.id), first.id])
    assert (await runner.step())["job_id"] == str(first.id)
    assert (await runner.step())["job_id"] == str(second.id)
    assert (await runner.step())["job_id"] == str(third.id)
    with pytest.raises(InvalidTransition, match="after: no job 00000000-0000-0000-0000-0000000000"):
        await runner.enqueue("noop", {}, after=["00000000-0000-0000-0000-000000000001"])
    with pytest.raises(InvalidTransition, match="is not a job or a job id"):
        await runner.enqueue("noop", {}, after=["nope"])
    with pytest.raises(InvalidTransition, match=r"jobs\[1\]: after=1 must be the index of an "
                                                r"earlier item"):
        await runner.enqueue_many([("noop", {}), {"job_type": "noop", "after": [1]}])
    # Waiting for a job that already failed fails at once, naming it.
    dead = await runner.enqueue("noop", {})
    await runner.cancel(dead.id)
    late = await runner.enqueue("noop", {}, after=[dead])
    stored = await runner.get_job(late.id)
    assert stored.status is JobStatus.FAILED and stored.error == f"dependency {dead.id} failed"


# ------------------------------------------------------------------------------------
# The synchronous API
# ------------------------------------------------------------------------------------


def test_sync_api_from_eight_threads(db_url: str) -> None:
    with jobkit.connect_sync(db_url) as sync:
        ids: list[list[str]] = [[] for _ in range(8)]
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def produce(t: int) -> None:
            try:
                start.wait()
                for i in range(100):
                    ids[t].append(str(sync.enqueue("noop", {"t": t, "i": i}).id))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        assert errors == []
        flat = [i for chunk in ids for i in chunk]
        assert len(flat) == 800 and len(set(flat)) == 800
        assert sync.status_counts() == {"pending": 800, "processing": 0, "retry": 0,
                                        "completed": 0, "failed": 0}
        seen = {(sync.get_job(j).params["t"], sync.get_job(j).params["i"]) for j in flat[::97]}
        assert len(seen) == len(flat[::97])

        # The same validation and errors as the async API.
        with pytest.raises(InvalidTransition, match="job_type must be a non-empty string"):
            sync.enqueue("", {})
        with pytest.raises(jobkit.InvalidParams):
            sync.enqueue("noop", {"bad": object()})
        with pytest.raises(jobkit.JobNotFound):
            sync.get_job("00000000-0000-0000-0000-000000000000")
        a, b = sync.enqueue_many([{"job_type": "noop"}, {"job_type": "noop", "after": [0]}])
        cancelled = sync.cancel(a.id)
        assert cancelled.status is JobStatus.FAILED and cancelled.error == "cancelled"
        assert sync.get_job(b.id).error == f"dependency {a.id} failed"
        assert sync.retry_job(a.id).status is JobStatus.PENDING
        assert sync.get_job(b.id).status is JobStatus.PENDING
    with pytest.raises(jobkit.JobkitError, match="closed"):
        sync.get_job(a.id)
