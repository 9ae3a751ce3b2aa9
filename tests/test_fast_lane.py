"""The fast lane (the backends' ``fetch_alone``): the worker's claim, the batched completion
and the single enqueue run as one statement on the driver's own connection. What comes
back must be exactly what a session returns, field by field, on both backends."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy.exc
from helpers import count_checkpoints
from sqlalchemy import select

import jobkit
from jobkit import queue
from jobkit.backends.common import JOB_COLUMNS
from jobkit.models import Job, JobStatus, jobs_table


async def _orm_job(runner: jobkit.Runner, job_id: uuid.UUID) -> Job:
    """The job read back through an ORM session (the mapper's own loading)."""
    async with runner.sessions() as db:
        job = (await db.execute(select(Job).where(Job.id == job_id))).scalar_one()
        db.expunge(job)
        return job


def _fields(job: Job) -> dict[str, Any]:
    return {c.name: getattr(job, c.name) for c in JOB_COLUMNS}


def _same(fast: Job, orm: Job, *, types: bool = True) -> None:
    a, b = _fields(fast), _fields(orm)
    for name in a:
        assert a[name] == b[name], f"{name}: fast lane {a[name]!r} != ORM {b[name]!r}"
        assert not types or type(a[name]) is type(b[name]), \
            f"{name}: fast lane {type(a[name])} != ORM {type(b[name])}"
    for name in ("run_at", "created_at", "updated_at", "started_at", "locked_until"):
        if a[name] is not None:
            assert a[name].tzinfo is not None and a[name].utcoffset() == timedelta(0), name


async def test_claimed_job_equals_the_orm_job_field_by_field(runner: jobkit.Runner) -> None:
    when = datetime(2020, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    params = {"text": "é ✓", "n": 3, "f": 0.5, "nested": {"list": [1, None, True]}}
    job = await runner.enqueue("noop", params, priority=7, timeout=12.5, max_retries=2,
                               run_at=when, queue="fast", allow_unknown=True)
    inserted = await _orm_job(runner, job.id)
    # The enqueue's own Job equals what it stored (its id is the uuid.UUID it made; asyncpg
    # returns its own subclass).
    _same(job, inserted, types=False)
    claimed = await queue.claim_alone(runner.engine, 5, worker_id="w-fast",
                                      lease_seconds=60, queues=["fast"])
    assert [j.id for j in claimed] == [job.id]
    fast = claimed[0]
    assert fast.status == JobStatus.PROCESSING and fast.attempts == 1
    assert fast.locked_by == "w-fast" and fast.params == params and fast.result is None
    _same(fast, await _orm_job(runner, job.id))

    # A result of every JSON shape, through the one-job and the many-jobs completion.
    other = await runner.enqueue("noop", {}, queue="fast", allow_unknown=True)
    third = await runner.enqueue("noop", {}, queue="fast", allow_unknown=True)
    [j2] = await queue.claim_alone(runner.engine, 1, worker_id="w-fast", lease_seconds=60,
                                   queues=["fast"])
    [j3] = await queue.claim_alone(runner.engine, 1, worker_id="w-fast", lease_seconds=60)
    assert {j2.id, j3.id} == {other.id, third.id}
    done = await queue.complete_many_alone(runner.engine, [(fast, {"ok": [1, "x", None]})],
                                           worker_id="w-fast")
    assert done == {fast.id}
    done = await queue.complete_many_alone(runner.engine, [(j2, None), (j3, [1, 2])],
                                           worker_id="w-fast")
    assert done == {j2.id, j3.id}
    for j, result in ((fast, {"ok": [1, "x", None]}), (j2, None), (j3, [1, 2])):
        stored = await _orm_job(runner, j.id)
        assert stored.status == JobStatus.COMPLETED and stored.result == result
        assert j.finished_at == stored.finished_at and j.finished_at is not None
    # Fenced: done again, nothing more happens.
    assert await queue.complete_many_alone(runner.engine, [(fast, {"again": 1})],
                                           worker_id="w-fast") == set()
    assert (await _orm_job(runner, fast.id)).result == {"ok": [1, "x", None]}


async def test_the_fast_claim_keeps_the_claim_order(runner: jobkit.Runner) -> None:
    jobs = await runner.enqueue_many([{"job_type": "noop", "priority": p}
                                      for p in (0, 5, 0, 9, 5)], allow_unknown=True)
    claimed = await queue.claim_alone(runner.engine, 3, worker_id="w", lease_seconds=60)
    assert [j.id for j in claimed] == [jobs[3].id, jobs[1].id, jobs[4].id]
    rest = await queue.claim_alone(runner.engine, 10, worker_id="w", lease_seconds=60)
    assert [j.id for j in rest] == [jobs[0].id, jobs[2].id]


async def test_a_driver_error_is_sqlalchemys(runner: jobkit.Runner) -> None:
    """Callers of the fast lane catch the same errors as through a session."""
    row = queue.build_job_row("noop", {})
    await queue.insert_job(runner.engine, row)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        await queue.insert_job(runner.engine, row)  # the same id again
    # The pool is healthy afterwards.
    job = await runner.enqueue("noop", {}, allow_unknown=True)
    assert (await _orm_job(runner, job.id)).id == job.id
    assert runner.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_the_fast_lane_on_postgresql_uses_the_database_clock(pg_url: str) -> None:
    async with await jobkit.open(pg_url) as runner:
        await runner.enqueue("noop", {}, allow_unknown=True)
        [job] = await queue.claim_alone(runner.engine, 1, worker_id="w", lease_seconds=30)
        async with runner.sessions() as db:
            lease = (await db.execute(select(jobs_table.c.locked_until - jobs_table.c.started_at)
                                      .where(jobs_table.c.id == job.id))).scalar_one()
        assert lease == timedelta(seconds=30)  # both from now() in the same statement


async def test_fast_lane_cancellation_storm(db_url: str) -> None:
    """Cancelled at any moment, the fast lane lets CancelledError through and leaves every
    connection healthy (and, on SQLite, the write gate free). On SQLite a statement whose
    lock is free runs inline: whole, nothing to cancel in the middle."""
    await _storm(db_url, inline=True)


async def test_sqlite_waiting_lane_cancellation_storm(sqlite_url: str) -> None:
    """The same storm with SQLite's inline lane off: every statement takes the path that
    waits in aiosqlite's thread, which can be cancelled in flight."""
    await _storm(sqlite_url, inline=False)


async def _storm(db_url: str, *, inline: bool) -> None:
    import asyncio
    import random

    from test_cancellation import _settle

    from jobkit.backends import sqlite

    runner = await jobkit.open(db_url, retry_backoff_base=0.0)
    if not inline:
        sqlite._INLINE.pop(runner.engine.sync_engine)  # noqa: SLF001
    rng = random.Random(15)
    try:
        await runner.enqueue_many([("noop", {"i": i}) for i in range(100)], allow_unknown=True)
        held: list[Job] = []

        async def claim() -> None:
            held.extend(await queue.claim_alone(runner.engine, 2, worker_id="storm",
                                                lease_seconds=60))

        async def complete() -> None:
            items = [(held.pop(), {"i": 1}) for _ in range(min(len(held), 3))]
            await queue.complete_many_alone(runner.engine, items, worker_id="storm")

        async def enqueue() -> None:
            await runner.enqueue("noop", {}, allow_unknown=True)

        ops = [claim, complete, enqueue]
        cancelled = 0
        for _ in range(150):
            task = asyncio.ensure_future(rng.choice(ops)())
            if rng.random() < 0.5:
                for _ in range(rng.randrange(0, 12)):
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(rng.uniform(0, 0.004))
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                cancelled += 1
        assert cancelled >= (1 if inline and runner.backend == "sqlite" else 30)
        await _settle(runner)
        gate = sqlite.write_gate(runner.engine)
        assert gate is None or gate.holders == 0
        # Still healthy: everything left drains, each job exactly once.
        stats = await runner.drain(concurrency=4, progress=False)
        assert stats.failed == 0 and stats.lost == 0
        await _settle(runner)
    finally:
        await runner.close()


async def test_a_job_finishing_during_the_done_report_wakes_a_full_worker(
        runner: jobkit.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full worker that reports its jobs done (a database write) while its jobs finish
    is woken by them: it does not sleep a whole poll interval with free slots (before, a
    drain on PostgreSQL lost ~2 s this way every few hundred jobs)."""
    import asyncio

    @runner.handler("short")
    async def short(job: Job, db: Any) -> dict[str, Any]:
        await asyncio.sleep(0.02)
        return {}

    await runner.enqueue_many([("short", {}) for _ in range(6)])
    worker = runner.worker(concurrency=2, wakeup=False)
    worker.settings = runner.settings.replace(worker_poll_interval=30)
    report = worker._report_done  # noqa: SLF001

    async def slow_report() -> None:
        await asyncio.sleep(0.1)  # the jobs running now finish meanwhile
        await report()

    monkeypatch.setattr(worker, "_report_done", slow_report)
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(100):
            if worker.stats.completed >= 6:
                break
            await asyncio.sleep(0.05)
        assert worker.stats.completed == 6, worker.stats
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


# ---------------------------------------------------------------------------
# SQLite's inline lane: statements whose lock is free run on the loop's thread
# ---------------------------------------------------------------------------
def _lane(runner: jobkit.Runner) -> Any:
    from jobkit.backends import sqlite

    return sqlite._INLINE[runner.engine.sync_engine]  # noqa: SLF001


async def _statements_of(runner: jobkit.Runner, lane: Any) -> list[str]:
    """Wrap the lane's connection so the test sees what runs inline."""
    seen: list[str] = []
    conn = lane._connection(runner.engine)  # noqa: SLF001

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(conn, name)

        def execute(self, sql: str, *args: Any) -> Any:
            seen.append(sql.split()[0])
            return conn.execute(sql, *args)

    lane.conn = Spy()
    return seen


async def test_sqlite_inline_lane_runs_the_hot_statements_without_a_hand_off(
        sqlite_url: str) -> None:
    async with await jobkit.open(sqlite_url) as runner:
        lane = _lane(runner)
        seen = await _statements_of(runner, lane)
        job = await runner.enqueue("noop", {"i": 1}, allow_unknown=True)
        [claimed] = await queue.claim_alone(runner.engine, 5, worker_id="w", lease_seconds=60)
        assert claimed.id == job.id
        done = await queue.complete_many_alone(runner.engine, [(claimed, {"ok": 1})],
                                               worker_id="w")
        assert done == {job.id}
        assert seen == ["INSERT", "UPDATE", "UPDATE"]
        stored = await _orm_job(runner, job.id)
        assert stored.status == JobStatus.COMPLETED and stored.result == {"ok": 1}


async def test_sqlite_inline_lane_steps_aside_while_another_connection_writes(
        sqlite_url: str) -> None:
    """Another process's write transaction holds SQLite's lock: the enqueue does not block
    the event loop (nor fail at once): it waits on aiosqlite's thread, and lands as soon
    as the lock is free."""
    import asyncio
    import sqlite3

    async with await jobkit.open(sqlite_url) as runner:
        lane = _lane(runner)
        seen = await _statements_of(runner, lane)
        other = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        try:
            task = asyncio.create_task(runner.enqueue("noop", {}, allow_unknown=True))
            ticks = 0
            while ticks < 20:  # the loop keeps running while the enqueue waits
                await asyncio.sleep(0.005)
                ticks += 1
            assert not task.done(), "the enqueue waits for the lock, it does not fail"
            assert seen == ["INSERT"], "tried inline once, found the lock taken"
        finally:
            other.execute("COMMIT")
            other.close()
        job = await asyncio.wait_for(task, 10)
        assert (await _orm_job(runner, job.id)).status == JobStatus.PENDING
        await runner.enqueue("noop", {}, allow_unknown=True)
        assert seen == ["INSERT", "INSERT"], "inline again once the lock is free"


async def test_sqlite_inline_lane_errors_are_sqlalchemy_errors(sqlite_url: str) -> None:
    from jobkit.backends import sqlite

    async with await jobkit.open(sqlite_url) as runner:
        row = queue.build_job_row("noop", {}, default_max_retries=3)
        await sqlite.fetch_alone(runner.engine, sqlite.INSERT_ALONE, row)
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            await sqlite.fetch_alone(runner.engine, sqlite.INSERT_ALONE, row)
        assert (await _orm_job(runner, row["id"])).id == row["id"]  # the first one stays


async def test_sqlite_inline_lane_follows_the_pool_and_steps_back_for_connect_listeners(
        sqlite_url: str) -> None:
    from sqlalchemy import event

    async with await jobkit.open(sqlite_url) as runner:
        lane = _lane(runner)
        first = lane._connection(runner.engine)  # noqa: SLF001
        assert first is not None
        await runner.engine.dispose()  # new connections from now on: the lane's too
        assert lane.conn is None
        with pytest.raises(Exception, match="closed"):
            first.execute("SELECT 1")
        second = lane._connection(runner.engine)  # noqa: SLF001
        assert second is not None and second is not first

        @event.listens_for(runner.engine.sync_engine, "connect")
        def _setup(dbapi_conn: Any, record: Any) -> None:  # a user's per-connection setup
            pass

        assert lane._connection(runner.engine) is None  # noqa: SLF001
        job = await runner.enqueue("noop", {}, allow_unknown=True)  # the waiting path
        assert (await _orm_job(runner, job.id)).id == job.id


async def test_sqlite_inline_writes_are_checkpointed_off_the_loop(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from jobkit.backends import sqlite

    calls = count_checkpoints(monkeypatch)
    monkeypatch.setattr(sqlite, "CHECKPOINT_EVERY", 10)
    async with await jobkit.open(sqlite_url) as runner:
        lane = _lane(runner)
        start = lane.writes  # (opening committed the new schema: a counted write)

        def checkpoints(writes: int) -> int:
            return (start + writes) // 10 - start // 10

        for i in range(35):
            await runner.enqueue("noop", {"i": i}, allow_unknown=True)
            while lane.checkpoints:  # one at a time: a write meanwhile starts none
                await asyncio.gather(*lane.checkpoints)
        assert lane.writes == start + 35 and len(calls) == checkpoints(35) >= 3
        conn = lane._connection(runner.engine)  # noqa: SLF001
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        # The pooled connections' automatic checkpoint is off too: every commit through a
        # session counts instead (a read-only one does not).
        async with runner.sessions() as db:
            await db.execute(sqlalchemy.text("SELECT 1"))
            await db.commit()
        assert lane.writes == start + 35
        for i in range(5):
            async with runner.sessions() as db:
                await db.execute(sqlalchemy.text(
                    "UPDATE jobs SET priority = priority + 1 WHERE params = :p"),
                    {"p": f'{{"i":{i}}}'})
                await db.commit()
            while lane.checkpoints:
                await asyncio.gather(*lane.checkpoints)
        assert lane.writes == start + 40 and len(calls) == checkpoints(40)
        async with runner.engine.connect() as pooled:
            raw = await pooled.get_raw_connection()
            every = raw.dbapi_connection._connection._conn.execute(  # type: ignore[union-attr]
                "PRAGMA wal_autocheckpoint").fetchone()[0]
        assert every == 0


# -- SQLite's row conversion: the fast converters equal SQLAlchemy's processors ------------
_SQLITE_SAMPLES: dict[str, list[Any]] = {
    "datetime": ["2026-11-30 18:20:18.123456", "2026-11-30 18:20:18", "2026-11-30T18:20",
                 "2026-11-30", "2026-11-30T18", "20261130T182018",
                 "2026-11-30 18:20:18.123456+01:00", "2026-11-30 18:20:18Z",
                 "2026-11-30 18:20:18-05:30", "garbage", "", "2026-11-30 18:20:18+"],
    "uuid": [uuid.uuid4().hex, str(uuid.uuid4()), uuid.uuid4().hex.upper(),
             "{" + str(uuid.uuid4()) + "}", "urn:uuid:" + str(uuid.uuid4()), "g" * 32,
             "0" * 31, "+" + "0" * 31, "0_" * 16, " " + "0" * 31],
    "json": ['{"a": 1}', ' {"a": 1} ', "null", "1", "1.5", '"x"', "[1,2] x", "\ufeff{}", "",
             '{"k": "é ✓", "n": [1, null, true]}', "[]", 5, 2.5, "NaN"],
    "status": [s.value for s in JobStatus] + ["bogus", "PENDING", ""],
    "bool": [0, 1],
}


def _outcome(fn: Any, value: Any) -> tuple[str, Any]:
    try:
        out = fn(value)
    except Exception as exc:  # noqa: BLE001 - the error is the outcome compared
        return "raised", type(exc)
    return type(out).__name__, out


def test_sqlite_fast_converters_equal_sqlalchemys_processors() -> None:
    from sqlalchemy.dialects import sqlite

    from jobkit.backends import rows

    dialect = sqlite.dialect()
    kinds = {"id": "uuid", "status": "status", "params": "json", "result": "json",
             "cancel_requested": "bool"}
    checked = set()
    for col in JOB_COLUMNS:
        proc = col.type.dialect_impl(dialect).result_processor(dialect, None)
        fast = rows.fast_converter(col.type, dialect)
        if proc is None:
            assert fast is None, col.name
            continue
        kind = kinds.get(col.name, "datetime")
        if kind == "bool":
            assert fast is None  # SQLAlchemy's own (C) processor is kept
            continue
        assert fast is not None, col.name
        checked.add(kind)
        assert proc(None) is None  # the rows skip Nones: the fast converter never sees one
        for value in _SQLITE_SAMPLES[kind]:
            got, want = _outcome(fast, value), _outcome(proc, value)
            assert got == want, f"{col.name} {value!r}: fast {got} != SQLAlchemy {want}"
            if kind == "datetime" and got[0] == "datetime":
                assert got[1].tzinfo is UTC, value
    assert checked == {"uuid", "status", "json", "datetime"}


def _sqlalchemys_rows(compiled: Any, records: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The rows as SQLAlchemy's own result processors make them (the reference)."""
    return [{name: v if proc is None else proc(v)
             for (name, proc), v in zip(compiled.columns, rec, strict=True)} for rec in records]


def test_sqlite_fast_lane_rows_equal_sqlalchemys() -> None:
    """``Compiled.rows`` (one step per column, Nones skipped) equals SQLAlchemy's own
    processors, value for value and type for type."""
    from sqlalchemy.dialects import sqlite

    from jobkit.backends import sqlite as backend

    dialect = sqlite.dialect()
    stmt = next(iter(backend.CLAIM_ALONE.values()))
    compiled = stmt.compiled(dialect, backend._coltype)
    assert stmt.compiled(dialect, backend._coltype) is compiled
    assert {name for name, _, skip in compiled.converters if skip} >= {"id", "status",
                                                                      "params", "created_at"}
    now = "2026-11-30 18:20:18.123456"
    record = (uuid.uuid4().hex, "t", "default", "processing", '{"i": 1}', "null", None, 1, 4,
              -3, 2.5, "k", 1, now, now, now, now, None, "w", "2026-11-30 18:21:18", 0.5,
              "half", now)
    assert len(record) == len(JOB_COLUMNS)
    records = [record, tuple(None if i >= 5 and v is not None and i not in (7, 8, 9, 12)
                             else v for i, v in enumerate(record))]
    got, want = compiled.rows(records), _sqlalchemys_rows(compiled, records)
    assert got == want
    assert [[type(v) for v in r.values()] for r in got] == \
        [[type(v) for v in r.values()] for r in want]
    with pytest.raises(ValueError):
        compiled.rows([record[:-1]])
    done = backend.COMPLETE_MANY_ALONE.compiled(dialect, backend._coltype)
    assert done.rows([(record[0], now)]) == _sqlalchemys_rows(done, [(record[0], now)])


def test_postgresql_fast_lane_rows_equal_sqlalchemys() -> None:
    """The same on asyncpg's values: timestamps come as aware datetimes, given back in UTC."""
    from datetime import timezone

    from sqlalchemy.dialects.postgresql import asyncpg as pg

    from jobkit.backends import postgres as backend

    dialect = pg.dialect()
    stmt = next(iter(backend.CLAIM_ALONE.values()))
    compiled = stmt.compiled(dialect, backend._coltype)
    paris = datetime(2026, 11, 30, 19, 20, 18, 123456, tzinfo=timezone(timedelta(hours=1)))
    record = (uuid.uuid4(), "t", "default", "processing", {"i": 1}, None, None, 1, 4, -3,
              2.5, "k", True, paris, paris, paris, paris, None, "w", paris, 0.5, "half", None)
    assert len(record) == len(JOB_COLUMNS)
    got, want = compiled.rows([record]), _sqlalchemys_rows(compiled, [record])
    assert got == want
    assert [[type(v) for v in r.values()] for r in got] == \
        [[type(v) for v in r.values()] for r in want]
    assert got[0]["created_at"].tzinfo is UTC and got[0]["status"] is JobStatus.PROCESSING


def test_claim_row_key_is_the_claim_sort_key() -> None:
    from jobkit.models import claim_row_key, claim_sort_key

    base = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [{"priority": p, "created_at": base + timedelta(seconds=s), "id": uuid.UUID(int=i)}
            for i, (p, s) in enumerate([(0, 2), (5, 1), (0, 1), (9, 9), (5, 1), (-1, 0)])]
    assert sorted(rows, key=claim_row_key) == \
        sorted(rows, key=lambda r: claim_sort_key(queue.job_from_row(r)))
    assert [claim_row_key(r) for r in rows] == \
        [claim_sort_key(queue.job_from_row(r)) for r in rows]


async def test_sqlite_a_fast_write_waits_its_turn_then_runs_inline(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """While another connection of the process writes (it holds the write gate), a
    fast-lane write waits for its turn and then runs inline all the same, not in
    aiosqlite's thread; cancelled while it waits, it leaves the gate free."""
    import asyncio

    from sqlalchemy import update

    from jobkit.backends import sqlite

    async with await jobkit.open(sqlite_url) as runner:
        await runner.enqueue_many([("noop", {"i": i}) for i in range(2)], allow_unknown=True)
        threaded: list[str] = []
        real = sqlite._execute_on

        async def spy(*args: Any, **kwargs: Any) -> Any:
            threaded.append(args[2].sql[:20])
            return await real(*args, **kwargs)

        monkeypatch.setattr(sqlite, "_execute_on", spy)
        turns = 0
        two_waiting = asyncio.Event()
        real_turn = sqlite._WriteGate.wait_turn

        async def turn(self: Any, conn: Any) -> None:
            nonlocal turns
            turns += 1
            if turns == 2:
                two_waiting.set()
            await real_turn(self, conn)

        monkeypatch.setattr(sqlite._WriteGate, "wait_turn", turn)
        gate = sqlite.write_gate(runner.engine)
        assert gate is not None
        async with runner.sessions() as db:  # a writer holding its turn
            await db.execute(update(jobs_table).where(jobs_table.c.id == uuid.uuid4())
                             .values(priority=1))
            assert gate.holders == 1
            waiting = asyncio.ensure_future(
                queue.claim_alone(runner.engine, 1, worker_id="w", lease_seconds=60))
            cancelled = asyncio.ensure_future(
                queue.claim_alone(runner.engine, 1, worker_id="w2", lease_seconds=60))
            await asyncio.wait_for(two_waiting.wait(), 10)  # both wait for their turn
            assert not waiting.done() and not cancelled.done()
            cancelled.cancel()
            await db.commit()
        [job] = await asyncio.wait_for(waiting, 10)
        assert cancelled.cancelled()
        assert threaded == [], "the claim ran inline once it had its turn"
        assert gate.holders == 0 and not gate.busy()
        stored = await _orm_job(runner, job.id)
        assert stored.status == JobStatus.PROCESSING and stored.locked_by == "w"
        async with runner.sessions() as db:
            claimed = (await db.execute(select(jobs_table.c.locked_by)
                                        .where(jobs_table.c.status == "processing"))).all()
        assert claimed == [("w",)], "the cancelled claim claimed nothing"
