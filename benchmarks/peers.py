"""The peers: the queues a user would pick instead, driven through their public APIs.

- PostgreSQL: pgqueuer (``QueueManager`` + ``Queries`` on an asyncpg connection, the way
  its README sets it up), in its own database ``jobkit_bench_pgqueuer``.
- SQLite: huey's ``SqliteHuey`` (its thread consumer, ``create_consumer``), in its own
  database file per run.

Each run checks its work like jobkit's: every job's handler ran exactly once (per-job
execution counts; across processes, counts dumped by the worker process) and nothing is
left queued. Both are optional, benchmark-only dependencies (``pip install -e '.[bench]'``);
:func:`available` says which are installed.

Settings chosen for the peers, and why:

- pgqueuer "concurrency c": ``max_concurrent_tasks=c`` with ``batch_size=c // 2`` (its own
  rule: the cap must be at least twice the batch); for c = 1 the smallest legal cap, 2
  (the entrypoint's ``concurrency_limit=1`` instead drained 2.5× slower here). Drains use
  its ``QueueExecutionMode.drain``. For the latency trickle, ``run()``'s defaults (batches
  of 10, no cap: faster here than a cap of 10).
- huey "concurrency c": ``workers=c`` threads (``worker_type='thread'``). Its idle workers
  poll with a growing sleep (0.1 s, ×1.15, up to 10 s by default); for the latency trickle
  they poll every 5 ms (``initial_delay=max_delay=0.005``, ``backoff=1``), jobkit's own SQLite watch
  interval, so the comparison is of the queues and not of a default.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from .common import PG_ADMIN_URL, CheckFailed, check_exactly_once, plain_dsn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_PEER_DB = "jobkit_bench_pgqueuer"
HUEY_POLL = 0.005


def available() -> dict[str, bool]:
    """Which peers are installed (the ``bench`` extra)."""
    return {name: importlib.util.find_spec(name) is not None for name in ("pgqueuer", "huey")}


# ---------------------------------------------------------------------------
# pgqueuer
# ---------------------------------------------------------------------------
def pg_peer_dsn() -> str:
    return plain_dsn(PG_ADMIN_URL, PG_PEER_DB)


async def pg_create_db() -> None:
    import asyncpg

    admin = await asyncpg.connect(plain_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{PG_PEER_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{PG_PEER_DB}"')
    finally:
        await admin.close()


async def pg_drop_db() -> None:
    import asyncpg

    admin = await asyncpg.connect(plain_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{PG_PEER_DB}" WITH (FORCE)')
    finally:
        await admin.close()


async def pg_fresh() -> str:
    """pgqueuer's schema, installed anew in its own database; returns the DSN."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    dsn = pg_peer_dsn()
    conn = await asyncpg.connect(dsn)
    try:
        q = Queries(AsyncpgDriver(conn))
        if await q.schema_is_installed():
            await q.uninstall()
        await q.install()
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return dsn


async def _pg_counts(dsn: str) -> tuple[int, Counter[str]]:
    """(jobs left in the queue table, final statuses in pgqueuer's log)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        left = int(await conn.fetchval("SELECT count(*) FROM pgqueuer"))
        rows = await conn.fetch("SELECT status::text, count(*) FROM pgqueuer_log "
                                "WHERE status::text NOT IN ('queued', 'picked') GROUP BY 1")
    finally:
        await conn.close()
    return left, Counter({r[0]: int(r[1]) for r in rows})


async def pg_enqueue_single(n: int) -> float:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    dsn = await pg_fresh()
    conn = await asyncpg.connect(dsn)
    try:
        q = Queries(AsyncpgDriver(conn))
        t0 = time.perf_counter()
        for i in range(n):
            await q.enqueue("bench_noop", str(i).encode())
        dt = time.perf_counter() - t0
        queued = int(await conn.fetchval("SELECT count(*) FROM pgqueuer WHERE status='queued'"))
    finally:
        await conn.close()
    if queued != n:
        raise CheckFailed(f"pgqueuer enqueue: {queued} queued of {n}")
    return n / dt


async def pg_enqueue_many(n: int) -> float:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    dsn = await pg_fresh()
    conn = await asyncpg.connect(dsn)
    try:
        q = Queries(AsyncpgDriver(conn))
        payloads: list[bytes | None] = [str(i).encode() for i in range(n)]
        t0 = time.perf_counter()
        await q.enqueue(["bench_noop"] * n, payloads, [0] * n)
        dt = time.perf_counter() - t0
        queued = int(await conn.fetchval("SELECT count(*) FROM pgqueuer WHERE status='queued'"))
    finally:
        await conn.close()
    if queued != n:
        raise CheckFailed(f"pgqueuer enqueue_many: {queued} queued of {n}")
    return n / dt


def _pg_manager(conn: Any, concurrency: int | None, handler: Any) -> tuple[Any, dict[str, Any]]:
    """A QueueManager with one ``bench`` entrypoint, and the run() arguments for
    ``concurrency`` jobs at once."""
    from pgqueuer import AsyncpgDriver, Queries, QueueManager

    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    qm.entrypoint("bench")(handler)
    if concurrency is None:  # its defaults (batches of 10, no cap)
        return qm, {}
    # Its rule: the cap is at least twice the batch. For concurrency 1 the smallest legal
    # cap is 2; the entrypoint's concurrency_limit=1 instead drained 2.5x slower here.
    batch = max(1, concurrency // 2)
    return qm, {"batch_size": batch, "max_concurrent_tasks": max(concurrency, 2 * batch)}


async def pg_drain(n: int, concurrency: int) -> float:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries
    from pgqueuer.types import QueueExecutionMode

    dsn = await pg_fresh()
    conn = await asyncpg.connect(dsn)
    executed: Counter[str] = Counter()

    async def handler(job: Any) -> None:
        executed[job.payload.decode()] += 1

    try:
        q = Queries(AsyncpgDriver(conn))
        for start in range(0, n, 10_000):
            m = min(n, start + 10_000) - start
            await q.enqueue(["bench"] * m, [str(i).encode() for i in range(start, start + m)],
                            [0] * m)
    finally:
        await conn.close()
    conn = await asyncpg.connect(dsn)
    try:
        qm, kwargs = _pg_manager(conn, concurrency, handler)
        t0 = time.perf_counter()
        await qm.run(mode=QueueExecutionMode.drain, **kwargs)
        dt = time.perf_counter() - t0
    finally:
        await conn.close()
    what = f"pgqueuer drain c={concurrency}"
    check_exactly_once(executed, {str(i) for i in range(n)}, what)
    left, statuses = await _pg_counts(dsn)
    if left or statuses.get("successful") != n:
        raise CheckFailed(f"{what}: {left} jobs left, final statuses {dict(statuses)}")
    return n / dt


async def pg_latency_inproc(n: int, gap: float) -> list[float]:
    """A QueueManager (concurrency 10) in this process; a producer on its own connection
    enqueues one job every ``gap`` s; enqueue call → handler start, in ms."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    from .scenarios import _trickle

    dsn = await pg_fresh()
    starts: dict[str, list[float]] = {}
    sent: dict[str, float] = {}
    done = asyncio.Event()

    async def handler(job: Any) -> None:
        t = time.time()
        starts.setdefault(json.loads(job.payload)["i"], []).append(t)
        if len(starts) >= n:
            done.set()

    wconn = await asyncpg.connect(dsn)
    pconn = await asyncpg.connect(dsn)
    qm, kwargs = _pg_manager(wconn, None, handler)
    task = asyncio.ensure_future(qm.run(**kwargs))
    try:
        await asyncio.sleep(0.5)  # let it LISTEN
        producer = Queries(AsyncpgDriver(pconn))

        async def enqueue(p: dict[str, Any]) -> None:
            sent[str(p["i"])] = p["t0"]
            await producer.enqueue("bench", json.dumps({"i": str(p["i"])}).encode())

        await _trickle(enqueue, n, gap)
        async with asyncio.timeout(30):
            await done.wait()
    finally:
        qm.shutdown.set()
        await asyncio.gather(task, return_exceptions=True)
        await wconn.close()
        await pconn.close()
    check_exactly_once(Counter({k: len(v) for k, v in starts.items()}), set(sent),
                       "pgqueuer latency in-process")
    return sorted((starts[k][0] - sent[k]) * 1000 for k in sent)


# ---------------------------------------------------------------------------
# huey (SqliteHuey)
# ---------------------------------------------------------------------------
class HueyRun:
    """A SqliteHuey on its own file with the benchmark's tasks, counting executions."""

    def __init__(self, path: str, on_start: Any = None) -> None:
        from huey import SqliteHuey

        self.path = path
        self.huey = SqliteHuey("bench", filename=path)
        self.executed: Counter[str] = Counter()
        self.starts: dict[str, float] = {}
        self.lock = threading.Lock()
        self.target = 0
        self.all_done = threading.Event()
        dump = os.environ.get("JOBKIT_BENCH_EXEC_DIR")

        @self.huey.task(name="bench_noop")
        def bench_noop(i: int) -> None:
            with self.lock:
                self.executed[str(i)] += 1
                if len(self.executed) >= self.target:
                    self.all_done.set()

        @self.huey.task(name="bench_started")
        def bench_started(i: int) -> None:
            t = time.time()
            if on_start is not None:  # in a worker process: report it there
                on_start(i, t)
                return
            with self.lock:
                self.executed[str(i)] += 1
                self.starts.setdefault(str(i), t)
                if len(self.executed) >= self.target:
                    self.all_done.set()

        self.noop, self.started = bench_noop, bench_started
        self.dump_dir = dump

    def seed(self, n: int) -> None:
        """``n`` noop tasks, the rows ``huey.enqueue`` writes, in one transaction (outside
        the clock)."""
        rows = [(self.huey.name, self.huey.serialize_task(self.noop.s(i)), 0.0)
                for i in range(n)]
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO task (queue, data, priority) VALUES (?, ?, ?)", rows)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def consumer(self, workers: int, poll: float | None = None) -> Any:
        kwargs: dict[str, Any] = {"workers": workers, "worker_type": "thread",
                                  "periodic": False, "check_worker_health": False}
        if poll is not None:
            kwargs.update(initial_delay=poll, backoff=1.0, max_delay=poll)
        return self.huey.create_consumer(**kwargs)

    def pending(self) -> int:
        return int(self.huey.pending_count())


@contextlib.contextmanager
def _own_signals() -> Iterator[None]:
    """huey's consumer installs its own signal handlers (from the main thread); put ours back
    once it has stopped."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {s: signal.getsignal(s) for s in sigs}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _huey_path(folder: str) -> str:
    return os.path.join(folder, f"huey-{time.monotonic_ns()}.db")


def huey_enqueue_single(folder: str, n: int) -> float:
    h = HueyRun(_huey_path(folder))
    t0 = time.perf_counter()
    for i in range(n):
        h.noop(i)
    dt = time.perf_counter() - t0
    if h.pending() != n:
        raise CheckFailed(f"huey enqueue: {h.pending()} pending of {n}")
    h.huey.storage.close()
    return n / dt


def huey_drain(folder: str, n: int, concurrency: int) -> float:
    h = HueyRun(_huey_path(folder))
    h.seed(n)
    h.target = n
    consumer = h.consumer(concurrency)
    with _own_signals():
        t0 = time.perf_counter()
        consumer.start()
        finished = h.all_done.wait(600)
        dt = time.perf_counter() - t0
        consumer.stop(graceful=True)
    what = f"huey drain c={concurrency}"
    if not finished:
        raise CheckFailed(f"{what}: {len(h.executed)} of {n} after 600 s")
    check_exactly_once(h.executed, {str(i) for i in range(n)}, what)
    if h.pending():
        raise CheckFailed(f"{what}: {h.pending()} tasks left")
    h.huey.storage.close()
    return n / dt


async def huey_latency_inproc(folder: str, n: int, gap: float) -> list[float]:
    """A 10-thread consumer in this process; enqueue call → task start, in ms."""
    from .scenarios import _trickle

    h = HueyRun(_huey_path(folder))
    h.target = n
    sent: dict[str, float] = {}
    consumer = h.consumer(10, poll=HUEY_POLL)
    with _own_signals():
        consumer.start()
    try:
        await asyncio.sleep(0.3)

        async def enqueue(p: dict[str, Any]) -> None:
            sent[str(p["i"])] = p["t0"]
            h.started(p["i"])

        await _trickle(enqueue, n, gap)
        if not await asyncio.to_thread(h.all_done.wait, 30):
            raise CheckFailed(f"huey latency: {len(h.executed)} of {n} after 30 s")
    finally:
        with _own_signals():
            consumer.stop(graceful=True)
    check_exactly_once(h.executed, set(sent), "huey latency in-process")
    h.huey.storage.close()
    return sorted((h.starts[k] - sent[k]) * 1000 for k in sent)


# ---------------------------------------------------------------------------
# across processes: a peer's worker in `python -m benchmarks.peer_proc`
# ---------------------------------------------------------------------------
async def latency_xproc(peer: str, n: int, gap: float, folder: str) -> list[float]:
    """The peer's worker (concurrency 10) in another process; this one enqueues."""
    from .scenarios import _trickle

    if peer == "pgqueuer":
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        target = await pg_fresh()
    else:
        target = _huey_path(folder)
        HueyRun(target).huey.storage.close()  # create the schema before the worker starts
    with tempfile.TemporaryDirectory() as dump:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.peer_proc", peer, target, "--dump", dump],
            cwd=ROOT, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        sent: dict[str, float] = {}
        try:
            assert proc.stdout is not None and proc.stdin is not None
            line = await asyncio.to_thread(proc.stdout.readline)
            if line.strip() != "ready":
                raise CheckFailed(f"{peer} worker process did not start: {line!r}")
            if peer == "pgqueuer":
                conn = await asyncpg.connect(target)
                q = Queries(AsyncpgDriver(conn))

                async def enqueue(p: dict[str, Any]) -> None:
                    sent[str(p["i"])] = p["t0"]
                    await q.enqueue("bench", json.dumps({"i": str(p["i"])}).encode())

                try:
                    await _trickle(enqueue, n, gap)
                finally:
                    await conn.close()
            else:
                h = HueyRun(target)

                async def enqueue(p: dict[str, Any]) -> None:  # type: ignore[misc]
                    sent[str(p["i"])] = p["t0"]
                    h.started(p["i"])

                await _trickle(enqueue, n, gap)
                h.huey.storage.close()
            deadline = time.monotonic() + 30
            while len(_read_starts(dump)) < n and time.monotonic() < deadline:  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.05)
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            await asyncio.to_thread(proc.communicate, None, 60)
        finally:
            if proc.poll() is None:
                proc.kill()
        starts = _read_starts(dump)
    what = f"{peer} latency across processes"
    check_exactly_once(Counter({k: len(v) for k, v in starts.items()}), set(sent), what)
    return sorted((starts[k][0] - sent[k]) * 1000 for k in sent)


def _read_starts(folder: str) -> dict[str, list[float]]:
    """Start times per job, from the worker process's line-per-job file."""
    out: dict[str, list[float]] = {}
    path = os.path.join(folder, "starts.txt")
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                key, t = line.split()
                out.setdefault(key, []).append(float(t))
    return out


__all__ = ["HUEY_POLL", "PG_PEER_DB", "available", "huey_drain", "huey_enqueue_single",
           "huey_latency_inproc", "latency_xproc", "pg_create_db", "pg_drain", "pg_drop_db",
           "pg_enqueue_many", "pg_enqueue_single", "pg_fresh", "pg_latency_inproc"]
