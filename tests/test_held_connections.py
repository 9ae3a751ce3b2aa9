"""PostgreSQL's fast lane on held connections (``backends.postgres.fetch_alone``): the
single enqueue, the worker's claim and its completions.

A held connection is used without a ping, so these tests kill it (``pg_terminate_backend``)
between enqueues, during one, during a stream of concurrent ones, and lose an INSERT's
reply after it committed: every enqueue that returned must have its row, exactly once,
and a cancelled one must leave nothing half-done. A completion whose connection dies
before or after it ran is neither lost nor done twice; a claim cut off before it reached
the server costs no attempt. Closing the runner closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import sqlalchemy.exc
from conftest import _plain_dsn
from sqlalchemy import func, select, text
from test_worker import wait_until

import jobkit
from jobkit.backends.common import ClaimShape, Prepared
from jobkit.database import LazySession
from jobkit.models import jobs_table


@pytest.fixture
async def admin(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to the test's database, outside any engine."""
    conn = await asyncpg.connect(_plain_dsn(pg_url))
    try:
        yield conn
    finally:
        await conn.close()


def _held(runner: jobkit.Runner) -> Any:
    """This loop's (first) held connection of the runner's engine (None: none yet)."""
    slots = runner.engine.sync_engine.__dict__.get("_jk_held", {})
    raws = [h.raw for h in slots.get(asyncio.get_running_loop(), ()) if h.raw is not None]
    return raws[0] if raws else None


@contextlib.asynccontextmanager
async def _jobs_locked(pg_url: str) -> AsyncIterator[None]:
    """Hold a lock that makes every INSERT into ``jobs`` wait, on a connection of its own
    (pg_stat_activity is read on another one: within a transaction it is a snapshot)."""
    conn = await asyncpg.connect(_plain_dsn(pg_url))
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _enqueue_waiting(runner: jobkit.Runner, admin: asyncpg.Connection, pg_url: str,
                           params: dict[str, Any]) -> AsyncIterator[tuple[Any, Any, int]]:
    """An enqueue of ``params`` in flight on the held connection, waiting on a lock held
    until the block ends: (its task, the connection, its server pid)."""
    await runner.enqueue("noop", {}, allow_unknown=True)
    raw = _held(runner)
    pid = raw.get_server_pid()
    async with _jobs_locked(pg_url):
        task = asyncio.ensure_future(runner.enqueue("noop", params, allow_unknown=True))
        await wait_until(lambda: _waits_for_lock(admin, pid), what="the INSERT to wait")
        yield task, raw, pid


async def _rows(admin: asyncpg.Connection, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """How many rows each id has (0 for a missing one)."""
    found = await admin.fetch("SELECT id, count(*) AS n FROM jobs WHERE id = ANY($1::uuid[]) "
                              "GROUP BY id", ids)
    counts = {i: 0 for i in ids}
    counts.update({r["id"]: r["n"] for r in found})
    return counts


async def _total(runner: jobkit.Runner) -> int:
    async with runner.sessions() as db:
        return int((await db.execute(select(func.count()).select_from(jobs_table))).scalar_one())


async def _kill(admin: asyncpg.Connection, pid: int) -> None:
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)


async def test_enqueue_uses_one_held_connection(pg_url: str) -> None:
    """Sequential enqueues share one connection, which the pool does not count."""
    async with await jobkit.open(pg_url) as runner:
        await runner.enqueue("noop", {}, allow_unknown=True)
        raw = _held(runner)
        assert raw is not None and not raw.is_closed()
        for i in range(5):
            await runner.enqueue("noop", {"i": i}, allow_unknown=True)
        assert _held(runner) is raw
        assert runner.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert await _total(runner) == 6


@pytest.mark.parametrize("noticed", [True, False], ids=["noticed", "unnoticed"])
async def test_a_killed_held_connection_is_replaced(pg_url: str, admin: asyncpg.Connection,
                                                    noticed: bool) -> None:
    """Killed between enqueues: the next enqueue succeeds on a new connection, whether
    asyncpg already saw the close (no attempt on it) or not (the INSERT fails, and is
    inserted again elsewhere)."""
    async with await jobkit.open(pg_url) as runner:
        first = await runner.enqueue("noop", {}, allow_unknown=True)
        raw = _held(runner)
        if noticed:
            await _kill(admin, raw.get_server_pid())
            await wait_until(raw.is_closed, what="asyncpg to see the close")
        else:  # the server's close is not read yet when the INSERT is sent
            pid = raw.get_server_pid()
            raw._transport.pause_reading()  # hold back the server's close
            await _kill(admin, pid)
            await wait_until(lambda: _gone(admin, pid), what="the backend to exit")
            raw._transport.resume_reading()
        second = await runner.enqueue("noop", {}, allow_unknown=True)
        assert _held(runner) is not raw and raw.is_closed()
        assert await _rows(admin, [first.id, second.id]) == {first.id: 1, second.id: 1}
        third = await runner.enqueue("noop", {}, allow_unknown=True)  # healthy again
        assert await _rows(admin, [third.id]) == {third.id: 1}
        assert await _total(runner) == 3


async def _gone(admin: asyncpg.Connection, pid: int) -> bool:
    return not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)


async def test_killed_during_the_insert_is_inserted_once(pg_url: str,
                                                          admin: asyncpg.Connection) -> None:
    """The held connection dies while its INSERT waits (on a lock): the INSERT did not
    commit, the enqueue does not fail, the job is there once."""
    async with await jobkit.open(pg_url) as runner:
        async with _enqueue_waiting(runner, admin, pg_url, {"killed": True}) as (task, _, pid):
            await _kill(admin, pid)
            await wait_until(lambda: _gone(admin, pid), what="the backend to exit")
        job = await asyncio.wait_for(task, 30)
        assert await _rows(admin, [job.id]) == {job.id: 1}
        assert await _total(runner) == 2


async def _waits_for_lock(admin: asyncpg.Connection, pid: int) -> bool:
    return bool(await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
        pid))


async def test_a_lost_reply_after_commit_is_not_a_duplicate(
        pg_url: str, admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """The INSERT committed but its reply was lost with the connection: the retry finds the
    row already there (its id was made by the client) and neither duplicates nor fails."""
    async with await jobkit.open(pg_url) as runner:
        await runner.enqueue("noop", {}, allow_unknown=True)
        raw = _held(runner)
        real = asyncpg.Connection.fetch
        lost = []

        async def fetch_then_lose(self: asyncpg.Connection, *args: Any, **kw: Any) -> Any:
            result = await real(self, *args, **kw)
            if self is raw and not lost:
                lost.append(args[0])
                self.terminate()
                raise asyncpg.exceptions.ConnectionDoesNotExistError(
                    "connection was closed in the middle of operation")
            return result

        monkeypatch.setattr(asyncpg.Connection, "fetch", fetch_then_lose)
        job = await runner.enqueue("noop", {"lost": "reply"}, allow_unknown=True)
        assert lost, "the held connection was not used"
        assert await _rows(admin, [job.id]) == {job.id: 1}
        assert await admin.fetchval("SELECT params->>'lost' FROM jobs WHERE id = $1",
                                    job.id) == "reply"
        assert await _total(runner) == 2


async def test_a_statement_error_is_raised_not_retried(pg_url: str,
                                                       admin: asyncpg.Connection) -> None:
    """An error of the statement itself (here: the id exists) is SQLAlchemy's error, as on
    every other path; the held connection is replaced."""
    from jobkit import queue

    async with await jobkit.open(pg_url) as runner:
        row = queue.build_job_row("noop", {})
        await queue.insert_job(runner.engine, row)
        raw = _held(runner)
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            await queue.insert_job(runner.engine, row)
        assert raw.is_closed()
        job = await runner.enqueue("noop", {}, allow_unknown=True)
        assert await _rows(admin, [row["id"], job.id]) == {row["id"]: 1, job.id: 1}


async def test_concurrent_enqueues_survive_repeated_kills(pg_url: str,
                                                          admin: asyncpg.Connection) -> None:
    """Several tasks enqueue without pause (one on the held connection, the others on
    pooled ones) while every connection of the engine is killed, five times: every enqueue
    returns, and each returned job has exactly one row."""
    tasks, kills = 6, 5
    async with await jobkit.open(pg_url) as runner:
        done: list[list[uuid.UUID]] = [[] for _ in range(tasks)]
        stop = asyncio.Event()

        async def produce(k: int) -> None:
            while not stop.is_set():
                job = await runner.enqueue("noop", {"task": k}, allow_unknown=True)
                done[k].append(job.id)

        producers = [asyncio.ensure_future(produce(k)) for k in range(tasks)]

        def failed() -> bool:  # a producer that stopped raised: the assertion below shows it
            return any(p.done() for p in producers)

        killed_total = 0
        try:
            for _ in range(kills):
                # Each task finished an enqueue since the last kill (so no retry of the
                # last kill is still in flight: a kill never hits a retry).
                marks = [len(d) for d in done]
                await wait_until(lambda m=marks: failed() or all(
                    len(d) > n + 1 for d, n in zip(done, m, strict=True)),
                                 what="every task to enqueue again", every=0.01)
                if failed():
                    break
                killed_total += await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND state IN ('idle', 'active')")
            marks = [len(d) for d in done]
            await wait_until(lambda: failed() or all(len(d) > n + 2 for d, n in zip(done, marks,
                                                                        strict=True)),
                             what="enqueues after the last kill", every=0.01)
        finally:
            stop.set()
            results = await asyncio.gather(*producers, return_exceptions=True)
        assert [r for r in results if r is not None] == []
        assert killed_total >= kills
        ids = [i for d in done for i in d]
        counts = await _rows(admin, ids)
        assert [i for i, n in counts.items() if n != 1] == []
        assert await _total(runner) == len(ids) == len(set(ids))


async def test_a_cancelled_enqueue_leaves_nothing_half_done(pg_url: str,
                                                            admin: asyncpg.Connection) -> None:
    """Cancelled while its INSERT is in flight (waiting on a lock): CancelledError goes
    through, the statement is cancelled on the server (the job does not appear later),
    the held connection is closed, and the next enqueue works."""
    async with await jobkit.open(pg_url) as runner:
        async with _enqueue_waiting(runner, admin, pg_url,
                                    {"cancelled": True}) as (task, raw, pid):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
            assert raw.is_closed() and _held(runner) is None
            # Its backend left while the lock was still held: the INSERT never committed.
            await wait_until(lambda: _gone(admin, pid), what="the cancelled backend to exit")
        job = await runner.enqueue("noop", {}, allow_unknown=True)
        assert await _rows(admin, [job.id]) == {job.id: 1}
        assert await admin.fetchval(
            "SELECT count(*) FROM jobs WHERE params ? 'cancelled'") == 0
        assert await _total(runner) == 2
        assert runner.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["runner", "engine"])
async def test_closing_the_runner_closes_the_held_connection(
        pg_url: str, admin: asyncpg.Connection, how: str) -> None:
    """``Runner.close`` (the backend's ``release``) and a bare ``engine.dispose()`` close
    the held connection too: nothing of the engine stays connected to the database."""
    runner = await jobkit.open(pg_url)
    try:
        await runner.enqueue("noop", {}, allow_unknown=True)
        await asyncio.gather(*(runner.enqueue("noop", {}, allow_unknown=True)
                               for _ in range(4)))  # pooled ones too
        raw = _held(runner)
        pid = raw.get_server_pid()
        if how == "engine":
            await runner.engine.dispose()
        else:
            await runner.close()
        assert raw.is_closed()
        left = await admin.fetch(
            "SELECT pid, application_name, state FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert [dict(r) for r in left] == []
        assert await _gone(admin, pid)
    finally:
        await runner.close()


async def test_disposing_mid_enqueue_closes_what_it_held(pg_url: str,
                                                         admin: asyncpg.Connection) -> None:
    """An engine disposed while an enqueue is on its held connection: that enqueue
    completes, and the connection closes when it returns (not left open)."""
    runner = await jobkit.open(pg_url)
    await runner.enqueue("noop", {}, allow_unknown=True)
    raw = _held(runner)
    async with _jobs_locked(pg_url):
        task = asyncio.ensure_future(runner.enqueue("noop", {}, allow_unknown=True))
        await wait_until(lambda: _waits_for_lock(admin, raw.get_server_pid()),
                         what="the INSERT to wait")
        await runner.engine.dispose()
        assert not raw.is_closed()  # busy: its call closes it
    job = await asyncio.wait_for(task, 30)
    assert raw.is_closed()
    assert await _rows(admin, [job.id]) == {job.id: 1}
    await runner.close()


def test_the_sync_facade_closes_its_held_connection(pg_url: str) -> None:
    """The sync façade's runner lives on its own loop: it holds a connection there, and
    closing it leaves nothing connected."""

    async def others() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(_plain_dsn(pg_url))
        try:
            return [dict(r) for r in await conn.fetch(
                "SELECT pid, state FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")]
        finally:
            await conn.close()

    with jobkit.connect_sync(pg_url) as sync:
        ids = [sync.enqueue("noop", {"i": i}).id for i in range(5)]
        slots = sync.runner.engine.sync_engine.__dict__["_jk_held"]
        assert [any(h.raw is not None for h in helds) for helds in slots.values()] == [True]
        assert asyncio.run(others())  # connected while open
    assert asyncio.run(others()) == []
    assert len(set(ids)) == 5


# ---------------------------------------------------------------------------
# The worker's claim and completions
# ---------------------------------------------------------------------------
def _held_raws(engine: Any) -> set[int]:
    """ids of the asyncpg connections the engine holds on this loop right now."""
    slots = engine.sync_engine.__dict__.get("_jk_held", {})
    return {id(h.raw) for h in slots.get(asyncio.get_running_loop(), ()) if h.raw is not None}


def _kind(sql: str) -> str:
    """Which of the worker's statements ``sql`` is (by what it sets)."""
    sets = sql.split("WHERE")[0]
    if "UNION ALL" in sql:
        return "complete again"
    if "status = 'processing'" in sets:
        return "claim"
    if "result" in sets:
        return "complete"
    return "other"


def _spy_fetch(monkeypatch: pytest.MonkeyPatch, engine: Any,
               lose: Any = None) -> list[tuple[str, bool]]:
    """Record (kind, on a held connection) of every ``asyncpg.Connection.fetch``; ``lose(kind,
    held)`` returning "before"/"after": the connection dies before the statement reaches the
    server, or after it ran (its reply lost), on that call."""
    real = asyncpg.Connection.fetch
    calls: list[tuple[str, bool]] = []

    async def fetch(self: asyncpg.Connection, sql: str, *args: Any, **kw: Any) -> Any:
        kind, held = _kind(sql), id(self) in _held_raws(engine)
        calls.append((kind, held))
        when = lose(kind, held) if lose is not None else None
        if when == "before":
            self.terminate()
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
        result = await real(self, sql, *args, **kw)
        if when == "after":
            self.terminate()
            raise asyncpg.exceptions.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation")
        return result

    monkeypatch.setattr(asyncpg.Connection, "fetch", fetch)
    return calls


def _once(kind: str, when: str) -> Any:
    """A ``lose`` that loses the first statement of ``kind`` on a held connection."""
    done: list[bool] = []

    def lose(k: str, held: bool) -> str | None:
        if k == kind and held and not done:
            done.append(True)
            return when
        return None
    return lose


async def _attempts(admin: asyncpg.Connection) -> dict[str, int]:
    """How many jobs have each ``status/attempts``."""
    rows = await admin.fetch("SELECT status || '/' || attempts AS k, count(*) AS n FROM jobs "
                             "GROUP BY 1")
    return {r["k"]: r["n"] for r in rows}


async def test_the_worker_claims_and_completes_on_held_connections(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One job at a time: every claim and every completion runs on a held connection
    (no pooled checkout, no ping), and the engine holds no more than HELD_PER_LOOP."""
    from jobkit.backends import postgres

    async with await jobkit.open(pg_url, handlers={"noop": _noop}) as runner:
        await runner.enqueue_many([("noop", {"i": i}) for i in range(20)])
        calls = _spy_fetch(monkeypatch, runner.engine)
        stats = await runner.worker(concurrency=1, burst=True).run()
        assert stats.completed == 20 and stats.lost == 0
        kinds = [k for k, _ in calls]
        # (A completion may take several jobs: the next claim overlaps the last completion.)
        assert kinds.count("claim") >= 20 and 1 <= kinds.count("complete") <= 20
        assert all(held for k, held in calls if k in ("claim", "complete")), calls
        assert 1 <= len(_held_raws(runner.engine)) <= postgres.HELD_PER_LOOP
        assert runner.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def _noop(job: jobkit.Job, db: Any) -> dict[str, Any]:
    return {"i": job.params["i"]}


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_completion_whose_connection_died_is_not_lost(
        pg_url: str, admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch,
        when: str) -> None:
    """The completion's held connection dies before the statement reached the server, or
    after it committed (its reply lost): it runs again on a pooled connection, and the job
    is reported completed, not lost, with its result, at attempt 1."""
    async with await jobkit.open(pg_url, handlers={"noop": _noop}) as runner:
        await runner.enqueue_many([("noop", {"i": i}) for i in range(3)])
        calls = _spy_fetch(monkeypatch, runner.engine, _once("complete", when))
        stats = await runner.worker(concurrency=1, burst=True).run()
        assert ("complete again", False) in calls, calls
        assert stats.completed == 3 and stats.lost == 0, stats.as_dict()
        assert await _attempts(admin) == {"completed/1": 3}
        assert sorted(await admin.fetch("SELECT (result->>'i')::int AS i FROM jobs")) == [
            (0,), (1,), (2,)]


async def test_a_claim_cut_off_before_the_server_costs_nothing(
        pg_url: str, admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim whose held connection died before the statement left: SQLAlchemy's error
    flagged ``connection_invalidated``, the worker retries after its back-off, and every
    job still runs once, at attempt 1."""
    from jobkit import queue

    async with await jobkit.open(pg_url, handlers={"noop": _noop}) as runner:
        await runner.enqueue_many([("noop", {"i": i}) for i in range(5)])
        _spy_fetch(monkeypatch, runner.engine, _once("claim", "before"))
        with pytest.raises(sqlalchemy.exc.DBAPIError) as err:
            await queue.claim_alone(runner.engine, 1, worker_id="w", lease_seconds=30)
        assert err.value.connection_invalidated
        stats = await runner.worker(concurrency=2, burst=True).run()
        assert stats.completed == 5 and stats.lost == 0
        assert await _attempts(admin) == {"completed/1": 5}


async def test_a_read_whose_connection_died_is_read_again(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read in the fast lane (cut_analysis's asset) cut off in flight is read again."""
    from jobkit.backends import postgres
    from jobkit.backends.common import Prepared

    read = Prepared(select(jobs_table.c.id).where(jobs_table.c.job_type == "noop"),
                    (jobs_table.c.id,))
    async with await jobkit.open(pg_url) as runner:
        job = await runner.enqueue("noop", {}, allow_unknown=True)
        calls = _spy_fetch(monkeypatch, runner.engine, lambda k, held: "after" if held else None)
        rows = await postgres.fetch_alone(runner.engine, read, {})
        assert rows == [{"id": job.id}]
        assert [held for _, held in calls] == [True, False]


async def test_a_third_statement_at_once_takes_a_pooled_connection(
        pg_url: str, admin: asyncpg.Connection) -> None:
    """HELD_PER_LOOP statements in flight hold that many connections; one more at the same
    time does not wait for them: it takes a pooled connection."""
    from jobkit.backends import postgres

    async with await jobkit.open(pg_url) as runner:
        await runner.enqueue("noop", {}, allow_unknown=True)
        n = postgres.HELD_PER_LOOP + 1
        async with _jobs_locked(pg_url):
            tasks = [asyncio.ensure_future(runner.enqueue("noop", {"k": k}, allow_unknown=True))
                     for k in range(n)]
            await wait_until(lambda: _lock_waiters(admin, n), what=f"{n} INSERTs to wait")
            slots = runner.engine.sync_engine.__dict__["_jk_held"][asyncio.get_running_loop()]
            assert [h.busy for h in slots] == [True] * postgres.HELD_PER_LOOP
            assert runner.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        jobs = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert await _rows(admin, [j.id for j in jobs]) == {j.id: 1 for j in jobs}


async def _lock_waiters(admin: asyncpg.Connection, n: int) -> bool:
    return bool(await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()") >= n)


async def test_a_claim_whose_reply_was_lost_gives_its_jobs_back(
        pg_url: str, admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim that committed but whose reply was lost with its connection claimed jobs
    this worker never heard of: its next claim gives them back (attempt unburnt), so they
    run now, not after their 300 s lease."""
    async with await jobkit.open(pg_url, handlers={"noop": _noop}, lease_seconds=300) as runner:
        await runner.enqueue_many([("noop", {"i": i}) for i in range(5)])
        calls = _spy_fetch(monkeypatch, runner.engine, _once("claim", "after"))
        stats = await asyncio.wait_for(runner.worker(concurrency=2, burst=True).run(), 60)
        assert calls[0] == ("claim", True)
        assert stats.completed == 5 and stats.lost == 0, stats.as_dict()
        assert await _attempts(admin) == {"completed/1": 5}


# ------------------------------------------------------------------------------------
# The claim's plan
# ------------------------------------------------------------------------------------
def test_the_fast_lane_claim_writes_its_limit_into_the_sql() -> None:
    """One prepared statement per LIMIT up to LITERAL_LIMIT_MAX (the same object each
    time: its compiled SQL is cached by identity); a larger claim takes the parameter."""
    from sqlalchemy.dialects import postgresql as pg

    from jobkit.backends import postgres
    from jobkit.backends.common import ClaimShape

    shape = ClaimShape(False, 1, False)
    seven = postgres.claim_alone_statement(shape, 7)
    assert postgres.claim_alone_statement(shape, 7) is seven
    sql = str(seven.statement.compile(dialect=pg.asyncpg.dialect()))
    assert "LIMIT 7" in sql and "queue = $" in sql
    big = postgres.claim_alone_statement(shape, postgres.LITERAL_LIMIT_MAX + 1)
    assert big is postgres.CLAIM_ALONE[shape]
    assert "LIMIT $" in str(big.statement.compile(dialect=pg.asyncpg.dialect()))


async def test_the_server_keeps_a_generic_plan_for_the_claim(
        pg_url: str, admin: asyncpg.Connection) -> None:
    """With its LIMIT in the SQL, the claim is planned five times and then runs on the
    server's generic plan (pg_prepared_statements counts both). With ``LIMIT $n`` and a
    few thousand waiting jobs the server planned it anew on every run (the generic plan
    could not know the LIMIT, so it looked costlier). Every job still runs once."""
    async with await jobkit.open(pg_url, handlers={"noop": _noop}) as runner:
        await runner.enqueue_many([("noop", {"i": i}) for i in range(3000)])  # (and ANALYZE)
        stats = await runner.worker(concurrency=10, burst=True).run()
        assert stats.completed == 3000 and stats.claimed == 3000
        slots = runner.engine.sync_engine.__dict__["_jk_held"][asyncio.get_running_loop()]
        plans = [(r["generic_plans"], r["custom_plans"])
                 for h in slots if h.raw is not None
                 for r in await h.raw.fetch(
                     "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                     "WHERE statement LIKE '%FOR UPDATE SKIP LOCKED%'")]
        generic, custom = sum(g for g, _ in plans), sum(c for _, c in plans)
        assert generic >= 100 and custom <= 5 * len(plans) + 5, plans
    assert await _attempts(admin) == {"completed/1": 3000}


# ------------------------------------------------------------------------------------
# Pooled connections: a handler session's first statement skips the checkout ping
# ------------------------------------------------------------------------------------
def _count_pings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the checkout pings (the light ping's ``await_only``)."""
    from jobkit.backends import postgres

    pings: list[int] = []
    real = postgres.await_only

    def counting(awaitable: Any) -> Any:
        pings.append(1)
        return real(awaitable)

    monkeypatch.setattr(postgres, "await_only", counting)
    return pings


async def _handler_session(runner: jobkit.Runner, sql: str = "SELECT 1") -> tuple[Any, int]:
    """Run ``sql`` as a handler's first statement, then commit, as a worker's handler
    session does; its connection (asyncpg's) and the server pid it ran on."""
    async with LazySession(runner.sessions) as db:
        await db.execute(text(sql))
        pid = int((await db.execute(select(func.pg_backend_pid()))).scalar_one())
        conn = await db.connection()
        raw = (await conn.get_raw_connection()).driver_connection
        await db.commit()
    return raw, pid


async def test_a_handler_session_skips_the_ping_for_a_connection_returned_just_now(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first statement of a handler's session takes a connection returned less than
    TRUSTED_FOR_S ago without the ping (the same one comes back); one idle longer is
    pinged, and so is every other session's."""
    from jobkit.backends import postgres

    async with await jobkit.open(pg_url) as runner:
        pings = _count_pings(monkeypatch)
        _, pid = await _handler_session(runner)
        after_first = len(pings)
        _, again = await _handler_session(runner)
        assert again == pid and len(pings) == after_first
        async with runner.sessions() as db:  # not a handler's session: pinged
            assert (await db.execute(select(func.pg_backend_pid()))).scalar_one() == pid
        assert len(pings) == after_first + 1
        monkeypatch.setattr(postgres, "TRUSTED_FOR_S", 0.0)  # as if idle for a long time
        _, idle = await _handler_session(runner)
        assert idle == pid and len(pings) == after_first + 2


async def test_a_first_statement_on_a_connection_closed_unseen_runs_again_once(
        pg_url: str, admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The server closed the pooled connection, but asyncpg has not read it yet (as right
    after ``pg_terminate_backend``): the handler's INSERT, handed that connection
    unpinged, fails on it, runs again on a new (pinged) one, and is kept once."""
    await admin.execute("CREATE TABLE written (n integer)")
    async with await jobkit.open(pg_url) as runner:
        raw, pid = await _handler_session(runner)
        raw._transport.pause_reading()  # hold back the server's close
        await _kill(admin, pid)
        await wait_until(lambda: _gone(admin, pid), what="the backend to exit")
        raw._transport.resume_reading()
        pings = _count_pings(monkeypatch)
        caplog.set_level(logging.INFO, logger="jobkit")
        _, new_pid = await _handler_session(runner, "INSERT INTO written VALUES (1)")
        assert new_pid != pid and raw.is_closed()
        assert len(pings) == 1  # the dead one unpinged, its replacement pinged
        assert "running the statement again" in caplog.text
        assert await admin.fetchval("SELECT count(*) FROM written") == 1


async def test_a_later_statement_on_a_dead_connection_is_not_run_again(
        pg_url: str, admin: asyncpg.Connection) -> None:
    """Only the statement that opens the transaction is run again: one after it has
    results the handler already saw, so its connection's death reaches the handler."""
    async with await jobkit.open(pg_url) as runner:
        async with LazySession(runner.sessions) as db:
            pid = int((await db.execute(select(func.pg_backend_pid()))).scalar_one())
            await _kill(admin, pid)
            with pytest.raises(sqlalchemy.exc.DBAPIError) as caught:
                await db.execute(text("SELECT 1"))
            assert caught.value.connection_invalidated
            await db.rollback()
            assert (await db.execute(select(func.pg_backend_pid()))).scalar_one() != pid


async def _pooled_read_pid(runner: jobkit.Runner) -> int:
    """The server pid a fast-lane read runs on when it takes a pooled connection (as when
    every held connection is busy)."""
    from jobkit.backends import postgres

    rows = await postgres._fetch_pooled(runner.engine, _PID, {})
    return int(rows[0]["pid"])


_PID_COLUMN = func.pg_backend_pid().label("pid")
_PID = Prepared(select(_PID_COLUMN), (_PID_COLUMN,))


async def test_a_pooled_fast_lane_read_skips_the_ping_and_survives_an_unseen_close(
        pg_url: str, admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """A statement that can run again (here a read) takes a pooled connection returned just
    now without the ping; if the server closed it unseen, the read runs again on a new,
    pinged one. A claim (it cannot run again) is always pinged."""
    from jobkit.backends import postgres

    async with await jobkit.open(pg_url) as runner:
        pings = _count_pings(monkeypatch)
        pid = await _pooled_read_pid(runner)
        after_first = len(pings)
        assert await _pooled_read_pid(runner) == pid and len(pings) == after_first
        claim = postgres.claim_alone_statement(ClaimShape(False, False, False), 1)
        params = {"worker_id": "w", "lease": 60.0, "now": None}
        with contextlib.suppress(Exception):  # (only its checkout matters here)
            await postgres._fetch_pooled(runner.engine, claim, params)
        assert len(pings) == after_first + 1
        async with runner.engine.connect() as conn:  # (a third ping)
            raw = (await conn.get_raw_connection()).driver_connection
        assert raw.get_server_pid() == pid
        raw._transport.pause_reading()  # hold back the server's close
        await _kill(admin, pid)
        await wait_until(lambda: _gone(admin, pid), what="the backend to exit")
        raw._transport.resume_reading()
        new_pid = await _pooled_read_pid(runner)
        assert new_pid != pid and raw.is_closed()
        assert len(pings) == after_first + 3  # the dead one unpinged, its replacement pinged
