"""Monitoring frames on both backends: known workloads, exact values, empty databases."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import update

import jobkit
from jobkit import queue
from jobkit.handlers.cut_analysis import visual_score
from jobkit.models import ALL_STATUSES, jobs_table, utcnow, workers_table
from jobkit.notebook import frames as monitoring

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
STATUSES = [s.value for s in ALL_STATUSES]


async def set_row(runner: jobkit.Runner, job_id: uuid.UUID, **values: Any) -> None:
    async with runner.sessions() as db:
        await db.execute(update(jobs_table).where(jobs_table.c.id == job_id).values(**values))
        await db.commit()


async def finished_job(runner: jobkit.Runner, job_type: str, status: str, *, created: datetime,
                       wait_ms: float, run_ms: float, error: str | None = None) -> uuid.UUID:
    """A job whose timestamps are exactly known."""
    job = await runner.enqueue(job_type, {}, allow_unknown=True)
    started = created + timedelta(milliseconds=wait_ms)
    await set_row(runner, job.id, status=status, created_at=created, run_at=created,
                  started_at=started, finished_at=started + timedelta(milliseconds=run_ms),
                  attempts=1, error=error)
    return job.id


@pytest.fixture
def workload(runner: jobkit.Runner) -> jobkit.Runner:
    @runner.handler("ok")
    async def ok(job: jobkit.Job, db: Any) -> dict[str, Any]:
        return {"n": job.params.get("n")}

    @runner.handler("boom")
    async def boom(job: jobkit.Job, db: Any) -> None:
        raise jobkit.PermanentError("bad input\nsecond line: the real cause")

    @runner.handler("again")
    async def again(job: jobkit.Job, db: Any) -> None:
        raise jobkit.Retry(delay=3600, reason="not yet")

    return runner


# ----------------------------------------------------------------------------------
# Empty database
# ----------------------------------------------------------------------------------
async def test_every_helper_gives_a_typed_empty_frame_on_an_empty_database(
        runner: jobkit.Runner) -> None:
    jobs = await runner.jobs()
    assert len(jobs) == 0
    assert list(jobs.columns) == ["id", "job_type", "status", "priority", "attempts",
                                  "max_attempts", "created_at", "run_at", "started_at",
                                  "finished_at", "wait_ms", "run_ms", "locked_by", "error",
                                  "params", "queue"]
    assert jobs["status"].dtype == monitoring.STATUS_DTYPE
    assert str(jobs["created_at"].dtype) == "datetime64[us, UTC]"
    assert jobs["attempts"].dtype == "int64" and jobs["run_ms"].dtype == "float64"

    counts = await runner.status_counts()
    assert list(counts.index) == STATUSES and counts.tolist() == [0] * 5
    assert counts.dtype == "int64" and counts.index.dtype == monitoring.STATUS_DTYPE

    depth = await runner.queue_depth()
    assert depth.to_dict() == {"eligible": 0, "scheduled": 0} and depth.dtype == "int64"

    failures = await runner.recent_failures()
    assert len(failures) == 0 and str(failures["finished_at"].dtype) == "datetime64[us, UTC]"

    stats = await runner.processing_stats()
    assert len(stats) == 0 and stats.index.name == "job_type"
    assert stats.dtypes.to_dict() == monitoring.STATS_COLUMNS

    tp = await runner.throughput()
    assert len(tp) == 0 and list(tp.columns) == ["completed", "failed"]
    assert isinstance(tp.index, pd.DatetimeIndex) and str(tp.index.tz) == "UTC"
    assert (tp.dtypes == "int64").all()

    clips = await runner.clips()
    assert len(clips) == 0 and "filename" in clips and clips["is_best"].dtype == bool

    workers = await runner.worker_health()
    assert len(workers) == 0 and workers["healthy"].dtype == bool
    assert workers["heartbeat_age_s"].dtype == "float64"


# ----------------------------------------------------------------------------------
# Counts and depth
# ----------------------------------------------------------------------------------
async def test_status_counts_and_queue_depth_of_a_known_workload(workload: jobkit.Runner) -> None:
    runner = workload
    for n in range(3):
        await runner.enqueue("ok", {"n": n}, allow_unknown=True)
    await runner.enqueue("boom", {}, allow_unknown=True)
    await runner.enqueue("ok", {"n": "later"}, delay=3600, allow_unknown=True)
    await runner.enqueue("again", {}, allow_unknown=True)
    outcomes = [(await runner.step())["status"] for _ in range(5)]
    assert outcomes == ["completed"] * 3 + ["failed", "retry"]
    assert (await runner.step())["processed"] is False

    counts = await runner.status_counts()
    assert counts.to_dict() == {"pending": 1, "processing": 0, "retry": 1, "completed": 3,
                                "failed": 1}
    assert (await runner.queue_depth()).to_dict() == {"eligible": 0, "scheduled": 2}

    await runner.enqueue("ok", {"n": 10}, allow_unknown=True)
    await runner.enqueue("ok", {"n": 11}, allow_unknown=True)
    async with runner.sessions() as db:
        claimed = await queue.claim_jobs(db, 1, worker_id="w-test")
    assert len(claimed) == 1
    counts = await runner.status_counts()
    assert counts["processing"] == 1 and counts["pending"] == 2
    assert (await runner.queue_depth()).to_dict() == {"eligible": 1, "scheduled": 2}


# ----------------------------------------------------------------------------------
# Jobs frame
# ----------------------------------------------------------------------------------
async def test_jobs_frame_wait_and_run_times_are_exact(runner: jobkit.Runner) -> None:
    a = await finished_job(runner, "t", "completed", created=T0, wait_ms=100, run_ms=250)
    b = await finished_job(runner, "t", "failed", created=T0 + timedelta(seconds=1),
                           wait_ms=5, run_ms=1.5, error="Traceback\n  x\nValueError: no")
    waiting = await runner.enqueue("t", {}, allow_unknown=True)
    jobs = await runner.jobs()
    assert jobs["id"].tolist() == [str(a), str(b), str(waiting.id)]
    assert jobs["wait_ms"].tolist()[:2] == [100.0, 5.0]
    assert jobs["run_ms"].tolist()[:2] == [250.0, 1.5]
    assert math.isnan(jobs["wait_ms"].iloc[2]) and math.isnan(jobs["run_ms"].iloc[2])
    assert jobs["error"].iloc[1] == "ValueError: no"
    assert jobs["status"].tolist() == ["completed", "failed", "pending"]
    assert jobs.loc[0, "created_at"] == pd.Timestamp(T0)


async def test_jobs_frame_filters(workload: jobkit.Runner) -> None:
    runner = workload
    ids = [(await runner.enqueue("ok", {"n": n}, allow_unknown=True)).id for n in range(4)]
    await runner.enqueue("boom", {}, allow_unknown=True)
    for _ in range(5):
        await runner.step()
    await runner.enqueue("ok", {"n": "new"}, allow_unknown=True)

    assert (await runner.jobs(status="failed"))["job_type"].tolist() == ["boom"]
    assert len(await runner.jobs(status=[jobkit.JobStatus.COMPLETED, "pending"])) == 5
    assert len(await runner.jobs(job_type="ok")) == 5
    assert len(await runner.jobs(job_type=["ok", "boom"])) == 6
    last_two = await runner.jobs(limit=2)
    assert last_two["job_type"].tolist() == ["boom", "ok"], "the 2 newest, oldest first"
    await set_row(runner, ids[0], created_at=utcnow() - timedelta(hours=2))
    assert len(await runner.jobs(since=timedelta(hours=1))) == 5
    assert len(await runner.jobs(since=utcnow() - timedelta(hours=3))) == 6

    with pytest.raises(ValueError, match="unknown status 'done'.*pending"):
        await runner.jobs(status="done")
    with pytest.raises(ValueError, match="naive"):
        await runner.jobs(since=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="limit must be a whole number >= 1"):
        await runner.jobs(limit=0)


# ----------------------------------------------------------------------------------
# Failures, stats, throughput
# ----------------------------------------------------------------------------------
async def test_recent_failures_newest_first_with_the_errors_last_line(
        runner: jobkit.Runner) -> None:
    for i in range(3):
        await finished_job(runner, f"f{i}", "failed", created=T0 + timedelta(minutes=i),
                           wait_ms=1, run_ms=1,
                           error=f"Traceback (most recent call last):\n  File 'x'\nOSError: disk {i}")
    await finished_job(runner, "fine", "completed", created=T0, wait_ms=1, run_ms=1)
    failures = await runner.recent_failures(limit=2)
    assert failures["job_type"].tolist() == ["f2", "f1"]
    assert failures["error"].tolist() == ["OSError: disk 2", "OSError: disk 1"]
    assert len(await runner.recent_failures()) == 3
    with pytest.raises(ValueError):
        await runner.recent_failures(limit=-1)


async def test_processing_stats_percentiles_computed_by_hand(runner: jobkit.Runner) -> None:
    for i, (wait, run) in enumerate([(100, 10), (200, 20), (300, 30), (400, 40)]):
        await finished_job(runner, "t", "completed", created=T0 + timedelta(seconds=i),
                           wait_ms=wait, run_ms=run)
    await finished_job(runner, "t", "failed", created=T0, wait_ms=1, run_ms=999)
    await finished_job(runner, "u", "failed", created=T0, wait_ms=1, run_ms=5)
    await runner.enqueue("t", {}, allow_unknown=True)  # waiting: not counted
    stats = await runner.processing_stats()
    assert stats.index.tolist() == ["t", "u"]
    t = stats.loc["t"]
    # Linear interpolation on [10, 20, 30, 40]: p50 = 25; p95 at rank 0.95*3 = 2.85 → 30 + 0.85*10.
    assert (t["count"], t["failed"]) == (4, 1)
    assert t["mean_ms"] == pytest.approx(25.0)
    assert t["p50_ms"] == pytest.approx(25.0)
    assert t["p95_ms"] == pytest.approx(38.5)
    assert t["max_ms"] == pytest.approx(40.0)
    assert t["mean_wait_ms"] == pytest.approx(250.0)
    u = stats.loc["u"]
    assert (u["count"], u["failed"]) == (0, 1) and math.isnan(u["mean_ms"])
    assert stats["count"].dtype == "int64"


async def test_throughput_buckets_with_zeros_between(runner: jobkit.Runner) -> None:
    for status, offset in [("completed", 10), ("completed", 50), ("failed", 90),
                           ("completed", 185)]:
        await finished_job(runner, "t", status, created=T0 + timedelta(seconds=offset - 1),
                           wait_ms=0, run_ms=1000)
    await runner.enqueue("t", {}, allow_unknown=True)  # not finished: not counted
    tp = await runner.throughput("1min")
    assert [t.strftime("%H:%M") for t in tp.index] == ["12:00", "12:01", "12:02", "12:03"]
    assert tp["completed"].tolist() == [2, 0, 0, 1]
    assert tp["failed"].tolist() == [0, 1, 0, 0]
    assert str(tp.index.dtype) == "datetime64[us, UTC]" and tp.index.name == "finished_at"

    half = await runner.throughput("30s")
    assert half.sum().to_dict() == {"completed": 3, "failed": 1}
    assert len(half) == 7  # 12:00:00 … 12:03:00 in 30 s steps
    assert half.loc[pd.Timestamp("2024-05-01 12:00:30", tz="UTC"), "completed"] == 1

    assert len(await runner.throughput(since=T0 + timedelta(minutes=2))) == 1
    with pytest.raises(ValueError, match="not a pandas frequency"):
        await runner.throughput("every minute")


# ----------------------------------------------------------------------------------
# Clips
# ----------------------------------------------------------------------------------
async def test_clips_frame_joins_filenames_and_marks_the_best(runner: jobkit.Runner) -> None:
    a, _ = await runner.upload_video("match.mp4", duration_ms=60_000)
    b, _ = await runner.upload_video("intro.mp4", duration_ms=30_000)
    await runner.drain(progress=False)
    clips = await runner.clips()
    assert clips["filename"].tolist() == ["match.mp4"] * 3 + ["intro.mp4"] * 2
    assert clips["clip_index"].tolist() == [0, 1, 2, 0, 1]
    assert list(zip(clips["start_ms"], clips["end_ms"], strict=True)) == [
        (0, 20_000), (20_000, 40_000), (40_000, 60_000), (0, 20_000), (20_000, 30_000)]
    expected = [visual_score("match.mp4", 60_000, i) for i in range(3)] + \
               [visual_score("intro.mp4", 30_000, i) for i in range(2)]
    assert clips["visual_score"].tolist() == pytest.approx(expected)
    for _filename, group in clips.groupby("filename"):
        assert group["is_best"].sum() == 1
        assert group.loc[group["is_best"], "visual_score"].item() == group["visual_score"].max()
    assert clips["video_duration_ms"].tolist() == [60_000] * 3 + [30_000] * 2

    only_b = await runner.clips(b.id)
    assert only_b["video_asset_id"].unique().tolist() == [str(b.id)] and len(only_b) == 2
    assert len(await runner.clips(str(a.id))) == 3
    with pytest.raises(ValueError, match="not a valid UUID"):
        await runner.clips("nope")


# ----------------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------------
async def test_worker_health_flags_running_stale_and_stopped_workers(
        runner: jobkit.Runner) -> None:
    now = utcnow()
    rows = [("fresh", "running", now), ("stale", "running", now - timedelta(hours=1)),
            ("gone", "stopped", now - timedelta(hours=1)), ("reaped", "dead", now)]
    async with runner.sessions() as db:
        for wid, state, beat in rows:
            await db.execute(workers_table.insert().values(
                id=wid, hostname="h", pid=1, concurrency=2, state=state, jobs_done=7,
                started_at=now - timedelta(hours=2), last_heartbeat_at=beat))
        await db.commit()
    job = await runner.enqueue("x", {}, allow_unknown=True)
    async with runner.sessions() as db:
        await queue.claim_jobs(db, 1, worker_id="fresh")
    health = (await runner.worker_health()).set_index("worker_id")
    # A worker that stopped cleanly is not in trouble, however old its last heartbeat.
    assert health["healthy"].to_dict() == {"fresh": True, "stale": False, "gone": True,
                                           "reaped": False}
    verdict = health["verdict"].to_dict()
    assert verdict["stale"].startswith("no heartbeat for 36") and verdict["stale"].endswith(" s")
    assert {k: verdict[k] for k in ("fresh", "gone", "reaped")} == {
        "fresh": "running", "gone": "stopped", "reaped": "dead"}
    assert health.loc["fresh", "running_jobs"] == 1 and health.loc["stale", "running_jobs"] == 0
    assert health.loc["stale", "heartbeat_age_s"] == pytest.approx(3600, abs=60)
    assert health.loc["fresh", "heartbeat_age_s"] < 60
    assert health["jobs_done"].tolist() == [7, 7, 7, 7]
    # A stricter threshold makes the fresh one unhealthy too; the stopped one stays fine.
    strict = (await runner.worker_health(dead_after=1e-6)).set_index("worker_id")
    assert strict["healthy"].to_dict() == {"fresh": False, "stale": False, "gone": True,
                                           "reaped": False}
    with pytest.raises(ValueError, match="dead_after"):
        await runner.worker_health(dead_after=0)
    assert job.id


async def test_worker_health_of_a_real_drain(runner: jobkit.Runner) -> None:
    for i in range(3):
        await runner.upload_video(f"v{i}.mp4", duration_ms=20_000)
    stats = await runner.drain(concurrency=2, progress=False)
    health = await runner.worker_health()
    assert len(health) == 1
    # It exited cleanly (the drain ended): healthy, with the verdict "stopped".
    assert health.loc[0, "state"] == "stopped" and health.loc[0, "healthy"]
    assert health.loc[0, "verdict"] == "stopped"
    assert health.loc[0, "jobs_done"] == stats.processed == 3


async def test_worker_health_degrades_gracefully_without_the_table(sqlite_url: str) -> None:
    engine = jobkit.create_engine(sqlite_url)  # no schema at all
    try:
        async with jobkit.database.make_sessionmaker(engine)() as db:
            frame = await monitoring.worker_health(db, dead_after=10)
        assert len(frame) == 0 and "healthy" in frame
    finally:
        await engine.dispose()


def test_pandas_is_imported_only_when_monitoring_is() -> None:
    code = ("import sys, jobkit; assert 'pandas' not in sys.modules, 'import jobkit loaded pandas';"
            "import jobkit.monitoring; assert 'pandas' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_clips_of_the_latest_videos_only(runner: jobkit.Runner) -> None:
    assets = []
    for i in range(5):
        asset, _ = await runner.upload_video(f"v{i}.mp4", duration_ms=40_000)
        assets.append(asset)
    await runner.upload_video("later.mp4", duration_ms=20_000)
    async with runner.sessions() as db:
        await db.execute(jobs_table.update().where(
            jobs_table.c.params["video_asset_id"].as_string() == str(assets[-1].id))
            .values(status="failed"))  # v4's job will not run: v4 stays without clips
        await db.commit()
    await runner.drain(progress=False)
    latest = await runner.clips(latest_videos=2)
    # v4 has no clips, so it is skipped: the latest two videos that have clips.
    assert list(dict.fromkeys(latest["filename"])) == ["v3.mp4", "later.mp4"]
    assert len(latest) == 3 and latest["is_best"].sum() == 2
    assert len(await runner.clips(latest_videos=100)) == len(await runner.clips()) == 9
    async with runner.sessions() as db:
        assert await monitoring.videos_with_clips(db) == 5
    with pytest.raises(ValueError, match="latest_videos"):
        await runner.clips(latest_videos=0)


async def test_counts_show_as_small_tables_in_a_notebook(runner: jobkit.Runner) -> None:
    from IPython.core.formatters import DisplayFormatter

    await runner.enqueue("x", {}, allow_unknown=True)
    await runner.enqueue("x", {}, delay=3600, allow_unknown=True)
    counts = await runner.status_counts()
    data, _ = DisplayFormatter().format(counts)
    html = data["text/html"]
    assert "jobs per status" in html and "background:#6c757d" in html  # a pending badge
    assert re.findall(r"title='(\w+)'[^>]*>(\d+)<", html) == [
        ("pending", "2"), ("processing", "0"), ("retry", "0"), ("completed", "0"),
        ("failed", "0")]
    assert data["text/plain"] == repr(pd.Series(counts))  # the text form is unchanged
    depth = await runner.queue_depth()
    assert re.findall(r"title='(\w+)'[^>]*>(\d+)<", depth._repr_html_()) == [
        ("eligible", "1"), ("scheduled", "1")]
    assert "jobs per queue" in depth._repr_html_()
    # Still a pandas Series; what is derived from it is a plain one.
    assert isinstance(counts, pd.Series) and int(counts.sum()) == 2
    assert type(counts + 1) is pd.Series and type(counts.loc[["pending"]]) is pd.Series
