"""Periodic jobs: each tick enqueued once however many workers run, no burst after downtime."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_worker import start_worker, stop, wait_until

import jobkit
from jobkit import schedules
from jobkit.errors import InvalidTransition
from jobkit.models import jobs_table, workers_table

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_due_ticks_every() -> None:
    # Watching all along: every tick since the last one, even when checked late.
    assert schedules.due_ticks(None, 1.0, s(0), s(-100), s(3.5)) == [s(1), s(2), s(3)]
    assert schedules.due_ticks(None, 1.0, s(3), s(-100), s(3.9)) == []
    # Downtime: ticks 1..9 passed before this scheduler started at 9.5: only the latest.
    assert schedules.due_ticks(None, 1.0, s(0), s(9.5), s(9.6)) == [s(9)]
    # ... and the ticks after it started, all of them.
    assert schedules.due_ticks(None, 1.0, s(0), s(9.5), s(11.2)) == [s(9), s(10), s(11)]
    # However late, at most MAX_CATCH_UP per check.
    many = schedules.due_ticks(None, 1.0, s(0), s(-1), s(1000))
    assert len(many) == schedules.MAX_CATCH_UP and many[-1] == s(1000)


def test_due_ticks_cron() -> None:
    assert schedules.due_ticks("*/5 * * * *", None, s(0), s(-1), s(11 * 60)) == [
        s(300), s(600)]
    # Down for a day: one job, the latest tick.
    assert schedules.due_ticks("*/5 * * * *", None, s(0), s(86400 + 1), s(86400 + 2)) == [
        s(86400)]
    assert schedules.next_tick("0 * * * *", None, s(1)) == s(3600)
    assert schedules.latest_tick("0 * * * *", None, s(3599)) == s(0)


async def test_schedule_validation_pause_resume_remove(runner: jobkit.Runner) -> None:
    with pytest.raises(InvalidTransition, match="exactly one"):
        await runner.schedule("x", "noop", cron="* * * * *", every=5)
    with pytest.raises(InvalidTransition, match=r"cron '\* \* \*' is not a valid cron expression"):
        await runner.schedule("x", "noop", cron="* * *")
    with pytest.raises(InvalidTransition, match="every must be a positive"):
        await runner.schedule("x", "noop", every=timedelta(seconds=-1))
    with pytest.raises(jobkit.InvalidParams):
        await runner.schedule("x", "noop", {"bad": object()}, every=5)

    made = await runner.schedule("nightly", "noop", {"k": 1}, cron="0 3 * * *", queue="ops")
    assert made["next_tick_at"].hour == 3 and made["queue"] == "ops"
    again = await runner.schedule("nightly", "noop", {"k": 1}, cron="0 3 * * *", queue="ops")
    assert again["created_at"] == made["created_at"], "the same definition changes nothing"
    changed = await runner.schedule("nightly", "noop", {"k": 2}, every=60)
    assert changed["params"] == {"k": 2} and changed["every_seconds"] == 60.0
    assert changed["cron"] is None and changed["queue"] is None

    assert (await runner.pause_schedule("nightly"))["paused"] is True
    frame = await runner.schedules()
    assert frame["name"].tolist() == ["nightly"] and frame["paused"].tolist() == [True]
    assert frame["timing"].tolist() == ["every 60 s"]
    resumed = await runner.resume_schedule("nightly")
    assert resumed["paused"] is False and resumed["next_tick_at"] > jobkit.models.utcnow()
    await runner.remove_schedule("nightly")
    with pytest.raises(schedules.ScheduleNotFound, match="no schedule named 'nightly'"):
        await runner.remove_schedule("nightly")
    assert len(await runner.schedules()) == 0


async def test_periodic_in_code_is_stored_and_fires_in_process(runner: jobkit.Runner,
                                                               handlers: dict) -> None:
    fired: list[str] = []

    async def heartbeat(job: jobkit.Job, db: Any) -> dict[str, Any]:
        fired.append(job.dedupe_key or "")
        return {}

    spec_name = "heartbeat_test"
    try:
        # Declared in code; its handler goes to this test's private table.
        jobkit.periodic(every=0.5, name=spec_name, params={"p": 1})(heartbeat)
        handlers[spec_name] = jobkit.DISPATCH_TABLE.pop(spec_name)
        worker = runner.worker(concurrency=2)
        task = asyncio.create_task(worker.run())
        try:
            await wait_until(lambda: len(fired) >= 2, timeout=20, what="two ticks to fire")
        finally:
            worker.stop()
            await task
    finally:
        schedules.PERIODIC.pop(spec_name, None)
    stored = await runner.schedules()
    assert stored["name"].tolist() == [spec_name]
    assert all(k.startswith(f"schedule:{spec_name}:") for k in fired)
    assert len(set(fired)) == len(fired), "each tick once"

    # Paused without a restart: no new tick is enqueued.
    await runner.pause_schedule(spec_name)
    before = len(await runner.jobs())
    worker = runner.worker(concurrency=2)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(1.2)  # the experiment: two ticks' worth of a paused schedule
    finally:
        worker.stop()
        await task
    assert len(await runner.jobs()) == before


def _tick(key: str) -> datetime:
    return datetime.fromisoformat(key.split(":", 2)[2])


async def _ticks(runner: jobkit.Runner, name: str) -> list[datetime]:
    async with runner.sessions() as db:
        keys = (await db.execute(select(jobs_table.c.dedupe_key).where(
            jobs_table.c.dedupe_key.like(f"schedule:{name}:%")))).scalars().all()
    return sorted(_tick(k) for k in keys)


async def _live_workers(runner: jobkit.Runner) -> int:
    async with runner.sessions() as db:
        rows = (await db.execute(select(workers_table.c.id).where(
            workers_table.c.state == "running"))).all()
    return len(rows)


def _consecutive(ticks: list[datetime]) -> bool:
    return all(b - a == timedelta(seconds=1) for a, b in zip(ticks, ticks[1:], strict=False))


@pytest.mark.slow
async def test_every_second_three_processes_exactly_once_then_one_catch_up(
        db_url: str, runner: jobkit.Runner, tmp_path: Path) -> None:
    await runner.schedule("tick", "noop", {"from": "schedule"}, every=timedelta(seconds=1))
    procs = [start_worker(db_url, tmp_path / f"w{i}.log", "--concurrency", "2")
             for i in range(3)]
    try:
        await wait_until(lambda: _enough(runner, 3), timeout=60, what="all three workers up")
        await asyncio.sleep(10)  # the experiment: ten seconds of ticks, three schedulers
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0, 0, 0], [(tmp_path / f"w{i}.log").read_text() for i in range(3)]
    first = await _ticks(runner, "tick")
    print(f"while 3 workers ran: {len(first)} jobs, ticks {first[0]:%S}..{first[-1]:%S}")
    assert len(first) == len(set(first)), "no tick enqueued twice"
    assert _consecutive(first), f"no tick missed: {[f'{t:%S.%f}' for t in first]}"
    assert len(first) >= 9

    stopped_after = first[-1]
    await asyncio.sleep(10)  # the experiment: ten seconds without any worker
    restart = start_worker(db_url, tmp_path / "again.log", "--concurrency", "2")
    try:
        async def three_new() -> bool:
            return len([t for t in await _ticks(runner, "tick") if t > stopped_after]) >= 3

        await wait_until(three_new, timeout=60, what="the restarted worker's ticks")
    finally:
        assert stop(restart) == 0
    new = [t for t in await _ticks(runner, "tick") if t > stopped_after]
    print(f"after 10 s down: first new tick {(new[0] - stopped_after).total_seconds():g} s "
          f"after the last one, then {len(new) - 1} more")
    assert len(new) == len(set(new))
    assert _consecutive(new), "one catch-up job, then every tick"
    assert (new[0] - stopped_after) >= timedelta(seconds=9), \
        "the catch-up is the latest missed tick: ten missed ticks made one job, not ten"


async def _enough(runner: jobkit.Runner, n: int) -> bool:
    return await _live_workers(runner) >= n


def test_tick_key_is_stable() -> None:
    assert schedules.tick_key("a", s(1)) == "schedule:a:2030-01-01T12:00:01+00:00"
    assert _tick(schedules.tick_key("a", s(1))) == s(1)


async def test_schedule_checks_params_like_enqueue(runner: jobkit.Runner) -> None:
    with pytest.raises(jobkit.InvalidParams, match="video_asset_id"):
        await runner.schedule("bad", "cut_analysis", {}, every=60)
    assert len(await runner.schedules()) == 0
