"""A job whose handler wrote is completed on its session's own driver connection, inside the
handler's transaction (the backends' ``fetch_in_transaction``): still fenced, still atomic
with the handler's writes, and a cancellation in flight leaves every connection healthy.
``cut_analysis`` reads its asset in the fast lane and writes its clips with Core statements.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest
from helpers import count_checkpoints, count_clips
from sqlalchemy import event, select, update

import jobkit
from jobkit import queue
from jobkit.backends import backend_of, sqlite
from jobkit.execute import RunContext, run_job
from jobkit.models import Clip, Job, JobStatus, jobs_table


def _spy(monkeypatch: pytest.MonkeyPatch, runner: jobkit.Runner) -> list[Any]:
    """Record what each ``fetch_in_transaction`` call returned (None: it did not run)."""
    backend = backend_of(runner.engine)
    real = backend.fetch_in_transaction
    calls: list[Any] = []

    async def spy(conn: Any, statement: Any, params: Any, **kw: Any) -> Any:
        out = await real(conn, statement, params, **kw)
        calls.append(out)
        return out

    monkeypatch.setattr(backend, "fetch_in_transaction", spy)
    return calls


async def _claim(runner: jobkit.Runner, wid: str) -> Job:
    [job] = await queue.claim_alone(runner.engine, 1, worker_id=wid, lease_seconds=60)
    return job


async def test_a_writing_handlers_completion_commits_with_its_writes(
        runner: jobkit.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy(monkeypatch, runner)
    asset, job = await runner.upload_video("atomic.mp4", duration_ms=50_000)
    claimed = await _claim(runner, "w-atomic")
    ctx = RunContext("w-atomic", runner.settings, runner.handlers)
    async with jobkit.database.LazySession(runner.sessions) as db:
        summary = await run_job(claimed, db, ctx)
    assert summary["status"] == "completed", summary
    assert len(calls) == 1 and calls[0] is not None and len(calls[0]) == 1, calls
    stored = await runner.get_job(job.id)
    assert stored.status is JobStatus.COMPLETED and stored.result == summary["result"]
    assert stored.finished_at == claimed.finished_at and stored.finished_at is not None
    assert await count_clips(runner, asset.id) == 3
    async with runner.sessions() as db:
        ids = set((await db.execute(select(Clip.id).where(Clip.job_id == job.id))).scalars())
    assert ids == {uuid.UUID(v["clip_id"]) for v in summary["result"]["variants"]}
    assert runner.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_lost_lease_rolls_back_the_writes_with_the_completion(
        runner: jobkit.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fence fails inside the handler's transaction: nothing of the attempt is kept."""
    calls = _spy(monkeypatch, runner)
    asset, job = await runner.upload_video("lost.mp4", duration_ms=50_000)
    from jobkit.handlers.cut_analysis import run_cut_analysis

    @runner.handler("cut_analysis", replace=True)
    async def taken_over(job: Job, db: Any) -> dict[str, Any]:
        async with runner.sessions() as other:  # meanwhile another worker took the job
            await other.execute(update(jobs_table).where(jobs_table.c.id == job.id)
                                .values(locked_by="w-new", attempts=job.attempts + 1))
            await other.commit()
        return await run_cut_analysis(job, db)  # writes 3 clips in db's transaction

    claimed = await _claim(runner, "w-old")
    ctx = RunContext("w-old", runner.settings, runner.handlers)
    async with jobkit.database.LazySession(runner.sessions) as db:
        summary = await run_job(claimed, db, ctx)
    assert summary["status"] == "lost", summary
    assert calls == [[]], "the fenced completion ran in the handler's transaction, matched nothing"
    assert await count_clips(runner, asset.id) == 0, "the stale attempt's clips rolled back"
    stored = await runner.get_job(job.id)
    assert stored.status is JobStatus.PROCESSING and stored.locked_by == "w-new"
    assert runner.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    gate = sqlite.write_gate(runner.engine)
    assert gate is None or gate.holders == 0


async def test_no_transaction_open_runs_nothing(runner: jobkit.Runner) -> None:
    """Without an open transaction the statement is not run (it would commit on its own)."""
    backend = backend_of(runner.engine)
    job = await runner.enqueue("noop", {}, allow_unknown=True)
    claimed = await _claim(runner, "w")
    params = {"job_id": claimed.id, "attempt": claimed.attempts, "worker_id": "w",
              "result": {}, **backend.clock_params()}
    async with runner.engine.connect() as conn:
        assert await backend.fetch_in_transaction(conn, backend.COMPLETE_ALONE, params) is None
        await conn.rollback()
    assert (await runner.get_job(job.id)).status is JobStatus.PROCESSING
    # A transaction that only read has none open in SQLite (reads run outside one) and one
    # in PostgreSQL; either way the completion goes into it or through the session.
    async with runner.sessions() as db:
        await db.execute(select(jobs_table.c.id).limit(1))
        assert await queue.complete_job(db, claimed, {"ok": 1}, worker_id="w")
        await db.rollback()
    assert (await runner.get_job(job.id)).status is JobStatus.PROCESSING, "rolled back"
    async with runner.sessions() as db:
        assert await queue.complete_job(db, claimed, {"ok": 1}, worker_id="w")
        await db.commit()
    stored = await runner.get_job(job.id)
    assert stored.status is JobStatus.COMPLETED and stored.result == {"ok": 1}


async def test_with_cursor_listeners_every_statement_goes_through_sqlalchemy(
        runner: jobkit.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracing sees the asset read and the completion when it listens (no fast lane)."""
    calls = _spy(monkeypatch, runner)
    seen: list[str] = []

    def listen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.lstrip()[:40].upper())

    event.listen(runner.engine.sync_engine, "before_cursor_execute", listen)
    try:
        asset, job = await runner.upload_video("traced.mp4", duration_ms=30_000)
        claimed = await _claim(runner, "w-traced")
        ctx = RunContext("w-traced", runner.settings, runner.handlers)
        async with jobkit.database.LazySession(runner.sessions) as db:
            summary = await run_job(claimed, db, ctx)
    finally:
        event.remove(runner.engine.sync_engine, "before_cursor_execute", listen)
    assert summary["status"] == "completed", summary
    assert calls == [], "the fast lane stays closed while someone listens"
    assert any(s.startswith("SELECT") and "VIDEO_ASSETS" in s for s in seen), seen
    assert any(s.startswith("UPDATE JOBS") for s in seen), seen
    assert await count_clips(runner, asset.id) == 2


async def test_cancelled_completions_leave_the_pool_healthy(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled at any moment of a writing handler's completion: CancelledError goes
    through, no connection stays checked out (nor, on SQLite, the write gate held), and
    every job is either completed with its clips or still processing without them.

    On SQLite the completion normally runs inline (nothing to cancel in the middle of: see
    the test after this one); here a connect listener sends it to aiosqlite's thread, the
    path a cancellation can cut in flight."""
    from test_cancellation import _settle

    runner = await jobkit.open(db_url, cut_analysis_seconds=0.0, retry_backoff_base=0.0)
    if sqlite.write_gate(runner.engine) is not None:
        event.listen(runner.engine.sync_engine, "connect", lambda *_: None)
    rng = random.Random(15)
    try:
        assets = []
        for i in range(40):
            asset, _ = await runner.upload_video(f"c{i}.mp4", duration_ms=20_000)
            assets.append(asset)
        wid = "w-cancel"
        ctx = RunContext(wid, runner.settings, runner.handlers)
        entered = asyncio.Event()
        backend = backend_of(runner.engine)
        real = backend.fetch_in_transaction
        mid: list[bool] = []

        async def marked(conn: Any, statement: Any, params: Any, **kw: Any) -> Any:
            entered.set()
            try:
                return await real(conn, statement, params, **kw)
            except asyncio.CancelledError:
                mid.append(True)
                raise

        monkeypatch.setattr(backend, "fetch_in_transaction", marked)
        cancelled = 0
        for _ in range(40):
            claimed = await _claim(runner, wid)
            entered.clear()

            async def one(job: Job = claimed) -> Any:
                async with jobkit.database.LazySession(runner.sessions) as db:
                    return await run_job(job, db, ctx)

            task = asyncio.ensure_future(one())
            await entered.wait()  # the completion is under way
            for _ in range(rng.randrange(0, 6)):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                cancelled += 1
        monkeypatch.undo()
        assert cancelled >= 10 and mid, (cancelled, len(mid))
        await _settle(runner)
        gate = sqlite.write_gate(runner.engine)
        assert gate is None or gate.holders == 0
        async with runner.sessions() as db:
            rows = (await db.execute(select(jobs_table.c.id, jobs_table.c.status))).all()
            clips = {j for (j,) in (await db.execute(select(Clip.job_id))).all()}
        for job_id, status in rows:
            assert (status == JobStatus.COMPLETED.value) == (job_id in clips), (job_id, status)
        # Still healthy: the interrupted jobs run again once their lease is given back.
        async with runner.sessions() as db:
            await db.execute(update(jobs_table).where(jobs_table.c.status == "processing")
                             .values(status="pending", locked_by=None, locked_until=None))
            await db.commit()
        stats = await runner.drain(concurrency=4, progress=False)
        assert stats.failed == 0 and stats.lost == 0
        assert await count_clips(runner) == 40
        await _settle(runner)
    finally:
        await runner.close()



def _sqlite_notes() -> Any:
    """A handler writing one row of ``notes`` (made here; its ``job_id`` must name a row of
    ``parents`` when the transaction commits: a deferred foreign key)."""
    from sqlalchemy import text

    async def write_note(job: Job, db: Any) -> dict[str, int]:
        await db.execute(text("INSERT INTO notes (job_id) VALUES (:j)"),
                         {"j": job.params["parent"]})
        return {"wrote": 1}

    async def setup(runner: jobkit.Runner) -> None:
        async with runner.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE parents (id TEXT PRIMARY KEY)"))
            await conn.execute(text(
                "CREATE TABLE notes (job_id TEXT NOT NULL REFERENCES parents (id) "
                "DEFERRABLE INITIALLY DEFERRED)"))
            await conn.execute(text("INSERT INTO parents (id) VALUES ('p')"))

    return write_note, setup


async def test_on_sqlite_a_writing_handlers_commit_runs_inline_without_a_checkpoint(
        sqlite_url: str) -> None:
    """The completion and its COMMIT run on the event loop's thread, on a connection whose
    automatic WAL checkpoint is off, and count as a write: the lane's checkpoints in
    aiosqlite's thread cover it."""
    import threading

    write_note, setup = _sqlite_notes()
    async with await jobkit.open(sqlite_url, handlers={"write_note": write_note}) as runner:
        await setup(runner)
        job = await runner.enqueue("write_note", {"parent": "p"})
        claimed = await _claim(runner, "w-inline")
        lane = sqlite._INLINE[runner.engine.sync_engine]  # noqa: SLF001
        writes = lane.writes
        traced: list[tuple[str, bool]] = []
        loop_thread = threading.get_ident()

        async def handler(job: Job, db: Any) -> Any:
            out = await write_note(job, db)
            raw = (await (await db.connection()).get_raw_connection()).dbapi_connection
            raw._connection._conn.set_trace_callback(
                lambda sql: traced.append((sql.split("\n")[0][:40],
                                           threading.get_ident() == loop_thread)))
            return out

        ctx = RunContext("w-inline", runner.settings, {"write_note": handler})
        async with jobkit.database.LazySession(runner.sessions) as db:
            summary = await run_job(claimed, db, ctx)
            conn = (await (await db.connection()).get_raw_connection()).dbapi_connection
            sqlite3_conn = conn._connection._conn
        sqlite3_conn.set_trace_callback(None)
        assert summary["status"] == "completed", summary
        assert [sql.split(" SET ")[0] for sql, _ in traced] == ["UPDATE jobs", "COMMIT"]
        assert all(on_loop for _, on_loop in traced), traced
        # No automatic checkpoint can run in that COMMIT; the lane's, off the loop, count it.
        assert sqlite3_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert lane.writes == writes + 1
        stored = await runner.get_job(job.id)
        assert stored.status is JobStatus.COMPLETED and stored.result == {"wrote": 1}
        gate = sqlite.write_gate(runner.engine)
        assert gate is not None and gate.holders == 0 and not gate.busy()


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "in_thread"])
async def test_on_sqlite_a_commit_that_fails_keeps_nothing_and_frees_the_connection(
        sqlite_url: str, inline: bool) -> None:
    """A handler's write that breaks a deferred constraint fails at COMMIT, after the fenced
    completion matched: inline or in aiosqlite's thread, the error is SQLAlchemy's, neither
    the row nor the completion is kept (the job stays ``processing`` for its lease), and the
    write gate and the connection are free again; the next job completes."""
    import sqlalchemy.exc
    from sqlalchemy import text

    write_note, setup = _sqlite_notes()
    async with await jobkit.open(sqlite_url, handlers={"write_note": write_note}) as runner:
        await setup(runner)
        if not inline:
            event.listen(runner.engine.sync_engine, "connect", lambda *_: None)
        lane = sqlite._INLINE[runner.engine.sync_engine]  # noqa: SLF001
        bad = await runner.enqueue("write_note", {"parent": "nobody"})
        claimed = await _claim(runner, "w-fk")
        writes = lane.writes
        ctx = RunContext("w-fk", runner.settings, runner.handlers)
        with pytest.raises(sqlalchemy.exc.IntegrityError, match="FOREIGN KEY"):
            async with jobkit.database.LazySession(runner.sessions) as db:
                await run_job(claimed, db, ctx)
        assert lane.writes == writes  # nothing committed, nothing counted
        stored = await runner.get_job(bad.id)
        assert stored.status is JobStatus.PROCESSING and stored.locked_by == "w-fk"
        async with runner.engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM notes"))).scalar() == 0
        gate = sqlite.write_gate(runner.engine)
        assert gate is not None and gate.holders == 0 and not gate.busy()
        assert runner.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        good = await runner.enqueue("write_note", {"parent": "p"})
        claimed = await _claim(runner, "w-fk")
        assert claimed.id == good.id
        async with jobkit.database.LazySession(runner.sessions) as db:
            summary = await run_job(claimed, db, ctx)
        assert summary["status"] == "completed", summary
        assert (await runner.get_job(good.id)).status is JobStatus.COMPLETED


@pytest.mark.parametrize("before_commit", [False, True], ids=["plain", "before_commit"])
async def test_on_sqlite_a_writing_handlers_transaction_takes_no_trip(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch, before_commit: bool) -> None:
    """Each hand-off to aiosqlite's thread costs more than a small statement: a handler's
    transaction of one write takes none. ``BEGIN IMMEDIATE`` and the write run inline
    (nothing held the lock, and it took less than the budget), then the fenced completion
    and its ``COMMIT`` (the transaction holds the lock). All still happen: the job and the
    row commit together, and nothing is left open or holding the write gate. With a ``before_commit`` listener
    on the session (it may write before the commit), the COMMIT waits for the session's
    own commit, and the listener's row commits with the rest."""
    from sqlalchemy import text

    def also_write(session: Any) -> None:
        session.execute(text("INSERT INTO notes (job_id) VALUES ('listener')"))

    async def write_one(job: Job, db: Any) -> dict[str, int]:
        await db.execute(text("INSERT INTO notes (job_id) VALUES (:j)"), {"j": str(job.id)})
        if before_commit:
            event.listen(db.sync_session, "before_commit", also_write)
        return {"wrote": 1}

    async with await jobkit.open(sqlite_url, handlers={"write_one": write_one}) as runner:
        async with runner.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE notes (job_id TEXT NOT NULL)"))
        job = await runner.enqueue("write_one", {})
        claimed = await _claim(runner, "w-trips")
        trips = _count_trips(monkeypatch)
        ctx = RunContext("w-trips", runner.settings, runner.handlers)
        async with jobkit.database.LazySession(runner.sessions) as db:
            summary = await run_job(claimed, db, ctx)
        monkeypatch.undo()
        assert summary["status"] == "completed", summary
        if before_commit:
            assert trips == ["_execute_fetchall", "run", "commit"], trips
        else:
            # the write (with its BEGIN), the completion and its COMMIT ran inline
            assert trips == [], trips
        stored = await runner.get_job(job.id)
        assert stored.status is JobStatus.COMPLETED and stored.result == {"wrote": 1}
        async with runner.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT job_id FROM notes"))).scalars().all()
        assert rows == [str(job.id)] + (["listener"] if before_commit else [])
        gate = sqlite.write_gate(runner.engine)
        assert gate is not None and gate.holders == 0 and not gate.busy()
        assert runner.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_cut_analysis_replaces_clips_its_job_already_has(
        runner: jobkit.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clip DELETE runs only when the asset read (fast lane) saw clips of this job: a
    job with none writes one INSERT; one with clips left over (a handler of the past that
    committed early) ends with this run's clips only."""
    from jobkit.models import new_id, utcnow

    seen: list[str] = []

    def listen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.lstrip()[:20].upper())

    asset, fresh = await runner.upload_video("fresh.mp4", duration_ms=50_000)
    asset2, stale = await runner.upload_video("stale.mp4", duration_ms=50_000)
    async with runner.sessions() as db:
        db.add_all([Clip(id=new_id(), video_asset_id=asset2.id, job_id=stale.id, start_ms=s,
                         end_ms=s + 1000, visual_score=0.5, created_at=utcnow())
                    for s in range(0, 5000, 1000)])
        await db.commit()
    assert await count_clips(runner, asset2.id) == 5
    ctx = RunContext("w-clips", runner.settings, runner.handlers)
    for expected_delete in (False, True):
        claimed = await _claim(runner, "w-clips")
        seen.clear()
        # Listening to the session's statements only (the fast lane stays open: its
        # statements are not seen, which would close it for every statement).
        monkeypatch.setattr(jobkit.database.LazySession, "_materialise", _listening(listen))
        async with jobkit.database.LazySession(runner.sessions) as db:
            summary = await run_job(claimed, db, ctx)
        monkeypatch.undo()
        assert summary["status"] == "completed", summary
        deletes = [s for s in seen if s.startswith("DELETE")]
        assert bool(deletes) is expected_delete, (claimed.id, seen)
    assert await count_clips(runner, asset.id) == 3
    async with runner.sessions() as db:
        left = set((await db.execute(select(Clip.id).where(Clip.job_id == stale.id))).scalars())
    assert len(left) == 3, "the five clips of the past were replaced by this run's three"


def _listening(listen: Any) -> Any:
    """LazySession._materialise that also listens to the session's own statements."""
    real = jobkit.database.LazySession._materialise

    def materialise(self: Any) -> None:
        real(self)
        event.listen(self.sync_session, "do_orm_execute",
                     lambda state: listen(None, None, str(state.statement)))

    return materialise


async def test_transaction_connection_is_the_sessions_own_or_none(runner: jobkit.Runner) -> None:
    """``transaction_connection`` finds, without a greenlet, the connection ``await
    db.connection()`` returns, and gives None whenever the session must decide itself:
    no transaction yet, a savepoint open, a transaction that must be rolled back first."""
    import sqlalchemy.exc
    from sqlalchemy import text

    from jobkit.backends.common import transaction_connection
    from jobkit.models import VideoAsset, new_id, utcnow

    async with runner.sessions() as db:
        assert transaction_connection(db) is None
        await db.execute(text("SELECT 1"))
        assert transaction_connection(db) is await db.connection()
        async with db.begin_nested():
            assert transaction_connection(db) is None
        assert transaction_connection(db) is await db.connection()
    async with runner.sessions() as db:
        asset_id = new_id()
        db.add(VideoAsset(id=asset_id, filename="a.mp4", duration_ms=1, created_at=utcnow()))
        await db.flush()
        db.add(VideoAsset(id=asset_id, filename="b.mp4", duration_ms=1, created_at=utcnow()))
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            await db.flush()
        assert transaction_connection(db) is None
        with pytest.raises(sqlalchemy.exc.PendingRollbackError):
            await db.connection()


def _count_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions sent to aiosqlite's thread from now on."""
    import aiosqlite

    trips: list[str] = []
    real = aiosqlite.Connection._execute

    async def counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return trips


async def test_on_sqlite_a_first_write_waits_in_the_thread_while_another_process_writes(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds SQLite's write lock: the session's first write does not try
    the lock on the loop's thread for its busy timeout; it answers at once, goes to
    aiosqlite's thread, waits there while the loop runs on, and lands once the lock is
    free. The connection's busy timeout is back to jobkit's afterwards."""
    import sqlite3 as sqlite3_module

    from sqlalchemy import text

    async with await jobkit.open(sqlite_url) as runner:
        async with runner.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE notes (v TEXT NOT NULL)"))
        trips = _count_trips(monkeypatch)
        other = sqlite3_module.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
        other.execute("BEGIN IMMEDIATE")

        async def write() -> int:
            async with runner.sessions() as db:
                await db.execute(text("INSERT INTO notes (v) VALUES ('x')"))
                raw = (await (await db.connection()).get_raw_connection()).dbapi_connection
                await db.commit()
            timeout = raw._connection._conn.execute("PRAGMA busy_timeout").fetchone()[0]
            return int(timeout)

        try:
            task = asyncio.create_task(write())
            turns = 0
            async with asyncio.timeout(10):
                while not trips:  # the loop keeps running until the write goes to the thread
                    await asyncio.sleep(0)
                    turns += 1
            for _ in range(100):  # ... and while it waits there for the lock
                await asyncio.sleep(0)
            assert turns > 0 and not task.done() and trips == ["run"], trips
        finally:
            other.execute("COMMIT")
            other.close()
        assert await asyncio.wait_for(task, 10) == sqlite.BUSY_TIMEOUT_MS
        async with runner.engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM notes"))).scalar() == 1


async def test_on_sqlite_a_long_first_write_is_interrupted_and_runs_in_the_thread(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first write that runs past the inline budget is interrupted (its transaction held
    nothing else), runs again, whole and once, in aiosqlite's thread, and goes straight
    there the next time; a short one still runs inline."""
    from sqlalchemy import text

    monkeypatch.setattr(sqlite, "INLINE_BUDGET_S", 0.0002)
    monkeypatch.setattr(sqlite, "CHECKPOINT_WAL_BYTES", 1 << 40)  # no checkpoint's trip
    long_insert = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                   "WHERE i < 200000) INSERT INTO notes (v) SELECT 'many' FROM n")
    async with await jobkit.open(sqlite_url) as runner:
        async with runner.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE notes (v TEXT NOT NULL)"))
        interrupted: list[str] = []
        real = sqlite.first_write_inline

        def spied(run: Any, conn: Any, operation: str, *args: Any) -> Any:
            known = operation in sqlite._SLOW  # noqa: SLF001
            out = real(run, conn, operation, *args)
            if out is None and not known and operation in sqlite._SLOW:  # noqa: SLF001
                interrupted.append(operation)
            return out

        monkeypatch.setattr(sqlite, "first_write_inline", spied)
        trips = _count_trips(monkeypatch)
        for _ in range(2):
            async with runner.sessions() as db:
                await db.execute(text(long_insert))
                await db.commit()
        assert trips == ["run", "commit", "run", "commit"], trips
        assert interrupted == [long_insert], "interrupted once, then sent to the thread"
        trips.clear()
        async with runner.sessions() as db:
            await db.execute(text("INSERT INTO notes (v) VALUES ('one')"))
            await db.commit()
        assert trips == ["commit"], trips  # the write inline; a session's COMMIT is a trip
        async with runner.engine.connect() as conn:
            counts = dict((await conn.execute(
                text("SELECT v, count(*) FROM notes GROUP BY v"))).all())
        assert counts == {"many": 400000, "one": 1}


async def test_on_sqlite_an_inline_first_write_that_fails_is_the_usual_error(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A constraint broken by a first write run inline: SQLAlchemy's IntegrityError, the
    session rolls back, nothing kept, and the connection is healthy."""
    import sqlalchemy.exc
    from sqlalchemy import text

    async with await jobkit.open(sqlite_url) as runner:
        async with runner.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE notes (v TEXT PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO notes (v) VALUES ('taken')"))
        trips = _count_trips(monkeypatch)
        async with runner.sessions() as db:
            with pytest.raises(sqlalchemy.exc.IntegrityError):
                await db.execute(text("INSERT INTO notes (v) VALUES ('taken')"))
            await db.rollback()
            await db.execute(text("INSERT INTO notes (v) VALUES ('free')"))
            await db.commit()
        assert trips == ["rollback", "commit"], trips
        gate = sqlite.write_gate(runner.engine)
        assert gate is not None and gate.holders == 0 and not gate.busy()
        async with runner.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT v FROM notes ORDER BY v"))).scalars().all()
        assert rows == ["free", "taken"]


async def test_on_sqlite_a_write_inside_a_savepoint_is_never_tried_inline(
        sqlite_url: str) -> None:
    """A SAVEPOINT before any write opens SQLite's transaction: the first write must not be
    tried inline (its rollback on a busy lock would end that transaction behind the
    session's back, and the retry would run outside the savepoint). With another process
    holding the lock, what the savepoint rolled back stays rolled back."""
    import sqlite3 as sqlite3_module
    import threading

    from sqlalchemy import text

    async with await jobkit.open(sqlite_url) as runner:
        async with runner.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE notes (v TEXT)"))
        other = sqlite3_module.connect(sqlite_url.split("///", 1)[1], isolation_level=None,
                                       check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.2, lambda: other.execute("COMMIT"))
        release.start()
        try:
            async with runner.sessions() as db:
                with pytest.raises(Exception):  # noqa: B017,PT011 - SQLite's own refusal
                    async with db.begin_nested():
                        await db.execute(text("INSERT INTO notes VALUES ('rolled back')"))
                        raise ValueError("the handler changes its mind")
                await db.commit()
        finally:
            release.join()
            other.close()
        async with runner.engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM notes"))).scalar() == 0


async def test_sqlite_a_growing_wal_starts_a_checkpoint(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Big transactions start a checkpoint by the WAL's size, not only every so many
    commits, and every connection truncates the WAL when it starts it over."""
    import os

    from sqlalchemy import text

    monkeypatch.setattr(sqlite, "CHECKPOINT_EVERY", 10_000)
    monkeypatch.setattr(sqlite, "CHECKPOINT_WAL_BYTES", 256 * 1024)
    monkeypatch.setattr(sqlite, "WAL_SIZE_EVERY", 1)  # look at its size after each commit
    calls = count_checkpoints(monkeypatch)
    path = sqlite_url.split("///", 1)[1]
    async with await jobkit.open(sqlite_url) as runner:
        lane = sqlite._INLINE[runner.engine.sync_engine]  # noqa: SLF001
        async with runner.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE blobs (v TEXT)"))
        for _ in range(3):
            async with runner.sessions() as db:
                await db.execute(text("INSERT INTO blobs (v) VALUES (:v)"),
                                 [{"v": "x" * 200}] * 2000)  # about 500 kB a transaction
                await db.commit()
            while lane.checkpoints:
                await asyncio.gather(*lane.checkpoints)
        assert len(calls) >= 2, calls
        assert os.path.getsize(path + "-wal") <= sqlite.WAL_SIZE_LIMIT + 1024 * 1024
        async with runner.engine.connect() as pooled:
            raw = (await pooled.get_raw_connection()).dbapi_connection
            limit = raw._connection._conn.execute("PRAGMA journal_size_limit").fetchone()[0]
        assert limit == sqlite.WAL_SIZE_LIMIT


async def test_transaction_connection_is_none_for_another_binds_connection(
        runner: jobkit.Runner, tmp_path: Any) -> None:
    """A connection of another engine in the session's transaction is not the session's
    own: the fenced completion must not run there."""
    from sqlalchemy import text

    from jobkit.backends.common import transaction_connection

    other = jobkit.create_engine(f"sqlite+aiosqlite:///{tmp_path}/other.db")
    try:
        async with runner.sessions() as db:
            await db.connection(bind_arguments={"bind": other.sync_engine})
            assert transaction_connection(db) is None
            await db.execute(text("SELECT 1"))  # now the session's own engine too
            assert transaction_connection(db) is None  # two connections: ask the session
    finally:
        await other.dispose()
