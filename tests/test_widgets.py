"""The dashboard: buttons clicked in a running loop change the database and the display."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import count_jobs

import jobkit
from jobkit.widgets import Dashboard


def shown(html: str) -> dict[str, int]:
    """The counts displayed in a counts/depth table, by their title."""
    return {k: int(v) for k, v in re.findall(r"title='([a-z]+)'[^>]*>(\d+)<", html)}


async def test_step_button_processes_one_job_and_updates_the_counts(
        runner: jobkit.Runner) -> None:
    for i in range(3):
        await runner.upload_video(f"v{i}.mp4", duration_ms=20_000)
    dash = runner.dashboard()
    dash.step_button.click()
    await dash.settled()
    assert await count_jobs(runner, status="completed") == 1
    assert shown(dash.counts_html.value)["completed"] == 1
    assert shown(dash.counts_html.value)["pending"] == 2
    assert shown(dash.depth_html.value) == {"eligible": 2, "scheduled": 0}
    assert "completed" in dash.last_step_html.value
    assert bytes(dash.clips_image.value).startswith(b"\x89PNG")
    assert not any(b.disabled for b in dash.action_buttons)
    assert dash.errors == []
    dash.close()


async def test_run10_and_drain_buttons(runner: jobkit.Runner) -> None:
    for i in range(13):
        await runner.enqueue("cut_analysis", {"video_asset_id": str(uuid.uuid4())}) if i == 0 else \
            await runner.upload_video(f"v{i}.mp4", duration_ms=20_000)
    dash = runner.dashboard()
    dash.run10_button.click()
    await dash.settled()
    counts = shown(dash.counts_html.value)
    assert counts["completed"] + counts["failed"] == 10 and counts["pending"] == 3
    assert counts["failed"] == 1, "the bad job fails for good (permanent error)"
    assert "ran 10 jobs" in dash.message.value
    dash.drain_button.click()
    await dash.settled()
    assert shown(dash.counts_html.value) == {"pending": 0, "processing": 0, "retry": 0,
                                             "completed": 12, "failed": 1}
    assert await count_jobs(runner, status="completed") == 12
    assert "drained 3 jobs" in dash.message.value and "Drain" in dash.last_step_html.value
    dash.close()


async def test_refresh_button_shows_jobs_enqueued_elsewhere(runner: jobkit.Runner) -> None:
    dash = runner.dashboard()
    await dash.refresh()
    assert shown(dash.counts_html.value)["pending"] == 0
    await runner.enqueue("x", {}, allow_unknown=True)
    await runner.enqueue("x", {}, delay=3600, allow_unknown=True)
    dash.refresh_button.click()
    await dash.settled()
    assert shown(dash.counts_html.value)["pending"] == 2
    assert shown(dash.depth_html.value) == {"eligible": 1, "scheduled": 1}
    dash.close()


async def test_a_second_click_while_busy_is_refused_and_nothing_blocks(
        runner: jobkit.Runner) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @runner.handler("gate")
    async def gate(job: jobkit.Job, db: Any) -> dict[str, Any]:
        started.set()
        await release.wait()
        return {}

    await runner.enqueue("gate", {}, allow_unknown=True)
    await runner.enqueue("gate", {}, allow_unknown=True)
    dash = runner.dashboard()
    dash.step_button.click()  # returns at once: the step runs as a task
    await started.wait()
    assert dash.busy == "step" and all(b.disabled for b in dash.action_buttons)
    dash.step_button.click()
    assert "busy" in dash.message.value
    release.set()
    await dash.settled()
    assert await count_jobs(runner, status="completed") == 1
    assert await count_jobs(runner, status="pending") == 1
    assert dash.busy is None and not any(b.disabled for b in dash.action_buttons)
    dash.close()


async def test_errors_are_shown_inside_the_widget(runner: jobkit.Runner,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken() -> None:
        raise RuntimeError("database on fire")

    dash = runner.dashboard()
    monkeypatch.setattr(dash.runner, "step", broken)
    dash.step_button.click()
    await dash.settled()
    assert dash.errors == ["step failed: RuntimeError: database on fire"]
    assert "database on fire" in dash.message.value and "#dc3545" in dash.message.value
    assert not any(b.disabled for b in dash.action_buttons)
    dash.close()


async def test_auto_refresh_runs_on_the_loop_until_toggled_off(runner: jobkit.Runner) -> None:
    dash = runner.dashboard(refresh_interval=0.01)
    dash.auto_refresh.value = True
    await dash.wait_refreshed(1)
    await runner.enqueue("x", {}, allow_unknown=True)
    target = dash.refreshes + 2  # a refresh that started after the enqueue
    await dash.wait_refreshed(target)
    assert shown(dash.counts_html.value)["pending"] == 1
    task = dash._auto_task
    assert task is not None and not task.done()
    dash.auto_refresh.value = False
    assert dash._auto_task is None
    with pytest.raises(asyncio.CancelledError):
        await task
    dash.close()


def test_clicking_without_a_running_loop_reports_instead_of_raising(tmp_path: Path) -> None:
    runner = asyncio.run(jobkit.open(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"))
    try:
        dash = Dashboard(runner)
        dash.step_button.click()
        assert "no running event loop" in dash.message.value
        dash.auto_refresh.value = True
        assert dash.auto_refresh.value is False and "running event loop" in dash.message.value
        dash.close()
    finally:
        asyncio.run(runner.close())


def test_bad_arguments_get_clear_errors(tmp_path: Path) -> None:
    runner = asyncio.run(jobkit.open(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"))
    try:
        with pytest.raises(ValueError, match="refresh_interval"):
            Dashboard(runner, refresh_interval=0)
        with pytest.raises(ValueError, match="drain_concurrency"):
            Dashboard(runner, drain_concurrency=0)
    finally:
        asyncio.run(runner.close())


async def test_drain_progress_bar_is_silent_when_asked_and_grows_with_retries(
        runner: jobkit.Runner, capsys: pytest.CaptureFixture[str]) -> None:
    from jobkit.display import progress_bar

    assert progress_bar(3, False) is None
    assert progress_bar(3, None) is None, "outside Jupyter the default is no bar"
    for i in range(2):
        await runner.upload_video(f"v{i}.mp4", duration_ms=20_000)
    await runner.drain(progress=False)
    assert capsys.readouterr().err == ""

    attempts: list[int] = []

    @runner.handler("twice")
    async def twice(job: jobkit.Job, db: Any) -> dict[str, Any]:
        attempts.append(job.attempts)
        if job.attempts == 1:
            raise RuntimeError("first attempt fails")
        return {}

    await runner.enqueue("twice", {}, allow_unknown=True)
    stats = await runner.drain(progress=True)
    err = capsys.readouterr().err
    assert stats.processed == 2 and attempts == [1, 2]
    assert "drain" in err and "2/2" in err, "the total grew from 1 to 2 with the retry"

    bar = progress_bar(1, True)
    assert bar is not None
    bar.update(1)
    bar.update(1)
    assert repr(bar) == "<ProgressBar 2/2>"
    bar.close()
