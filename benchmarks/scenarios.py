"""The scenarios, each as a jobkit run and a bare-SQL run. Every run checks its work.

Throughput functions return jobs per second; latency functions return the list of
enqueue → handler-start delays in milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import func, select, text

import jobkit
from jobkit import queue
from jobkit.models import Clip, VideoAsset, jobs_table, new_id, utcnow

from . import bare
from .common import (
    CheckFailed,
    check_all_completed,
    check_exactly_once,
    plain_dsn,
    status_of_all,
)
from .handlers import EXECUTED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def norm(x: Any) -> str:
    return str(x) if isinstance(x, uuid.UUID) else str(uuid.UUID(str(x)))


async def open_runner(url: str, **overrides: Any) -> jobkit.Runner:
    return await jobkit.open(url, worker_poll_interval=0.5, **overrides)


async def job_ids(url: str) -> set[str]:
    r = await open_runner(url)
    try:
        async with r.sessions() as db:
            rows = (await db.execute(select(jobs_table.c.id))).scalars().all()
    finally:
        await r.close()
    return {norm(x) for x in rows}


async def seed_jobs(url: str, n: int, job_type: str) -> set[str]:
    """``n`` pending jobs, inserted outside the clock; returns their ids."""
    r = await open_runner(url)
    try:
        for start in range(0, n, 10_000):
            await r.enqueue_many([(job_type, {"i": i}) for i in range(start, min(n, start + 10_000))])
    finally:
        await r.close()
    return await job_ids(url)


async def seed_jobs_bare(url: str, n: int, job_type: str) -> set[str]:
    b = await bare.connect(url)
    try:
        for start in range(0, n, 10_000):
            await b.insert_many([(job_type, {"i": i}) for i in range(start, min(n, start + 10_000))])
    finally:
        await b.close()
    return await job_ids(url)


async def check_pending(url: str, n: int, what: str) -> None:
    counts = await status_of_all(url)
    if counts != {"pending": n}:
        raise CheckFailed(f"{what}: expected {n} pending jobs, got {counts}")


# ---------------------------------------------------------------------------
# enqueue
# ---------------------------------------------------------------------------
async def jk_enqueue_single(url: str, n: int) -> float:
    r = await open_runner(url)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            await r.enqueue("bench_noop", {"i": i})
        dt = time.perf_counter() - t0
    finally:
        await r.close()
    await check_pending(url, n, "enqueue")
    return n / dt


async def jk_enqueue_many(url: str, n: int) -> float:
    r = await open_runner(url)
    try:
        items = [("bench_noop", {"i": i}) for i in range(n)]
        t0 = time.perf_counter()
        await r.enqueue_many(items)
        dt = time.perf_counter() - t0
    finally:
        await r.close()
    await check_pending(url, n, "enqueue_many")
    return n / dt


async def bare_enqueue_single(url: str, n: int) -> float:
    b = await bare.connect(url)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            await b.insert_one("bench_noop", {"i": i})
        dt = time.perf_counter() - t0
    finally:
        await b.close()
    await check_pending(url, n, "bare enqueue")
    return n / dt


async def bare_enqueue_many(url: str, n: int) -> float:
    b = await bare.connect(url)
    try:
        items = [("bench_noop", {"i": i}) for i in range(n)]
        t0 = time.perf_counter()
        await b.insert_many(items)
        dt = time.perf_counter() - t0
    finally:
        await b.close()
    await check_pending(url, n, "bare enqueue_many")
    return n / dt


# ---------------------------------------------------------------------------
# drain in one process
# ---------------------------------------------------------------------------
async def jk_drain(url: str, n: int, concurrency: int, job_type: str = "bench_noop") -> float:
    expected = await seed_jobs(url, n, job_type)
    EXECUTED.clear()
    r = await open_runner(url)
    try:
        worker = r.worker(concurrency=concurrency, burst=True)
        t0 = time.perf_counter()
        stats = await worker.run()
        dt = time.perf_counter() - t0
    finally:
        await r.close()
    what = f"jobkit drain {job_type} c={concurrency}"
    check_exactly_once(EXECUTED, expected, what)
    if stats.completed != n:
        raise CheckFailed(f"{what}: worker reports {stats.as_dict()}")
    await check_all_completed(url, n, what)
    if job_type == "bench_write":
        await check_bench_rows(url, expected, what)
    return n / dt


async def check_bench_rows(url: str, expected: set[str], what: str) -> None:
    r = await open_runner(url)
    try:
        async with r.sessions() as db:
            rows = (await db.execute(text("SELECT job_id FROM bench_rows"))).scalars().all()
    finally:
        await r.close()
    got = Counter(norm(x) for x in rows)
    check_exactly_once(got, expected, f"{what} (rows written)")


def _bare_handler(row: Any) -> None:
    EXECUTED[norm(row[0])] += 1


async def bare_drain(url: str, n: int, mode: str, job_type: str = "bench_noop") -> float:
    """``mode``: ``one`` (claim 1, complete 1), ``batched`` (100 and 100) or ``write``
    (claim 1; insert a row and complete it in one transaction)."""
    expected = await seed_jobs_bare(url, n, job_type)
    EXECUTED.clear()
    b = await bare.connect(url)
    try:
        t0 = time.perf_counter()
        if mode == "one":
            done = await b.drain_one_at_a_time(_bare_handler)
        elif mode == "batched":
            done = await b.drain_batched(_bare_handler, 100)
        else:
            done = await b.drain_transactional(_bare_handler)
        dt = time.perf_counter() - t0
    finally:
        await b.close()
    what = f"bare drain {mode}"
    if done != n:
        raise CheckFailed(f"{what}: completed {done} of {n}")
    check_exactly_once(EXECUTED, expected, what)
    await check_all_completed(url, n, what)
    if mode == "write":
        await check_bench_rows(url, expected, what)
    return n / dt


# ---------------------------------------------------------------------------
# cut_analysis: 500 jobs of 0.5 s at concurrency 100
# ---------------------------------------------------------------------------
async def _seed_assets(url: str, n: int, bare_jobs: bool) -> set[str]:
    r = await open_runner(url)
    try:
        now = utcnow()
        assets = [VideoAsset(id=new_id(), filename=f"v{i}.mp4", duration_ms=60_000, created_at=now)
                  for i in range(n)]
        async with r.sessions() as db:
            db.add_all(assets)
            await db.commit()
        if not bare_jobs:
            await r.enqueue_many([("cut_analysis", {"video_asset_id": str(a.id)}) for a in assets])
    finally:
        await r.close()
    if bare_jobs:
        b = await bare.connect(url)
        try:
            await b.insert_many([("cut_analysis", {"video_asset_id": str(a.id)}) for a in assets])
        finally:
            await b.close()
    return await job_ids(url)


async def _check_clips(url: str, n: int, what: str) -> None:
    r = await open_runner(url)
    try:
        async with r.sessions() as db:
            clips = int((await db.execute(select(func.count()).select_from(Clip))).scalar_one())
            per_job = (await db.execute(select(Clip.job_id, func.count()).group_by(Clip.job_id)))
            counts = {norm(j): int(c) for j, c in per_job}
    finally:
        await r.close()
    if clips != 3 * n or len(counts) != n or set(counts.values()) != {3}:
        raise CheckFailed(f"{what}: {clips} clips for {len(counts)} jobs, expected 3 per job")


async def jk_cut(url: str, n: int, concurrency: int, seconds: float) -> float:
    await _seed_assets(url, n, bare_jobs=False)
    r = await open_runner(url, cut_analysis_seconds=seconds)
    try:
        worker = r.worker(concurrency=concurrency, burst=True)
        t0 = time.perf_counter()
        stats = await worker.run()
        dt = time.perf_counter() - t0
    finally:
        await r.close()
    if stats.completed != n or stats.processed != n:
        raise CheckFailed(f"jobkit cut_analysis: {stats.as_dict()}")
    await check_all_completed(url, n, "jobkit cut_analysis")
    await _check_clips(url, n, "jobkit cut_analysis")
    return dt


async def bare_cut(url: str, n: int, concurrency: int, seconds: float) -> float:
    """Claim ``concurrency`` jobs, read each asset, sleep, write 3 clips + complete per job."""
    await _seed_assets(url, n, bare_jobs=True)
    b = await bare.connect(url)
    from jobkit.handlers.cut_analysis import clip_bounds, visual_score

    pg = isinstance(b, bare.PgBare)

    async def load(row: Any) -> tuple[str, Any]:
        params = json.loads(row[2]) if isinstance(row[2], str) else row[2]
        aid = params["video_asset_id"]
        if pg:
            asset = await b.conn.fetchrow(  # type: ignore[attr-defined]
                "SELECT filename, duration_ms FROM video_assets WHERE id=$1", uuid.UUID(aid))
        else:
            rows = await b.conn.execute_fetchall(  # type: ignore[attr-defined]
                "SELECT filename, duration_ms FROM video_assets WHERE id=?", (uuid.UUID(aid).hex,))
            asset = rows[0]
        return aid, asset

    async def handler(aid: str, asset: Any) -> tuple[Any, list[tuple[Any, ...]]]:
        await asyncio.sleep(seconds)
        clips = [(new_id(), uuid.UUID(aid), s, e, visual_score(asset[0], asset[1], i))
                 for i, (s, e) in enumerate(clip_bounds(asset[1]))]
        return {"clips_created": len(clips)}, clips

    async def complete(row: Any, res: tuple[Any, list[tuple[Any, ...]]]) -> None:
        result, clips = res
        jid = uuid.UUID(str(row[0])) if not pg else row[0]
        if pg:
            async with b.conn.transaction():  # type: ignore[attr-defined]
                await b.conn.executemany(  # type: ignore[attr-defined]
                    "INSERT INTO clips (id, video_asset_id, job_id, start_ms, end_ms, "
                    "visual_score, created_at) VALUES ($1, $2, $3, $4, $5, $6, now())",
                    [(c[0], c[1], jid, c[2], c[3], c[4]) for c in clips])
                ok = await b.complete_one(row, result)
                if not ok:
                    raise AssertionError("fence")
        else:
            ts = bare.sqlite_ts(utcnow())
            conn = b.conn  # type: ignore[attr-defined]
            await conn.execute("BEGIN IMMEDIATE")
            await conn.executemany(
                "INSERT INTO clips (id, video_asset_id, job_id, start_ms, end_ms, visual_score, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(c[0].hex, c[1].hex, jid.hex, c[2], c[3], c[4], ts) for c in clips])
            ok = await b.complete_one(row, result)
            if not ok:
                raise AssertionError("fence")
            await conn.execute("COMMIT")

    try:
        t0 = time.perf_counter()
        done = 0
        while True:
            rows = await b.claim(concurrency)
            if not rows:
                break
            # One connection: read the assets in turn, then "analyse" concurrently.
            loaded = [await load(r) for r in rows]
            results = await asyncio.gather(*(handler(a, asset) for a, asset in loaded))
            for row, res in zip(rows, results, strict=True):
                await complete(row, res)
                done += 1
        dt = time.perf_counter() - t0
    finally:
        await b.close()
    if done != n:
        raise CheckFailed(f"bare cut_analysis: {done} of {n}")
    await check_all_completed(url, n, "bare cut_analysis")
    await _check_clips(url, n, "bare cut_analysis")
    return dt


# ---------------------------------------------------------------------------
# latency: enqueue → handler start, a trickle of jobs
# ---------------------------------------------------------------------------
async def _trickle(enqueue: Any, n: int, gap: float) -> None:
    start = time.perf_counter()
    for i in range(n):
        await enqueue({"t0": time.time(), "i": i})
        delay = start + (i + 1) * gap - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


async def _latencies(url: str, n: int, what: str) -> list[float]:
    r = await open_runner(url)
    try:
        async with r.sessions() as db:
            rows = (await db.execute(select(jobs_table.c.id, jobs_table.c.params,
                                            jobs_table.c.result, jobs_table.c.status))).all()
    finally:
        await r.close()
    if len(rows) != n or any(s != "completed" for _, _, _, s in rows):
        raise CheckFailed(f"{what}: {len(rows)} jobs, statuses {Counter(s for *_, s in rows)}")
    return sorted((res["t"] - p["t0"]) * 1000 for _, p, res, _ in rows)


async def _wait_done(url: str, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await status_of_all(url)).get("completed", 0) >= n:
            return
        await asyncio.sleep(0.05)
    raise CheckFailed(f"latency: jobs not done after {timeout}s: {await status_of_all(url)}")


async def jk_latency_inproc(url: str, n: int, gap: float) -> list[float]:
    EXECUTED.clear()
    r = await open_runner(url)
    try:
        worker = r.worker(concurrency=10)
        task = asyncio.ensure_future(worker.run())
        while worker.state != "running":  # noqa: ASYNC110 - the Worker offers no event
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        await _trickle(lambda p: r.enqueue("bench_started", p), n, gap)
        await _wait_done(url, n)
        worker.stop()
        await task
    finally:
        await r.close()
    lat = await _latencies(url, n, "jobkit latency in-process")
    check_exactly_once(EXECUTED, await job_ids(url), "jobkit latency in-process")
    return lat


def spawn_worker(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.worker_proc", url, *args], cwd=ROOT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **(env or {})})


async def jk_latency_xproc(url: str, n: int, gap: float) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        proc = spawn_worker(url, "--concurrency", "10", env={"JOBKIT_BENCH_EXEC_DIR": folder})
        try:
            assert proc.stdout is not None
            line = await asyncio.to_thread(proc.stdout.readline)
            if line.strip() != "ready":
                raise CheckFailed(f"worker process did not start: {line!r}")
            r = await open_runner(url)
            try:
                await _trickle(lambda p: r.enqueue("bench_started", p), n, gap)
            finally:
                await r.close()
            await _wait_done(url, n)
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.communicate, None, 30)
        executed = __import__("benchmarks.handlers", fromlist=["read_dumps"]).read_dumps(folder)
    lat = await _latencies(url, n, "jobkit latency across processes")
    check_exactly_once(executed, await job_ids(url), "jobkit latency across processes")
    return lat


async def bare_latency(url: str, n: int, gap: float) -> list[float]:
    """A consumer on its own connection: LISTEN (PostgreSQL) or ``PRAGMA data_version`` every
    1 ms (SQLite); on a wake-up it claims everything ready and runs it."""
    producer = await bare.connect(url)
    consumer = await bare.connect(url)
    starts: dict[str, float] = {}
    stop = asyncio.Event()
    wake = asyncio.Event()

    async def run_ready() -> None:
        while True:
            rows = await consumer.claim(10)
            if not rows:
                return
            for row in rows:
                t = time.time()
                starts[norm(row[0])] = t
                EXECUTED[norm(row[0])] += 1
            await consumer.complete_batch([(row, {"t": starts[norm(row[0])]}) for row in rows])

    async def loop() -> None:
        if isinstance(consumer, bare.PgBare):
            await consumer.conn.add_listener("jobkit_jobs", lambda *_: wake.set())
            while not stop.is_set():
                await wake.wait()
                wake.clear()
                await run_ready()
        else:
            conn = consumer.conn  # type: ignore[attr-defined]
            last = None
            while not stop.is_set():
                value = (await conn.execute_fetchall("PRAGMA data_version"))[0][0]
                if value != last:
                    # Read before claiming: a commit after this read changes it again.
                    # (Re-reading after the claim lost a job committed in between; this
                    # connection's own commits never change its data_version.)
                    last = value
                    await run_ready()
                await asyncio.sleep(0.001)

    EXECUTED.clear()
    task = asyncio.ensure_future(loop())
    try:
        await asyncio.sleep(0.1)
        await _trickle(lambda p: producer.insert_one("bench_started", p), n, gap)
        await _wait_done(url, n)
    finally:
        stop.set()
        wake.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.close()
        await consumer.close()
    lat = await _latencies(url, n, "bare latency")
    check_exactly_once(EXECUTED, await job_ids(url), "bare latency")
    return lat


# ---------------------------------------------------------------------------
# several worker processes
# ---------------------------------------------------------------------------
async def multiproc(url: str, n: int, procs: int, concurrency: int, use_bare: bool) -> float:
    expected = await (seed_jobs_bare if use_bare else seed_jobs)(url, n, "bench_noop")
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "JOBKIT_BENCH_EXEC_DIR": folder}
        module = "benchmarks.bare_proc" if use_bare else "benchmarks.worker_proc"
        args = [url, "--burst", "--wait-go", "--concurrency", str(concurrency)]
        ps = [subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
              for _ in range(procs)]
        try:
            for p in ps:
                assert p.stdout is not None
                line = await asyncio.to_thread(p.stdout.readline)
                if line.strip() != "ready":
                    raise CheckFailed(f"worker process did not start: {line!r}")
            t0 = time.perf_counter()
            for p in ps:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            outs = [await asyncio.to_thread(p.communicate, None, 600) for p in ps]
            dt = time.perf_counter() - t0
        finally:
            for p in ps:
                if p.poll() is None:
                    p.kill()
        for p, (out, _) in zip(ps, outs, strict=True):
            if p.returncode != 0:
                raise CheckFailed(f"worker process failed ({p.returncode}): {out[-500:]}")
        from .handlers import read_dumps

        executed = Counter({norm(k): v for k, v in read_dumps(folder).items()})
    what = f"{'bare' if use_bare else 'jobkit'} {procs} processes"
    check_exactly_once(executed, expected, what)
    await check_all_completed(url, n, what)
    return n / dt


# ---------------------------------------------------------------------------
# scale: 1,000,000 finished jobs
# ---------------------------------------------------------------------------
async def fill_finished(url: str, n: int) -> None:
    """``n`` completed jobs, inserted in bulk by bare SQL."""
    if url.startswith("sqlite"):
        import aiosqlite

        from .common import plain_dsn as _  # noqa: F401

        path = url.split(":///", 1)[1]
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) "
                "INSERT INTO jobs (" + bare.COLS + ") SELECT lower(hex(randomblob(16))), 'bench_noop', 'completed', "
                "'{}', 'null', NULL, 1, 4, 0, NULL, NULL, 0, "
                "strftime('%Y-%m-%d %H:%M:%f000', 'now', '-' || (i % 86400) || ' seconds'), "
                "strftime('%Y-%m-%d %H:%M:%f000', 'now', '-' || (i % 86400) || ' seconds'), "
                "strftime('%Y-%m-%d %H:%M:%f000', 'now'), strftime('%Y-%m-%d %H:%M:%f000', 'now'), "
                "strftime('%Y-%m-%d %H:%M:%f000', 'now'), NULL, NULL FROM s", (n,))
            await conn.execute("COMMIT")
            await conn.execute("ANALYZE")
    else:
        import asyncpg

        conn = await asyncpg.connect(plain_dsn(url))
        try:
            await conn.execute(
                "INSERT INTO jobs (" + bare.COLS + ") SELECT gen_random_uuid(), 'bench_noop', 'completed', '{}', "
                "'null', NULL, 1, 4, 0, NULL, NULL, false, now() - (i % 86400) * interval '1 s', "
                "now() - (i % 86400) * interval '1 s', now(), now(), now(), NULL, NULL "
                "FROM generate_series(1, $1) AS i", n)
            await conn.execute("VACUUM ANALYZE jobs")
        finally:
            await conn.close()


async def measure_queries(url: str, pending: int, repeats: int) -> dict[str, float]:
    """Median times (ms) of a 1-job claim, a 100-job claim, status counts and queue depth,
    with ``pending`` waiting jobs (each claim is rolled back so the queue stays the same)."""
    from statistics import median

    await seed_more(url, pending)
    r = await open_runner(url)
    out: dict[str, list[float]] = {"claim1": [], "claim100": [], "status_counts": [],
                                   "queue_depth": []}
    try:
        for _ in range(repeats):
            for key, n in (("claim1", 1), ("claim100", 100)):
                async with r.sessions() as db:
                    t0 = time.perf_counter()
                    jobs = await queue.claim_jobs(db, n, worker_id="scale", commit=False)
                    out[key].append((time.perf_counter() - t0) * 1000)
                    if len(jobs) != n:
                        raise CheckFailed(f"scale: claimed {len(jobs)} of {n}")
                    await db.rollback()
            async with r.sessions() as db:
                t0 = time.perf_counter()
                counts = await status_counts(db)
                out["status_counts"].append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                depth = await queue_depth(db)
                out["queue_depth"].append((time.perf_counter() - t0) * 1000)
                ready = depth.get("eligible", depth.get("ready"))
                if ready != pending or counts.get("pending") != pending:
                    raise CheckFailed(f"scale: counts {counts}, depth {depth}")
    finally:
        await r.close()
    return {k: median(v) for k, v in out.items()}


async def seed_more(url: str, n: int) -> None:
    r = await open_runner(url)
    try:
        await r.enqueue_many([("bench_noop", {"i": i}) for i in range(n)])
    finally:
        await r.close()


async def status_counts(db: Any) -> dict[str, int]:
    """``jobkit.stats.jobs_per_status`` when it exists, else the same query."""
    try:
        from jobkit import stats

        return await stats.jobs_per_status(db)  # type: ignore[no-any-return]
    except ImportError:
        rows = (await db.execute(select(jobs_table.c.status, func.count())
                                 .group_by(jobs_table.c.status))).all()
        return {str(s): int(c) for s, c in rows}


async def queue_depth(db: Any) -> dict[str, int]:
    try:
        from jobkit import stats

        return await stats.queue_depth(db)  # type: ignore[no-any-return]
    except ImportError:
        n = (await db.execute(select(func.count()).select_from(jobs_table).where(
            jobs_table.c.status.in_(queue.ELIGIBLE_VALUES),
            jobs_table.c.run_at <= utcnow()))).scalar_one()
        return {"ready": int(n)}


async def memory(url: str, n: int, marks: tuple[int, int]) -> dict[str, Any]:
    """A worker process drains ``n`` no-op jobs; its RSS at ``marks`` and its peak."""
    expected = await seed_jobs(url, n, "bench_noop")
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker_proc", url, "--burst", "--concurrency", "100",
             "--rss-at", f"{marks[0]},{marks[1]}"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
            env={**os.environ, "JOBKIT_BENCH_EXEC_DIR": folder})
        out, _ = await asyncio.to_thread(proc.communicate, None, 900)
        if proc.returncode != 0:
            raise CheckFailed(f"memory worker failed: {out[-500:]}")
        from .handlers import read_dumps

        executed = Counter({norm(k): v for k, v in read_dumps(folder).items()})
    check_exactly_once(executed, expected, "memory drain")
    await check_all_completed(url, n, "memory drain")
    report = json.loads(out.strip().splitlines()[-1])
    rss = report["rss"]
    return {"rss_first": rss[str(marks[0])], "rss_last": rss[str(marks[1])],
            "peak_first": rss[f"peak@{marks[0]}"], "peak_last": report["peak_rss"],
            "elapsed": report["elapsed"], "marks": list(marks)}
