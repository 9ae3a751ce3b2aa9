"""Schema migrations: 0.1.0 databases upgrade in place, nothing lost, nothing run twice.

The 0.1.0 databases are fixtures made BY THE 0.1.0 CODE (tests/fixtures/make_v010_fixtures.py).
jobkit ships revision 0001 (= the 0.1.0 schema); the test-only revision 9001
(tests/migrations/versions) stands for the additive revisions of later issues.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, PG_URL, _pg_admin, _plain_dsn
from sqlalchemy import text
from sqlalchemy.engine import make_url

import jobkit
from jobkit import schema
from jobkit.errors import SchemaOutdated, SchemaTooNew
from jobkit.models import Base, JobStatus

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
EXTRA = str(HERE / "migrations" / "versions")
PROC = str(HERE / "migrate_proc.py")
JOBKIT_BIN = str(Path(sys.executable).parent / "jobkit")
TABLES = ("jobs", "video_assets", "clips", "workers", "jobkit_meta")


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------
@pytest.fixture
def extra_revisions(monkeypatch: pytest.MonkeyPatch) -> str:
    """This process knows the test-only revision 9001 on top of jobkit's own."""
    monkeypatch.setattr(schema, "VERSION_LOCATIONS", (*schema.VERSION_LOCATIONS, EXTRA))
    return "9001"


def _new_pg_db() -> tuple[str, str]:
    name = f"jobkit_m_{uuid.uuid4().hex[:12]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    return name, make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def psql(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-q", "-X",
                           _plain_dsn(url), *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def pg_empty() -> Iterator[str]:
    from conftest import require_pg

    require_pg()
    name, url = _new_pg_db()
    yield url
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def v010_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database made by jobkit 0.1.0, full of jobs, clips and workers."""
    if backend == "sqlite":
        path = tmp_path / "old.db"
        shutil.copy(FIXTURES / "jobkit_0_1_0.db", path)
        return f"sqlite+aiosqlite:///{path}"
    url = str(request.getfixturevalue("pg_empty"))
    done = psql(url, "-f", str(FIXTURES / "jobkit_0_1_0.pg.sql"))
    assert done.returncode == 0, done.stderr
    return url


async def snapshot(url: str, columns: dict[str, list[str]] | None = None
                   ) -> tuple[dict[str, list[str]], dict[str, list[tuple[Any, ...]]]]:
    """Every row of every jobkit table (only ``columns`` of each, when given)."""
    engine = jobkit.create_engine(url)
    out: dict[str, list[tuple[Any, ...]]] = {}
    cols: dict[str, list[str]] = {}
    try:
        async with engine.connect() as conn:
            for table in TABLES:
                if columns is None:
                    result = await conn.execute(text(f"SELECT * FROM {table}"))
                    cols[table] = list(result.keys())
                else:
                    cols[table] = columns[table]
                    result = await conn.execute(text(
                        f"SELECT {', '.join(columns[table])} FROM {table}"))
                out[table] = sorted((tuple(r) for r in result), key=repr)
            names = await conn.run_sync(
                lambda c: set(c.dialect.get_table_names(c)))
            for extra in ("alembic_version", "jobkit_test_upgrades"):
                if extra in names:
                    out[extra] = sorted(
                        tuple(r) for r in await conn.execute(text(f"SELECT * FROM {extra}")))
    finally:
        await engine.dispose()
    return cols, out


async def one_value(url: str, sql: str) -> Any:
    engine = jobkit.create_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql))).scalar()
    finally:
        await engine.dispose()


async def state_of(url: str) -> schema.SchemaState:
    engine = jobkit.create_engine(url)
    try:
        return await schema.read_state(engine)
    finally:
        await engine.dispose()


async def ok(job: Any, db: Any) -> dict[str, Any]:
    return {"ok": True, "params": job.params}


def proc_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBKIT_")}
    env.update({"JOBKIT_CUT_ANALYSIS_SECONDS": "0.01", "JOBKIT_RETRY_BACKOFF_BASE": "0"})
    env.update({f"JOBKIT_{k.upper()}": v for k, v in settings.items()})
    return env


def run_proc(*args: str, env: dict[str, str] | None = None,
             extra: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, PROC, *args] if extra else [JOBKIT_BIN, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=env or proc_env())


# ---------------------------------------------------------------------------
# Revisions, as shipped
# ---------------------------------------------------------------------------
def test_shipped_revisions_are_numbered_and_linear() -> None:
    script = schema.script_directory()
    revs = [s.revision for s in reversed(list(script.walk_revisions()))]
    assert revs[0] == "0001" and script.get_heads() == [revs[-1]]
    assert revs == [f"{i:04d}" for i in range(1, len(revs) + 1)], \
        "revision ids are 0001, 0002, … in order (rename yours after a rebase)"
    assert schema.head_revision() == schema.shipped_head() == revs[-1]


def test_packaging_ships_the_migration_scripts() -> None:
    import tomllib

    conf = tomllib.loads((HERE.parent / "pyproject.toml").read_text())
    data = conf["tool"]["setuptools"]["package-data"]["jobkit"]
    assert "migrations/script.py.mako" in data and "migrations/README.md" in data
    for package in ("jobkit/migrations", "jobkit/migrations/versions"):
        assert (HERE.parent / package / "__init__.py").exists(), package


async def test_fresh_database_is_made_by_the_migrations_and_matches_the_models(
        db_url: str, backend: str) -> None:
    """The models and the revisions agree (a model change without a revision fails here)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    async with await jobkit.open(db_url) as runner:
        state = await schema.read_state(runner.engine)
        assert (state.revision, state.stamped, state.status) == \
            (schema.head_revision(), True, "current")
        async with runner.engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(
                MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata))
        assert diff == [], diff
        meta = await runner.engine.connect()
        try:
            value = (await meta.execute(text(
                "SELECT value FROM jobkit_meta WHERE key = 'schema_version'"))).scalar()
        finally:
            await meta.close()
        assert int(value) == int(schema.head_revision())


def _schema_text(backend: str, url: str) -> list[str]:
    """The schema of a database as comparable lines (no alembic_version)."""
    if backend == "sqlite":
        import sqlite3

        con = sqlite3.connect(url.split(":///", 1)[1])
        rows = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                           "WHERE name NOT LIKE '%alembic_version%' ORDER BY name").fetchall()
        con.close()
        return [" ".join(f"{t} {n} {tb} {s or ''}".split()) for t, n, tb, s in rows]
    dump = subprocess.run(["pg_dump", "--schema-only", "--no-owner", "--no-privileges",
                           _plain_dsn(url)], capture_output=True, text=True, check=True).stdout
    blocks = re.split(r"\n\s*\n", dump)
    keep = [re.sub(r"\s+", " ", b).strip() for b in blocks
            if b.strip() and "alembic_version" not in b
            and not b.lstrip().startswith(("--", "SET ", "SELECT pg_catalog", "\\"))]
    return sorted(keep)


@pytest.fixture
def empty_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    return str(request.getfixturevalue("pg_empty"))


def _loose(lines: list[str]) -> list[str]:
    return [re.sub(r"::(character varying|text)(\[\])?|[()]", "", line) for line in lines]


async def test_revision_0001_is_exactly_the_0_1_0_schema(
        backend: str, v010_url: str, empty_url: str) -> None:
    fresh = empty_url
    engine = jobkit.create_engine(fresh)
    try:
        await schema.upgrade(engine, "0001")
    finally:
        await engine.dispose()
    made_by_010 = _schema_text(backend, v010_url)
    assert made_by_010 and _schema_text(backend, fresh) == made_by_010
    if backend == "postgresql":
        assert any("CREATE TRIGGER jobkit_notify_jobs" in line for line in made_by_010)
        assert any("CREATE UNIQUE INDEX ux_jobs_dedupe_active" in line for line in made_by_010)


# ---------------------------------------------------------------------------
# A 0.1.0 database moves forward, keeping everything
# ---------------------------------------------------------------------------
async def test_v010_database_upgrades_in_place_and_keeps_working(
        backend: str, v010_url: str, extra_revisions: str,
        caplog: pytest.LogCaptureFixture) -> None:
    cols, before = await snapshot(v010_url)
    assert {str(r[cols["jobs"].index("status")]) for r in before["jobs"]} == \
        {s.value for s in JobStatus}, "the fixture has jobs in every state"
    assert len(before["clips"]) == 8 and len(before["workers"]) == 1
    state = await state_of(v010_url)
    assert (state.revision, state.stamped, state.status) == ("0001", False, "outdated")
    handlers = {"cut_analysis": jobkit.DISPATCH_TABLE["cut_analysis"], "resize": ok,
                "flaky": ok, "noop": ok}

    if backend == "postgresql":
        with pytest.raises(SchemaOutdated, match=r"revision 0001, older than this jobkit's "
                                                 r"9001: run `jobkit migrate`"):
            await jobkit.open(v010_url, handlers=handlers)
        assert (await snapshot(v010_url))[1] == before, "the refusal wrote nothing"
    caplog.set_level(logging.INFO, logger="jobkit")
    caplog.set_level(logging.DEBUG, logger="alembic")
    runner = await jobkit.open(v010_url, handlers=handlers, auto_migrate=True, **FAST)
    try:
        said = [r.getMessage() for r in caplog.records if r.name == "jobkit"]
        assert len([m for m in said if "jobkit schema" in m]) == 1, said
        assert [m for m in said if "jobkit schema" in m][0].startswith(
            "jobkit schema upgraded from revision 0001 to 9001 (a jobkit 0.1.0 database, "
            "now stamped) in ")
        state = await schema.read_state(runner.engine)
        assert (state.revision, state.stamped, state.status) == ("9001", True, "current")

        # Every row and value kept (the meta row now says 9001, which 0.1.0 reads).
        _, after = await snapshot(v010_url, cols)
        assert after.pop("alembic_version") == [("9001",)]
        assert after.pop("jobkit_test_upgrades") == [(1, "upgraded")]
        assert after.pop("jobkit_meta") == [("schema_version", "9001")]
        assert before.pop("jobkit_meta") == [("schema_version", "1")]
        assert after == before

        from helpers import all_jobs

        old = await all_jobs(runner)
        by = {str(j.status): [x for x in old if x.status == j.status] for j in old}
        deduped = next(j for j in old if j.dedupe_key == "thumb-640")
        failed = by["failed"][0]
        scheduled = next(j for j in old if j.run_at.year == 2099)
        # The dedupe key still deduplicates.
        again = await runner.enqueue("resize", {"width": 640}, dedupe_key="thumb-640")
        assert again.id == deduped.id
        # Pending, retry and the lost processing job (lease long expired) all run.
        async with runner.sessions() as db:
            await jobkit.queue.reap_expired(db)
            await db.commit()
        stats = await runner.drain(concurrency=2, progress=False)
        assert stats.failed == 0
        now = {j.id: j for j in await all_jobs(runner)}
        for j in old:
            if j.id == scheduled.id:
                assert now[j.id].status == JobStatus.PENDING
            elif j.id == failed.id:
                assert now[j.id].status == JobStatus.FAILED
            else:
                assert now[j.id].status == JobStatus.COMPLETED, (j, now[j.id])
        assert now[by["retry"][0].id].attempts == 2, "the retry kept its spent attempt"
        # The failed job can be retried.
        await runner.retry_job(failed.id)
        await runner.drain(progress=False)
        assert (await runner.get_job(failed.id)).status == JobStatus.COMPLETED
        # Its clips still plot: the two analysed videos and the one analysed just now.
        from jobkit.notebook.plots import plot_visual_scores

        clips = await runner.clips()
        old_clip_ids = {uuid.UUID(str(r[0])) if not isinstance(r[0], uuid.UUID) else r[0]
                        for r in before["clips"]}
        assert old_clip_ids <= {uuid.UUID(str(c)) for c in clips["clip_id"]}
        fig = plot_visual_scores(clips)
        ax = fig.axes[0]
        assert len(ax.patches) == len(clips) == 11
        assert [t.get_text() for t in ax.get_yticklabels()] == \
            ["match.mp4 · 60 s", "interview.mp4 · 96 s", "trailer.mp4 · 41 s"]
    finally:
        await runner.close()


async def test_cli_status_and_migrate(backend: str, v010_url: str) -> None:
    """`jobkit status` shows the revision; `jobkit migrate` upgrades, once."""
    import json

    status = run_proc("status", "--json", "--database-url", v010_url)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["schema"] == {"revision": "0001", "head": "9001", "status": "outdated",
                              "current": False, "stamped": False}
    assert data["health"] == "unhealthy"
    text_status = run_proc("status", "--database-url", v010_url).stdout
    assert re.search(r"^schema +revision 0001, older than this jobkit's 9001: .*jobkit migrate",
                     text_status, re.M), text_status
    assert (await state_of(v010_url)).stamped is False, "status wrote nothing"

    first = run_proc("migrate", "--json", "--database-url", v010_url)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {
        "database_url": json.loads(first.stdout)["database_url"], "from_revision": "0001",
        "revision": "9001", "head": "9001", "upgraded": True}
    again = run_proc("migrate", "--database-url", v010_url)
    assert again.returncode == 0 and "is current (revision 9001)" in again.stdout
    assert await one_value(v010_url, "SELECT count(*) FROM jobkit_test_upgrades") == 1
    status = json.loads(run_proc("status", "--json", "--database-url", v010_url).stdout)
    assert status["schema"]["current"] is True and status["jobs"]["completed"] == 3
    assert re.search(r"^schema +revision 9001 \(current\)$",
                     run_proc("status", "--database-url", v010_url).stdout, re.M)


async def test_cli_migrate_stamps_a_v010_database_with_the_shipped_revisions(
        backend: str, v010_url: str) -> None:
    done = run_proc("migrate", "--database-url", v010_url, extra=False)
    assert done.returncode == 0, done.stderr
    assert f"jobkit 0.1.0 schema stamped as revision {schema.shipped_head()}" in done.stdout \
        or "upgraded from revision 0001" in done.stdout
    state = await state_of(v010_url)
    assert state.stamped and state.status == "current"


# ---------------------------------------------------------------------------
# PostgreSQL: refuse, or migrate once under the advisory lock
# ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql"])
async def test_ten_processes_auto_migrate_once(v010_url: str, tmp_path: Path) -> None:
    # Without JOBKIT_AUTO_MIGRATE, `jobkit work` and `jobkit serve` refuse in one line.
    for command in (["work", "--burst", "--force"], ["serve", "--port", "0"]):
        refused = run_proc(*command, "--database-url", v010_url)
        assert refused.returncode == 5, (command, refused.stderr)
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "older than this jobkit's 9001: run `jobkit migrate`" \
            in lines[0], refused.stderr
    assert (await state_of(v010_url)).stamped is False

    go = tmp_path / "go"
    env = proc_env(auto_migrate="true")
    procs = [subprocess.Popen([sys.executable, PROC, "--wait-for", str(go), "work", "--burst",
                               "--force", "--database-url", v010_url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(10)]
    await asyncio.to_thread(_wait_ready, tmp_path, procs)
    go.touch()  # all ten have imported jobkit: release them at once
    results = [await asyncio.to_thread(p.communicate, timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0] * 10, [e for (_, e), c in zip(results, codes, strict=True) if c]
    upgraded = [e for _, e in results if "jobkit schema upgraded from revision 0001 to 9001" in e]
    assert len(upgraded) == 1, [e for _, e in results]
    assert not any("Traceback" in e or "error" in e.lower() for _, e in results), results
    assert await one_value(v010_url, "SELECT count(*) FROM jobkit_test_upgrades") == 1
    assert await one_value(v010_url, "SELECT version_num FROM alembic_version") == "9001"
    # The one pending cut_analysis job ran exactly once among the ten workers.
    assert await one_value(v010_url, "SELECT count(*) FROM clips") == 11


def _wait_ready(folder: Path, procs: list[subprocess.Popen[str]]) -> None:
    """Until every process has written its ready file (or one has exited)."""
    import time

    deadline = time.monotonic() + 120
    while len(list(folder.glob("go.ready.*"))) < len(procs):
        assert time.monotonic() < deadline, "the processes did not start"
        assert all(p.poll() is None for p in procs), "a process exited before the start"
        time.sleep(0.01)


# ---------------------------------------------------------------------------
# An older jobkit against a newer schema
# ---------------------------------------------------------------------------
async def test_older_jobkit_refuses_a_newer_schema_and_writes_nothing(
        backend: str, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema, "VERSION_LOCATIONS", (*schema.VERSION_LOCATIONS, EXTRA))
    engine = jobkit.create_engine(db_url)
    try:
        await schema.upgrade(engine)  # a newer jobkit (one that knows 9001) upgraded it
    finally:
        await engine.dispose()
    async with await jobkit.open(db_url) as runner:
        await runner.upload_video("match.mp4", duration_ms=60_000)
    monkeypatch.undo()  # this jobkit knows only its own revisions
    _, before = await snapshot(db_url)
    head = schema.head_revision()
    with pytest.raises(SchemaTooNew) as refused:
        await jobkit.open(db_url, auto_migrate=True)
    message = str(refused.value)
    assert "revision 9001, newer than this jobkit" in message and f"newest is {head}" in message
    assert "upgrade jobkit on this host" in message
    from concurrent.futures import ThreadPoolExecutor

    commands = (["work", "--burst", "--force"], ["migrate"], ["migrate", "--sql"],
                ["enqueue", "cut_analysis", "--params",
                 '{"video_asset_id": "0190f3a4-0000-7000-8000-000000000000"}'],
                ["jobs"], ["status", "--json"])
    with ThreadPoolExecutor(max_workers=3) as pool:
        done_all = list(pool.map(
            lambda c: run_proc(*c, "--database-url", db_url, extra=False), commands))
    for command, done in zip(commands[:-1], done_all[:-1], strict=True):
        assert done.returncode == 5, (command, done.stderr)
        assert done.stderr.count("\n") == 1 and "upgrade jobkit on this host" in done.stderr
    status = done_all[-1]
    assert status.returncode == 0
    import json

    assert json.loads(status.stdout)["schema"]["status"] == "newer"
    assert (await snapshot(db_url))[1] == before, "nothing was written"


async def test_jobkit_0_1_0_itself_refuses_an_upgraded_database(
        backend: str, v010_url: str, extra_revisions: str, tmp_path: Path) -> None:
    """jobkit_meta.schema_version follows the revision, so 0.1.0's own check refuses."""
    old_code = tmp_path / "jk010"
    old_code.mkdir()
    archive = subprocess.run(f"git -C {HERE.parent} archive e6a0f5b jobkit | tar -x -C {old_code}",
                             shell=True, capture_output=True, text=True)
    if archive.returncode != 0:
        pytest.skip(f"no git history for jobkit 0.1.0 here: {archive.stderr.strip()}")
    async with await jobkit.open(v010_url, auto_migrate=True):
        pass
    _, before = await snapshot(v010_url)
    script = ("import asyncio, jobkit, sys\n"
              "assert jobkit.__version__ == '0.1.0', jobkit.__file__\n"
              "try:\n    asyncio.run(jobkit.open(sys.argv[1]))\n"
              "except jobkit.JobkitError as exc:\n    print(exc); sys.exit(7)\n")
    done = subprocess.run([sys.executable, "-c", script, v010_url], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path,
                          env={**proc_env(), "PYTHONPATH": str(old_code)})
    assert done.returncode == 7, done.stderr
    assert "schema version 9001, newer than this jobkit (1); upgrade jobkit" in done.stdout
    assert (await snapshot(v010_url))[1] == before


# ---------------------------------------------------------------------------
# `jobkit migrate --sql` for a DBA
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["postgresql"])
async def test_migrate_sql_applies_with_psql_to_a_v010_database(
        v010_url: str, extra_revisions: str) -> None:
    _, before = await snapshot(v010_url)
    sql = run_proc("migrate", "--sql", "--database-url", v010_url)
    assert sql.returncode == 0, sql.stderr
    assert sql.stdout.startswith("BEGIN;") and "pg_advisory_xact_lock(727274001)" in sql.stdout
    assert (await state_of(v010_url)).stamped is False, "--sql ran nothing"
    applied = psql(v010_url, stdin=sql.stdout)
    assert applied.returncode == 0, applied.stderr
    state = await state_of(v010_url)
    assert (state.revision, state.stamped, state.status) == ("9001", True, "current")
    _, after = await snapshot(v010_url, {t: c for t, c in (await snapshot(v010_url))[0].items()})
    assert after["jobs"] and len(after["jobs"]) == len(before["jobs"])
    assert await one_value(v010_url, "SELECT value FROM jobkit_meta") == "9001"
    async with await jobkit.open(v010_url) as runner:  # current: opens without migrating
        assert (await runner.status_counts())["failed"] == 1

    # From an empty database (--from base, no connection needed): the same schema as online.
    base_sql = run_proc("migrate", "--sql", "--from", "base", "--database-url",
                        "postgresql+asyncpg://nobody@127.0.0.1:1/none")
    assert base_sql.returncode == 0, base_sql.stderr
    name, empty = await asyncio.to_thread(_new_pg_db)
    try:
        applied = psql(empty, stdin=base_sql.stdout)
        assert applied.returncode == 0, applied.stderr
        # psql's simple protocol spells the partial indexes' IN (...) casts differently.
        assert _loose(_schema_text("postgresql", empty)) == \
            _loose(_schema_text("postgresql", v010_url))
        assert (await state_of(empty)).status == "current"
    finally:
        await asyncio.to_thread(_pg_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_migrate_sql_explains_what_it_needs(tmp_path: Path) -> None:
    unreachable = run_proc("migrate", "--sql", "--database-url",
                           "postgresql+asyncpg://nobody@127.0.0.1:1/none",
                           env=proc_env(), extra=False)
    assert unreachable.returncode == 5 and "--from base|0.1.0|REVISION" in unreachable.stderr
    unknown = run_proc("migrate", "--sql", "--from", "0042", "--database-url",
                       f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", extra=False)
    assert unknown.returncode == 2 and "--from: unknown schema revision '0042'" in unknown.stderr
    stamp = run_proc("migrate", "--sql", "--from", "0.1.0", "--database-url",
                     f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", extra=False)
    assert stamp.returncode == 0 and "INSERT INTO alembic_version (version_num) VALUES " \
        "('0001')" in stamp.stdout
    assert not (tmp_path / "x.db").exists(), "--sql --from connects to nothing"


async def test_alembics_own_commands_work_through_the_async_env(
        backend: str, empty_url: str, extra_revisions: str) -> None:
    """env.py opens jobkit's async engine itself when Alembic's command API drives it."""
    from alembic import command

    await asyncio.to_thread(command.upgrade, schema.alembic_config(empty_url), "0001")
    assert (await state_of(empty_url)).revision == "0001"
    await asyncio.to_thread(command.upgrade, schema.alembic_config(empty_url), "head")
    state = await state_of(empty_url)
    assert (state.revision, state.status) == ("9001", "current")
    assert await one_value(empty_url, "SELECT value FROM jobkit_meta") == "9001"
    await asyncio.to_thread(command.downgrade, schema.alembic_config(empty_url), "0001")
    assert await one_value(empty_url, "SELECT value FROM jobkit_meta") == "1"
    async with await jobkit.open(empty_url, auto_migrate=True) as runner:
        await runner.upload_video("match.mp4", duration_ms=60_000)
    assert (await state_of(empty_url)).revision == "9001"


# ---------------------------------------------------------------------------
# Revision 0002: queues, dependencies, per-type limits, schedules
# ---------------------------------------------------------------------------
async def test_revision_0002_puts_old_jobs_in_the_default_queue_and_adds_the_new_tables(
        backend: str, v010_url: str) -> None:
    cols, before = await snapshot(v010_url)
    runner = await jobkit.open(v010_url, handlers={"cut_analysis": ok, "resize": ok,
                                                   "flaky": ok, "noop": ok},
                               auto_migrate=True, **FAST)
    try:
        state = await schema.read_state(runner.engine)
        assert (state.revision, state.status) == (schema.shipped_head(), "current")
        assert await one_value(v010_url, "SELECT count(*) FROM jobs WHERE queue <> 'default'") \
            == 0, "every existing job is in the default queue"
        assert (await snapshot(v010_url, cols))[1]["jobs"] == before["jobs"], "rows kept"
        waiting = await one_value(
            v010_url, "SELECT count(*) FROM jobs WHERE status IN ('pending', 'retry') "
                      "AND run_at <= CURRENT_TIMESTAMP")
        assert waiting >= 2
        # A worker of the default queue runs the old waiting jobs.
        stats = await runner.drain(queues=["default"], concurrency=2, progress=False)
        assert stats.completed >= waiting and stats.failed == 0
        assert await one_value(
            v010_url, "SELECT count(*) FROM jobs WHERE status IN ('pending', 'retry') "
                      "AND run_at <= CURRENT_TIMESTAMP") == 0
        # The new tables work.
        a = await runner.enqueue("noop", {}, queue="video")
        b = await runner.enqueue("noop", {}, after=[a])
        await runner.set_limit("noop", 1)
        await runner.schedule("tick", "noop", every=60)
        assert (await runner.step(queues="default"))["processed"] is False, "b waits for a"
        assert (await runner.step(queues="video"))["job_id"] == str(a.id)
        assert (await runner.step())["job_id"] == str(b.id)
        assert len(await runner.schedules()) == 1 and await runner.limits() == {"noop": 1}
    finally:
        await runner.close()


# ---------------------------------------------------------------------------
# 0003: job progress and real video analysis
# ---------------------------------------------------------------------------
async def test_revision_0003_adds_progress_and_video_columns_keeping_every_row(
        backend: str, v010_url: str, tmp_path: Path) -> None:
    """A 0.1.0 database upgraded through 0003: old rows untouched (the new columns NULL),
    and a real analysis with progress and thumbnails works on it."""
    from jobkit.video import make_test_video

    cols, before = await snapshot(v010_url)
    handlers = {"cut_analysis": jobkit.DISPATCH_TABLE["cut_analysis"], "resize": ok,
                "flaky": ok, "noop": ok}
    async with await jobkit.open(v010_url, handlers=handlers, auto_migrate=True,
                                 progress_interval=0.0, **FAST) as runner:
        state = await schema.read_state(runner.engine)
        assert state.revision == schema.head_revision() and state.revision >= "0003"
        _, after = await snapshot(v010_url, cols)
        for table in ("jobs", "video_assets", "clips", "workers"):
            assert after[table] == before[table], table
        for table, new in (("jobs", "progress, progress_message, progress_at"),
                           ("video_assets", "width, height, fps"), ("clips", "thumbnail")):
            rows = await one_value(v010_url, f"SELECT COUNT(*) FROM {table} WHERE "
                                             + " OR ".join(f"{c} IS NOT NULL"
                                                           for c in new.split(", ")))
            assert rows == 0, f"{table}: {new} are NULL for the rows of 0.1.0"
        # The new columns in use on the upgraded database.
        v = make_test_video(tmp_path / "shots.mp4", [2.0, 2.0, 2.0])
        asset, job = await runner.upload_video(v.path, priority=1_000)  # runs first
        assert (asset.width, asset.height, asset.fps) == (160, 90, 25.0)
        summary = await runner.step()
        assert summary["job_id"] == str(job.id) and summary["status"] == "completed", summary
        assert summary["result"]["analysis"] == "frames"
        assert summary["result"]["scene_cuts_ms"] == [2000, 4000]
        assert (await runner.get_job(job.id)).progress == 1.0
        thumbs = await one_value(
            v010_url, f"SELECT COUNT(*) FROM clips WHERE thumbnail IS NOT NULL AND "
                      f"video_asset_id = '{asset.id if backend == 'postgresql' else asset.id.hex}'")
        assert thumbs == 3
