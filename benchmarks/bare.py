"""The baseline: the same queue work as bare SQL on the bare driver (aiosqlite / asyncpg).

The tightest loops we could write, on the same schema (same table, same indexes, on
PostgreSQL the same NOTIFY trigger), with the same guarantees as jobkit's claim
(one atomic statement) and completion (fenced on id, attempt, owner and status).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import make_url

from .common import plain_dsn

COLS = ("id, job_type, status, params, result, error, attempts, max_attempts, priority, timeout, "
        "dedupe_key, cancel_requested, run_at, created_at, updated_at, started_at, finished_at, "
        "locked_by, locked_until")
NCOLS = 19
WORKER = "bare-worker"


def sqlite_ts(dt: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text (naive UTC)."""
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


class Bare:
    """One connection, the queue's statements, and the loops over them."""

    backend = ""

    async def close(self) -> None:
        raise NotImplementedError

    # enqueue
    async def insert_one(self, job_type: str, params: dict[str, Any]) -> None:
        raise NotImplementedError

    async def insert_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        raise NotImplementedError

    # claim / complete
    async def claim(self, n: int) -> list[Any]:
        raise NotImplementedError

    async def complete_one(self, row: Any, result: Any) -> bool:
        raise NotImplementedError

    async def complete_batch(self, items: list[tuple[Any, Any]]) -> int:
        raise NotImplementedError

    async def complete_with_write(self, row: Any, result: Any, n: int) -> bool:
        """Insert a bench_rows row and complete the job, in one transaction."""
        raise NotImplementedError

    # -- loops ---------------------------------------------------------------------------
    async def drain_one_at_a_time(self, handler: Callable[[Any], Any]) -> int:
        done = 0
        while True:
            rows = await self.claim(1)
            if not rows:
                return done
            ok = await self.complete_one(rows[0], handler(rows[0]))
            done += ok
            if not ok:
                raise AssertionError("bare completion lost its fence")

    async def drain_batched(self, handler: Callable[[Any], Any], batch: int = 100) -> int:
        done = 0
        while True:
            rows = await self.claim(batch)
            if not rows:
                return done
            n = await self.complete_batch([(r, handler(r)) for r in rows])
            if n != len(rows):
                raise AssertionError("bare batch completion lost a fence")
            done += n

    async def drain_transactional(self, handler: Callable[[Any], Any]) -> int:
        done = 0
        while True:
            rows = await self.claim(1)
            if not rows:
                return done
            ok = await self.complete_with_write(rows[0], handler(rows[0]), done)
            if not ok:
                raise AssertionError("bare completion lost its fence")
            done += 1

    async def drain_sleepy(self, handler: Callable[[Any], Awaitable[Any]], batch: int) -> int:
        """Claim ``batch``, run their (sleeping) handlers concurrently, record each with its
        writes in its own transaction."""
        done = 0
        while True:
            rows = await self.claim(batch)
            if not rows:
                return done
            results = await asyncio.gather(*(handler(r) for r in rows))
            for r, res in zip(rows, results, strict=True):
                if not await self.complete_with_write(r, res, done):
                    raise AssertionError("bare completion lost its fence")
                done += 1


class SqliteBare(Bare):
    backend = "sqlite"

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.claim_sql = (
            "UPDATE jobs SET status='processing', attempts=attempts+1, locked_by=?, "
            "locked_until=?, started_at=?, updated_at=?, finished_at=NULL "
            "WHERE id IN (SELECT id FROM jobs INDEXED BY ix_jobs_eligible "
            "WHERE status IN ('pending', 'retry') AND run_at <= ? "
            "ORDER BY priority DESC, created_at, id LIMIT ?) "
            "RETURNING id, job_type, params, attempts, max_attempts, timeout, priority")
        self.complete_sql = (
            "UPDATE jobs SET status='completed', result=?, error=NULL, finished_at=?, "
            "updated_at=?, locked_by=NULL, locked_until=NULL "
            "WHERE id=? AND attempts=? AND locked_by=? AND status='processing'")
        self.insert_sql = f"INSERT INTO jobs ({COLS}) VALUES ({', '.join('?' * NCOLS)})"

    @classmethod
    async def connect(cls, url: str) -> SqliteBare:
        import aiosqlite

        conn = await aiosqlite.connect(str(make_url(url).database), isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000",
                       "foreign_keys=ON"):
            await conn.execute(f"PRAGMA {pragma}")
        return cls(conn)

    async def close(self) -> None:
        await self.conn.close()

    def _row(self, job_type: str, params: dict[str, Any], now: str) -> tuple[Any, ...]:
        return (uuid.uuid4().hex, job_type, "pending", json.dumps(params), None, None, 0, 4, 0,
                None, None, 0, now, now, now, None, None, None, None)

    async def insert_one(self, job_type: str, params: dict[str, Any]) -> None:
        # One statement in autocommit mode is its own (write) transaction.
        await self.conn.execute(self.insert_sql,
                                self._row(job_type, params, sqlite_ts(datetime.now(UTC))))

    async def insert_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        now = sqlite_ts(datetime.now(UTC))
        per = 32766 // NCOLS
        await self.conn.execute("BEGIN IMMEDIATE")
        for start in range(0, len(items), per):
            chunk = items[start:start + per]
            sql = (f"INSERT INTO jobs ({COLS}) VALUES "
                   + ", ".join([f"({', '.join('?' * NCOLS)})"] * len(chunk)))
            args = [v for jt, p in chunk for v in self._row(jt, p, now)]
            await self.conn.execute(sql, args)
        await self.conn.execute("COMMIT")

    async def claim(self, n: int) -> list[Any]:
        now = datetime.now(UTC)
        ts = sqlite_ts(now)
        rows = await self.conn.execute_fetchall(
            self.claim_sql, (WORKER, sqlite_ts(now + timedelta(seconds=60)), ts, ts, ts, n))
        return list(rows)

    async def complete_one(self, row: Any, result: Any) -> bool:
        ts = sqlite_ts(datetime.now(UTC))
        cur = await self.conn.execute(self.complete_sql,
                                      (json.dumps(result), ts, ts, row[0], row[3], WORKER))
        return bool(cur.rowcount == 1)

    async def complete_batch(self, items: list[tuple[Any, Any]]) -> int:
        ts = sqlite_ts(datetime.now(UTC))
        done = 0
        per = (32766 - 2) // 3
        for start in range(0, len(items), per):
            sql, args = _batch_update(items[start:start + per], ts)
            done += len(await self.conn.execute_fetchall(sql, args))
        return done

    async def complete_with_write(self, row: Any, result: Any, n: int) -> bool:
        ts = sqlite_ts(datetime.now(UTC))
        await self.conn.execute("BEGIN IMMEDIATE")
        await self.conn.execute("INSERT INTO bench_rows (job_id, n) VALUES (?, ?)", (row[0], n))
        cur = await self.conn.execute(self.complete_sql,
                                      (json.dumps(result), ts, ts, row[0], row[3], WORKER))
        if cur.rowcount != 1:
            await self.conn.execute("ROLLBACK")
            return False
        await self.conn.execute("COMMIT")
        return True


def _batch_update(items: list[tuple[Any, Any]], ts: str) -> tuple[str, list[Any]]:
    """One fenced ``UPDATE … FROM (VALUES …)`` completing every job of ``items``."""
    values = ", ".join(f"(?{3 + 3 * i}, ?{4 + 3 * i}, ?{5 + 3 * i})" for i in range(len(items)))
    sql = ("UPDATE jobs SET status='completed', result=v.column3, error=NULL, finished_at=?1, "
           "updated_at=?1, locked_by=NULL, locked_until=NULL "
           f"FROM (VALUES {values}) AS v WHERE jobs.id=v.column1 AND jobs.attempts=v.column2 "
           "AND jobs.locked_by=?2 AND jobs.status='processing' RETURNING jobs.id")
    args: list[Any] = [ts, WORKER]
    for r, res in items:
        args += [r[0], r[3], json.dumps(res)]
    return sql, args


class PgBare(Bare):
    backend = "postgresql"

    CLAIM = ("UPDATE jobs SET status='processing', attempts=attempts+1, locked_by=$1, "
             "locked_until=now() + interval '60 seconds', started_at=now(), updated_at=now(), "
             "finished_at=NULL WHERE id IN (SELECT id FROM jobs WHERE status IN ('pending','retry') "
             "AND run_at <= now() ORDER BY priority DESC, created_at, id LIMIT $2 "
             "FOR UPDATE SKIP LOCKED) "
             "RETURNING id, job_type, params, attempts, max_attempts, timeout, priority")
    COMPLETE = ("UPDATE jobs SET status='completed', result=$1::jsonb, error=NULL, "
                "finished_at=now(), updated_at=now(), locked_by=NULL, locked_until=NULL "
                "WHERE id=$2 AND attempts=$3 AND locked_by=$4 AND status='processing'")
    COMPLETE_MANY = ("UPDATE jobs SET status='completed', result=v.res, error=NULL, "
                     "finished_at=now(), updated_at=now(), locked_by=NULL, locked_until=NULL "
                     "FROM unnest($1::uuid[], $2::int[], $3::jsonb[]) AS v(id, att, res) "
                     "WHERE jobs.id=v.id AND jobs.attempts=v.att AND jobs.locked_by=$4 "
                     "AND jobs.status='processing'")
    INSERT = (f"INSERT INTO jobs ({COLS}) VALUES ($1, $2, 'pending', $3::jsonb, NULL, NULL, 0, 4, "
              "0, NULL, NULL, false, $4, $4, $4, NULL, NULL, NULL, NULL)")
    INSERT_MANY = (f"INSERT INTO jobs ({COLS}) SELECT id, jt, 'pending', p, NULL, NULL, 0, 4, 0, "
                   "NULL, NULL, false, $4, $4, $4, NULL, NULL, NULL, NULL "
                   "FROM unnest($1::uuid[], $2::text[], $3::jsonb[]) AS v(id, jt, p)")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.stmts: dict[str, Any] = {}

    @classmethod
    async def connect(cls, url: str) -> PgBare:
        import asyncpg

        self = cls(await asyncpg.connect(plain_dsn(url)))
        for name in ("CLAIM", "COMPLETE", "COMPLETE_MANY", "INSERT", "INSERT_MANY"):
            self.stmts[name] = await self.conn.prepare(getattr(cls, name))
        return self

    async def close(self) -> None:
        await self.conn.close()

    async def insert_one(self, job_type: str, params: dict[str, Any]) -> None:
        await self.stmts["INSERT"].fetch(uuid.uuid4(), job_type, json.dumps(params),
                                         datetime.now(UTC))

    async def insert_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        await self.stmts["INSERT_MANY"].fetch(
            [uuid.uuid4() for _ in items], [jt for jt, _ in items],
            [json.dumps(p) for _, p in items], datetime.now(UTC))

    async def claim(self, n: int) -> list[Any]:
        return list(await self.stmts["CLAIM"].fetch(WORKER, n))

    async def complete_one(self, row: Any, result: Any) -> bool:
        await self.stmts["COMPLETE"].fetch(json.dumps(result), row[0], row[3], WORKER)
        return self.stmts["COMPLETE"].get_statusmsg() == "UPDATE 1"  # type: ignore[no-any-return]

    async def complete_batch(self, items: list[tuple[Any, Any]]) -> int:
        await self.stmts["COMPLETE_MANY"].fetch(
            [r[0] for r, _ in items], [r[3] for r, _ in items],
            [json.dumps(res) for _, res in items], WORKER)
        return int(self.stmts["COMPLETE_MANY"].get_statusmsg().split()[-1])

    async def complete_with_write(self, row: Any, result: Any, n: int) -> bool:
        async with self.conn.transaction():
            await self.conn.execute("INSERT INTO bench_rows (job_id, n) VALUES ($1, $2)",
                                    str(row[0]), n)
            await self.stmts["COMPLETE"].fetch(json.dumps(result), row[0], row[3], WORKER)
            if self.stmts["COMPLETE"].get_statusmsg() != "UPDATE 1":
                raise AssertionError("bare completion lost its fence")
        return True


async def connect(url: str) -> Bare:
    if url.startswith("sqlite"):
        return await SqliteBare.connect(url)
    return await PgBare.connect(url)


def now_s() -> float:
    return time.time()
