"""The ``jobkit`` command line, through the real console script in a subprocess.

Each call costs ~0.6 s of interpreter start-up, so independent calls run in parallel
threads and the in-process checks (prune batches, retry-all) use the library directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import count_clips, count_jobs
from sqlalchemy import update

import jobkit
from jobkit import durations, queue
from jobkit.models import JobStatus, jobs_table, utcnow
from jobkit.video import make_test_video

JOBKIT_BIN = str(Path(sys.executable).parent / "jobkit")


def cli_env(**settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBKIT_")}
    env["JOBKIT_CUT_ANALYSIS_SECONDS"] = "0.01"
    env["JOBKIT_RETRY_BACKOFF_BASE"] = "0"
    env["JOBKIT_WORKER_POLL_INTERVAL"] = "0.2"
    for key, value in settings.items():
        env[f"JOBKIT_{key.upper()}"] = str(value)
    return env


def jk(*args: str, url: str | None = None, cwd: Path | None = None,
       env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [JOBKIT_BIN, *args]
    if url is not None:
        cmd += ["--database-url", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=env or cli_env(), cwd=cwd)


def jk_many(calls: Sequence[tuple[str, ...]], url: str | None,
            cwd: Path | None = None) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda a: jk(*a, url=url, cwd=cwd), calls))


def out_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert words.lower() in lines[0].lower(), lines[0]
    assert proc.stdout == ""


# ------------------------------------------------------------------------------------
# The full flow, on both backends
# ------------------------------------------------------------------------------------


def test_upload_step_show_status_flow(db_url: str, tmp_path: Path) -> None:
    video = tmp_path / "match.mp4"
    make_test_video(video, [2.0, 2.0, 2.0])  # three shots: three clips
    init = jk("init", url=db_url, cwd=tmp_path)
    assert init.returncode == 0 and "schema ready" in init.stdout, init.stderr

    up = out_json(jk("upload", str(video), "--json", url=db_url))  # duration probed
    assert up["status"] == "pending" and up["job_type"] == "cut_analysis"
    assert up["filename"] == "match.mp4" and up["duration_ms"] == 6000
    assert (up["width"], up["height"], up["fps"]) == (160, 90, 25.0)
    assert up["stored_path"] == str(video) and up["size_bytes"] == video.stat().st_size
    job_id = up["job_id"]

    before, named = jk_many([("show", job_id, "--json"),
                             ("upload", "interview.mp4", "--duration-ms", "41000", "--json")],
                            db_url)
    assert out_json(before)["status"] == "pending"
    assert out_json(named)["stored_path"] is None, "a bare name registers no file"

    step = jk("step", "--json", url=db_url)
    summary = out_json(step)
    assert summary["processed"] is True and summary["job_id"] == job_id
    assert summary["status"] == "completed" and summary["result"]["clips_created"] == 3
    assert summary["result"]["analysis"] == "frames"
    assert summary["result"]["scene_cuts_ms"] == [2000, 4000]
    assert f"Processing job {job_id} (type: cut_analysis)" in step.stderr
    assert f"Job {job_id} completed successfully in" in step.stderr

    show, show_text, status_after, jobs, explain = jk_many(
        [("show", job_id, "--json"), ("show", job_id), ("status", "--json"),
         ("jobs", "--status", "completed", "--json"), ("explain", job_id, "--json")], db_url)
    shown = out_json(show)
    assert shown["id"] == job_id and shown["status"] == "completed" and shown["attempts"] == 1
    assert shown["result"] == summary["result"]
    assert shown["processing_time_ms"] is not None
    assert f"job {job_id}" in show_text.stdout and "completed" in show_text.stdout
    after = out_json(status_after)
    assert after["jobs"] == {"pending": 1, "processing": 0, "retry": 0, "completed": 1,
                             "failed": 0}
    assert after["queue_depth"] == 1 and after["total"] == 2
    assert [j["id"] for j in out_json(jobs)] == [job_id]
    explained = out_json(explain)
    assert explained["job_id"] == job_id and explained["case"] == "completed"
    assert explained["summary"]

    # Bad arguments that need the database: unknown ids and refused transitions.
    unknown = str(uuid.uuid4())
    bad = jk_many([("show", unknown), ("show", "not-a-uuid"), ("cancel", unknown),
                   ("retry", job_id), ("cancel", job_id)], db_url)
    assert_one_line_error(bad[0], 4, f"no job with id {unknown}")
    assert_one_line_error(bad[1], 4, "no job with id not-a-uuid")
    assert_one_line_error(bad[2], 4, f"no job with id {unknown}")
    assert_one_line_error(bad[3], 1, "only failed or retry jobs can be retried")
    assert_one_line_error(bad[4], 1, "only pending, retry or processing jobs can be cancelled")
    assert out_json(jk("show", job_id, "--json", url=db_url))["status"] == "completed"


# ------------------------------------------------------------------------------------
# Bad arguments: one clear line on stderr, a meaningful exit code, nothing written
# ------------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (("enqueue", "cut_analysis", "--params", "{bad"), 2, "--params: is not valid JSON"),
    (("enqueue", "cut_analysis", "--params", "[1, 2]"), 2, "must be a JSON object"),
    (("enqueue", "no_such_type", "--params", "{}"), 2, "unknown job type 'no_such_type'"),
    (("enqueue", "cut_analysis", "--run-at", "2030-01-01T09:00"), 2, "has no time zone"),
    (("enqueue", "cut_analysis", "--run-at", "2030-01-01T09:00Z", "--delay", "5"), 2,
     "not allowed with argument --run-at"),
    (("enqueue", "cut_analysis", "--priority", "high"), 2, "--priority: must be a whole number"),
    (("jobs", "--status", "nope"), 2, "invalid choice: 'nope'"),
    (("jobs", "--limit", "0"), 2, "--limit: must be between 1"),
    (("upload", "clip.mp4", "--duration-ms", "abc"), 2, "must be a whole number of milliseconds"),
    (("upload", "clip.mp4", "--duration-ms", "-5"), 2, "must be between 1"),
    (("upload", "clip.mp4"), 2, "--duration-ms is required for 'clip.mp4', a bare name"),
    (("upload", "missing/dir/clip.mp4", "--duration-ms", "5"), 2, "no such file"),
    (("prune", "--older-than", "3 fortnights"), 2, "is not a duration"),
    (("prune", "--older-than", "1d", "--status", "pending"), 2, "never deleted"),
    (("prune",), 2, "required: --older-than"),
    (("retry",), 2, "give a job ID or --all-failed"),
    (("status", "--log-level", "LOUD"), 2, "invalid choice: 'LOUD'"),
    (("frobnicate",), 2, "invalid choice: 'frobnicate'"),
]


def test_bad_arguments_exit_codes_and_messages(sqlite_url: str, tmp_path: Path) -> None:
    assert jk("init", url=sqlite_url).returncode == 0
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    calls = [args if args[0] == "frobnicate" else (*args, "--database-url", sqlite_url)
             for args, _, _ in BAD_ARGUMENTS]
    results = jk_many(calls, None, cwd=cwd)
    for (args, code, words), proc in zip(BAD_ARGUMENTS, results, strict=True):
        assert proc.returncode == code, (args, proc.stderr)
        assert_one_line_error(proc, code, words)
    status = out_json(jk("status", "--json", url=sqlite_url))
    assert status["total"] == 0, "no bad call wrote anything"
    assert not (cwd / "jobkit.db").exists(), "no bad call created a default database"


def test_unreachable_or_missing_database(tmp_path: Path) -> None:
    missing = f"sqlite+aiosqlite:///{tmp_path / 'nothing-here.db'}"
    calls = [("status", "--database-url", "postgresql+asyncpg://u:secret@127.0.0.1:1/x"),
             ("show", str(uuid.uuid4()), "--database-url", missing),
             ("jobs", "--database-url", "mysql://localhost/db"),
             ("show", "x", "--database-url", missing, "--debug")]
    pg, sqlite_missing, scheme, debug = jk_many(calls, None, cwd=tmp_path)
    assert_one_line_error(pg, 5, "cannot reach the database")
    assert "secret" not in pg.stderr and "127.0.0.1:1" in pg.stderr
    assert_one_line_error(sqlite_missing, 5, "jobkit init")
    assert not (tmp_path / "nothing-here.db").exists(), "a read command creates no database"
    assert_one_line_error(scheme, 2, "sqlite+aiosqlite")
    assert debug.returncode == 5 and "Traceback" in debug.stderr, "--debug shows the traceback"


def test_database_without_jobkit_tables(tmp_path: Path) -> None:
    empty = tmp_path / "other.db"
    import sqlite3

    sqlite3.connect(empty).execute("CREATE TABLE unrelated (x)").connection.close()
    proc = jk("status", url=f"sqlite+aiosqlite:///{empty}")
    assert_one_line_error(proc, 5, "has no jobkit tables")


# ------------------------------------------------------------------------------------
# work, drain, retry, cancel, prune
# ------------------------------------------------------------------------------------


async def test_work_refuses_when_disabled_and_drains_with_force_burst(
        sqlite_url: str, tmp_path: Path) -> None:
    async with await jobkit.open(sqlite_url) as runner:
        jobs = [(await runner.upload_video(f"v{i}.mp4", duration_ms=40_000))[1] for i in range(3)]
    refused = jk("work", "--burst", url=sqlite_url, env=cli_env(worker_enabled="false"))
    assert_one_line_error(refused, 3, "the worker is disabled (JOBKIT_WORKER_ENABLED is false)")
    assert "--force" in refused.stderr
    async with await jobkit.open(sqlite_url) as runner:
        assert await count_jobs(runner, status=JobStatus.PENDING) == 3, "refused: nothing ran"

    done = jk("work", "--force", "--burst", "--concurrency", "2", "--json", url=sqlite_url,
              env=cli_env(worker_enabled="false"))
    stats = out_json(done)
    assert stats["completed"] == 3 and stats["failed"] == 0
    async with await jobkit.open(sqlite_url) as runner:
        for job in jobs:
            assert (await runner.get_job(job.id)).status is JobStatus.COMPLETED
        assert await count_clips(runner) == 6


async def test_drain_retry_all_failed_and_cancel(db_url: str) -> None:
    async with await jobkit.open(db_url) as runner:
        missing = {"video_asset_id": str(uuid.uuid4())}
        doomed = [await runner.enqueue("cut_analysis", missing) for _ in range(2)]
        waiting = await runner.enqueue("cut_analysis", missing, delay=3600)
        cancelled = await runner.enqueue("cut_analysis", missing, delay=3600)
        await runner.cancel(cancelled.id)
    drained, cancel = jk_many([("drain", "--concurrency", "2", "--json"),
                               ("cancel", str(waiting.id), "--json")], db_url)
    assert out_json(drained)["failed"] == 2
    assert out_json(cancel)["status"] == "failed"
    failed_now = out_json(jk("failed", "--json", url=db_url))
    assert {j["id"] for j in failed_now} == {str(j.id) for j in [*doomed, waiting, cancelled]}

    again = out_json(jk("retry", "--all-failed", "--json", url=db_url))
    assert again["retried"] == 2 and again["skipped_cancelled"] == 2
    assert set(again["job_ids"]) == {str(j.id) for j in doomed}
    async with await jobkit.open(db_url) as runner:
        for job in doomed:
            stored = await runner.get_job(job.id)
            assert stored.status is JobStatus.PENDING and stored.attempts == 0
        assert (await runner.get_job(waiting.id)).error == "cancelled"


async def test_prune_deletes_old_finished_jobs_in_batches_only(sqlite_url: str) -> None:
    async with await jobkit.open(sqlite_url, cut_analysis_seconds=0.0) as runner:
        for i in range(5):
            await runner.upload_video(f"old{i}.mp4", duration_ms=20_000)
        await runner.drain(progress=False)
        old_pending = await runner.enqueue("cut_analysis", {"video_asset_id": str(uuid.uuid4())},
                                           delay=3600)
        async with runner.sessions() as db:  # everything so far is two days old
            two_days_ago = utcnow() - timedelta(days=2)
            await db.execute(update(jobs_table).values(created_at=two_days_ago))
            await db.execute(update(jobs_table).where(jobs_table.c.finished_at.is_not(None))
                             .values(finished_at=two_days_ago))
            await db.commit()
        await runner.upload_video("fresh.mp4", duration_ms=20_000)
        await runner.step()
    dry = jk("prune", "--older-than", "1d", "--dry-run", "--json", url=sqlite_url)
    assert out_json(dry)["matched"] == 5
    real = jk("prune", "--older-than", "1d", "--batch-size", "2", "--json", url=sqlite_url)
    assert out_json(real)["deleted"] == 5
    async with await jobkit.open(sqlite_url) as runner:
        assert await count_jobs(runner) == 2, "the fresh job and the old pending one remain"
        assert (await runner.get_job(old_pending.id)).status is JobStatus.PENDING
        assert await count_clips(runner) == 6, "clips belong to their video and stay"


async def test_prune_never_touches_unfinished_jobs(runner: jobkit.Runner) -> None:
    waiting = await runner.enqueue("x", {}, allow_unknown=True)
    async with runner.sessions() as db:
        # Even an unfinished job with a finish time in the past stays.
        await db.execute(update(jobs_table).values(finished_at=utcnow() - timedelta(days=9)))
        await db.commit()
        assert await queue.prune(db, timedelta(days=1)) == 0
        with pytest.raises(jobkit.InvalidTransition, match="never deleted"):
            await queue.prune(db, timedelta(days=1), ["completed", "processing"])
    assert (await runner.get_job(waiting.id)).status is JobStatus.PENDING


def test_parse_duration() -> None:
    assert durations.parse_duration("1d12h") == timedelta(days=1, hours=12)
    assert durations.parse_duration("90s") == timedelta(seconds=90)
    assert durations.parse_duration("2w") == timedelta(weeks=2)
    for bad in ("", "3x", "d", "1d 2", "-5s", "inf", "90", "30"):
        with pytest.raises(ValueError):
            durations.parse_duration(bad)


# ------------------------------------------------------------------------------------
# Logging and entry points
# ------------------------------------------------------------------------------------


async def test_json_logs_and_python_dash_m(sqlite_url: str) -> None:
    async with await jobkit.open(sqlite_url) as runner:
        _, job = await runner.upload_video("log.mp4", duration_ms=20_000)
    proc = jk("step", "--log-format", "json", "--log-level", "info", url=sqlite_url)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    messages = [r["message"] for r in records]
    assert f"Processing job {job.id} (type: cut_analysis)" in messages
    assert all(r["logger"] == "jobkit" and r["level"] == "INFO" and r["time"] for r in records)
    quiet = jk("--log-level", "WARNING", "step", url=sqlite_url)
    assert quiet.returncode == 0 and quiet.stderr == "" and "No pending jobs" in quiet.stdout
    module = subprocess.run([sys.executable, "-m", "jobkit", "show", str(job.id),
                             "--database-url", sqlite_url, "--json"],
                            capture_output=True, text=True, timeout=60, env=cli_env())
    assert out_json(module)["status"] == "completed"
