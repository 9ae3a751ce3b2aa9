"""The fast paths keep the guarantees: a handler's session exists only if it is used, one
``enqueue`` is one statement, SQLite statements make one trip to aiosqlite's thread, and
SQLite writers of one process take turns on a gate that every way out releases."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from helpers import count_jobs
from sqlalchemy import event, text, update
from sqlalchemy.ext.asyncio import AsyncSession

import jobkit
from jobkit.backends.sqlite import write_gate
from jobkit.database import session_used
from jobkit.models import jobs_table


def count_checkouts(runner: jobkit.Runner) -> list[int]:
    seen: list[int] = []

    @event.listens_for(runner.engine.sync_engine.pool, "checkout")
    def _count(*_: Any) -> None:
        seen.append(1)

    return seen


async def test_a_handler_that_never_uses_db_costs_no_session(runner: jobkit.Runner) -> None:
    seen: list[tuple[bool, bool, Any]] = []

    @runner.handler("idle")
    async def idle(job: jobkit.Job, db: Any) -> dict[str, Any]:
        seen.append((isinstance(db, AsyncSession), session_used(db),
                     db.info.get("jobkit.job")))
        return {"i": job.params["i"]}

    @runner.handler("reads")
    async def reads(job: jobkit.Job, db: Any) -> dict[str, Any]:
        settings = db.info.get("jobkit.settings")  # set before the session existed
        value = (await db.execute(text("SELECT 41 + 1"))).scalar_one()
        assert session_used(db) and db.info.get("jobkit.settings") is settings
        return {"value": value, "has_settings": settings is not None}

    await runner.enqueue_many([("idle", {"i": i}) for i in range(60)])
    reader = await runner.enqueue("reads", {})
    checkouts = count_checkouts(runner)
    stats = await runner.drain(concurrency=10, progress=False)
    assert stats.completed == 61
    assert len(seen) == 60
    assert all(is_session and not used and job is not None for is_session, used, job in seen), seen[:3]
    # Claims and batched completions only: far fewer checkouts than jobs.
    assert len(checkouts) < 40, len(checkouts)
    assert (await runner.get_job(reader.id)).result == {"value": 42, "has_settings": True}
    assert await count_jobs(runner, status="completed") == 61


async def test_one_enqueue_is_one_statement_and_wakes_local_workers(
        runner: jobkit.Runner) -> None:
    done = asyncio.Event()

    @runner.handler("ping")
    async def ping(job: jobkit.Job, db: Any) -> dict[str, Any]:
        done.set()
        return {"got": job.params["n"]}

    statements: list[str] = []

    @event.listens_for(runner.engine.sync_engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split()[0].upper())

    # A long poll: only the enqueue's own wake-up can start the job quickly.
    worker = runner.worker(concurrency=2, wakeup=False)
    runner.settings = runner.settings.replace(worker_poll_interval=30)
    worker.settings = runner.settings
    task = asyncio.create_task(worker.run())
    while worker.state != "running":  # noqa: ASYNC110 - the Worker offers no event
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # its first (empty) claim is done; it now sleeps
    statements.clear()
    job = await runner.enqueue("ping", {"n": 7}, priority=3)
    assert statements[:1] == ["INSERT"], statements
    stored = await runner.get_job(job.id)
    assert (stored.job_type, stored.params, stored.priority) == ("ping", {"n": 7}, 3)
    await asyncio.wait_for(done.wait(), 10)
    worker.stop()
    await asyncio.wait_for(task, 30)
    assert (await runner.get_job(job.id)).result == {"got": 7}


async def test_sqlite_statements_make_one_trip_to_the_driver_thread(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import aiosqlite

    async with await jobkit.open(sqlite_url) as runner:
        async with runner.sessions() as db:
            await db.execute(text("SELECT 1"))  # connect outside the count
            trips: list[str] = []
            real = aiosqlite.Connection._execute

            async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
                trips.append(getattr(fn, "__name__", "?"))
                return await real(self, fn, *args, **kwargs)

            monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
            rows = (await db.execute(text("SELECT 1 UNION ALL SELECT 2"))).scalars().all()
            assert rows == [1, 2]
            assert len(trips) == 1, trips
            res = await db.execute(text("UPDATE jobs SET priority = priority WHERE 0"))
            assert res.rowcount == 0  # type: ignore[attr-defined]
            await db.commit()


async def test_sqlite_writers_take_turns_and_every_way_out_frees_the_gate(
        sqlite_url: str) -> None:
    """Many writers of one process, half of them cancelled at random moments (waiting for
    their turn, or inside their transaction): the others all commit, no connection stays
    out, and the gate is free again."""
    async with await jobkit.open(sqlite_url) as runner:
        gate = write_gate(runner.engine)
        assert gate is not None
        async with runner.sessions() as db:
            await db.execute(text("CREATE TABLE marks (w INTEGER, k INTEGER)"))
            await db.commit()
        holders: list[int] = []

        async def writer(w: int) -> None:
            async with runner.sessions() as db:
                await db.execute(text("INSERT INTO marks VALUES (:w, 1)"), {"w": w})
                holders.append(gate.holders)  # this connection's turn, and only its
                await asyncio.sleep(0)
                await db.execute(text("INSERT INTO marks VALUES (:w, 2)"), {"w": w})
                holders.append(gate.holders)
                await db.commit()

        rng = random.Random(5)
        for rnd in range(5):
            tasks = [asyncio.create_task(writer(100 * rnd + w)) for w in range(40)]
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)
            victims = rng.sample(tasks, 20)
            for t in victims:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)
                      and not isinstance(r, asyncio.CancelledError)]
            assert not errors, errors
            assert all(not isinstance(r, BaseException) for t, r in zip(tasks, results, strict=True)
                       if t not in victims)
        # Let the shielded session closes of the cancelled writers finish.
        me = asyncio.current_task()
        others = {t for t in asyncio.all_tasks() if t is not me and not t.done()}
        if others:
            _, still = await asyncio.wait(others, timeout=10)
            assert not still, still
        assert holders and set(holders) == {1}, "one write transaction at a time"
        assert gate.holders == 0
        assert runner.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        async with runner.sessions() as db:  # and the next writer goes straight through
            await db.execute(text("INSERT INTO marks VALUES (-1, 1)"))
            await db.commit()
            counts = (await db.execute(text(
                "SELECT w, count(*) FROM marks WHERE w >= 0 GROUP BY w "
                "HAVING count(*) <> 2"))).all()
        assert counts == [], "each writer's two rows committed together or not at all"


async def test_a_committed_handler_session_closes_without_a_loop_turn(
        runner: jobkit.Runner) -> None:
    """A handler's session whose work was committed closes at exit in place: no task, no
    turn of the event loop (AsyncSession's exit spends one on a shielded task), and its
    connection is back in the pool."""
    from jobkit.database import LazySession

    db = LazySession(runner.sessions)
    await db.execute(text("SELECT 1"))
    await db.commit()
    turned: list[int] = []
    asyncio.get_running_loop().call_soon(turned.append, 1)
    await db.__aexit__(None, None, None)
    assert turned == []  # the callback scheduled before the exit has not run yet
    assert not db.sync_session.in_transaction()
    assert runner.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_an_open_handler_session_is_rolled_back_at_exit(runner: jobkit.Runner) -> None:
    """A session left with its transaction open takes the usual way out: rolled back, its
    connection returned."""
    from jobkit.database import LazySession

    job = await runner.enqueue("noop", {}, allow_unknown=True)
    async with LazySession(runner.sessions) as db:
        res = await db.execute(update(jobs_table).where(jobs_table.c.id == job.id)
                               .values(priority=7))
        assert res.rowcount == 1 and db.in_transaction()  # type: ignore[attr-defined]
    assert runner.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert (await runner.get_job(job.id)).priority == 0
