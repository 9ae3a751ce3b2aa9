"""The worker's log says what happened: no false takeovers, the true retry interval of the
heartbeat, and a warning naming the job when a handler blocks the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

import jobkit
from jobkit import queue


async def _noop(job: Any, db: Any) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {}


async def test_no_lease_lost_for_jobs_that_finished(db_url: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A heartbeat running between a job's completion and its task's end used to log
    "lease lost; cancelling this attempt" for jobs completed on their first attempt."""
    caplog.set_level(logging.INFO, logger="jobkit")
    async with await jobkit.open(db_url, handlers={"noop": _noop}, lease_seconds=0.3,
                                 heartbeat_seconds=0.001) as runner:
        await runner.enqueue_many([("noop", {"i": i}) for i in range(300)])
        stats = await runner.drain(concurrency=10, progress=False)
        counts = await runner.status_counts()
    assert stats.completed == 300 and counts["completed"] == 300
    assert stats.lost == 0
    lost = [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()]
    assert not lost, lost[:3]


async def test_heartbeat_failure_logs_its_real_retry_interval(
        db_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING, logger="jobkit")
    calls: list[float] = []
    third = asyncio.Event()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        if len(calls) >= 3:
            third.set()
        raise OperationalError("UPDATE jobs", {}, Exception("database went away"))

    async with await jobkit.open(db_url, handlers={"noop": _noop},
                                 heartbeat_seconds=0.05) as runner:
        worker = runner.worker(concurrency=1)
        monkeypatch.setattr(queue, "extend_leases", broken)
        task = asyncio.ensure_future(worker.run())
        await asyncio.wait_for(third.wait(), 10)
        worker.stop()
        await task
    said = [r.getMessage() for r in caplog.records if "could not heartbeat" in r.getMessage()]
    assert said and all("retrying in 0.1s" in m for m in said), said  # 0.05 s, as printed
    assert not any("retrying in 0.2s" in m or "retrying in 0.4s" in m for m in said)
    # It really retried at the heartbeat interval, not at a growing backoff.
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert max(gaps) < 1.0, gaps


async def test_blocking_handler_is_named_in_a_warning(db_url: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="jobkit")

    async def blocks(job: Any, db: Any) -> dict[str, Any]:
        time.sleep(0.7)  # noqa: ASYNC251 - the mistake this warning is for
        return {}

    async def polite(job: Any, db: Any) -> dict[str, Any]:
        await jobkit.run_blocking(time.sleep, 0.7)
        return {}

    async with await jobkit.open(db_url, handlers={"blocks": blocks, "polite": polite}) as runner:
        bad = await runner.enqueue("blocks")
        good = await runner.enqueue("polite")
        stats = await runner.drain(concurrency=2, progress=False)
    assert stats.completed == 2
    warnings = [r.getMessage() for r in caplog.records if "blocked the event loop" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert str(bad.id) in warnings[0] and "blocks" in warnings[0]
    assert "jobkit.run_blocking" in warnings[0]
    assert str(good.id) not in warnings[0]
