"""The dashboard: buttons clicked in a running loop change the database and the display."""

from __future__ import annotations

import asyncio
import io
import random
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import count_jobs

import jobkit
from jobkit.notebook.dashboard import Dashboard


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
    assert dash.step_button.value is True, "pressed until its step ends"
    dash.step_button.click()
    assert "step is still running" in dash.message.value
    dash.run10_button.click()
    assert "run 10 was not started" in dash.message.value
    assert dash.run10_button.value is False, "a refused click does not stay pressed"
    release.set()
    await dash.settled()
    assert await count_jobs(runner, status="completed") == 1
    assert await count_jobs(runner, status="pending") == 1
    assert dash.busy is None and not any(b.disabled for b in dash.action_buttons)
    # The notes about the running step are gone once it ended (no stale "busy" line).
    assert "running" not in dash.message.value and "not started" not in dash.message.value
    assert "step: done" in dash.message.value
    assert dash.step_button.value is False, "released when its step ended"
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
    assert len(dash._loops) == 1 and dash.auto_refreshes >= 2
    dash.auto_refresh.value = False
    at_off = dash.auto_refreshes, dash.refreshes
    await dash.stopped()  # the loop ends by itself: it is told to stop, not cancelled
    assert not dash._loops
    assert (dash.auto_refreshes, dash.refreshes) == at_off
    assert dash.errors == []
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
    from jobkit.display import rate_text, stats_html
    from jobkit.notebook.progress import progress_bar

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
    # The bar's final rate is the Drain table's (same words, same formula), not tqdm's
    # smoothed estimate, which read 3-4x off on small drains.
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("drain: 100%") and final.endswith(
        f", {rate_text(stats.processed, stats.elapsed)}]"), final
    assert rate_text(stats.processed, stats.elapsed) in stats_html(stats)

    bar = progress_bar(1, True)
    assert bar is not None
    bar.update(1)
    bar.update(1)
    assert repr(bar) == "<ProgressBar 2/2>"
    bar.close()


async def wait_auto_refreshes(dash: Dashboard, count: int) -> None:
    cond = dash._condition()
    async with asyncio.timeout(30), cond:
        await cond.wait_for(lambda: dash.auto_refreshes >= count)


async def test_auto_refresh_toggled_40_times_during_a_drain_stops_the_moment_it_is_off(
        runner: jobkit.Runner) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @runner.handler("nap")
    async def nap(job: jobkit.Job, db: Any) -> dict[str, Any]:
        started.set()
        await release.wait()
        return {}

    await runner.enqueue_many([("nap", {}) for _ in range(8)])
    dash = runner.dashboard(refresh_interval=0.01)
    dash.drain_button.click()
    await started.wait()
    rng = random.Random(40)
    after_off = 0
    for i in range(40):
        dash.auto_refresh.value = True
        if i % 4 == 0:  # until a refresh of this loop has been shown
            await wait_auto_refreshes(dash, dash.auto_refreshes + 1)
        else:  # a few loop turns: off lands before, during or after a refresh's queries
            for _ in range(rng.randint(0, 15)):
                await asyncio.sleep(0)
        dash.auto_refresh.value = False
        at_off = dash.auto_refreshes
        for _ in range(rng.randint(0, 15)):
            await asyncio.sleep(0)
        after_off += dash.auto_refreshes - at_off
    assert after_off == 0
    assert dash.auto_refreshes >= 10 and dash.busy == "drain"
    at_off = dash.auto_refreshes
    release.set()
    await dash.settled()
    await dash.stopped()  # every loop the dashboard started has ended by itself
    assert not dash._loops and not dash._tasks
    assert dash.auto_refreshes == at_off, "no auto-refresh after the last toggle off"
    assert dash.errors == []
    assert shown(dash.counts_html.value)["completed"] == 8
    assert "drained 8 jobs" in dash.message.value
    dash.close()


async def test_a_closed_runner_disables_its_dashboard_and_stops_its_loop(
        runner: jobkit.Runner) -> None:
    await runner.upload_video("v.mp4", duration_ms=20_000)
    dash = runner.dashboard(refresh_interval=0.01)
    dash.auto_refresh.value = True
    await wait_auto_refreshes(dash, 2)
    await runner.close()
    assert dash.closed and dash.auto_refresh.value is False
    assert all(b.disabled for b in [*dash.action_buttons, dash.refresh_button,
                                    dash.auto_refresh])
    assert "runner is closed" in dash.message.value
    await dash.stopped()
    refreshes = dash.refreshes
    dash.step_button.click()  # a click from code still cannot reach the closed runner
    dash.auto_refresh.value = True
    await dash.settled()
    await dash.stopped()
    assert dash.refreshes == refreshes and dash.errors == []
    assert dash.step_button.value is False and dash.auto_refresh.value is False
    assert "runner is closed" in dash.message.value
    # A dashboard opened on a closed runner says so at once.
    late = runner.dashboard()
    assert late.closed and late.step_button.disabled
    late.close()
    dash.close()


async def test_drain_shows_progress_and_live_counts_while_it_runs(
        runner: jobkit.Runner) -> None:
    reached, release = asyncio.Event(), asyncio.Event()

    @runner.handler("gated")
    async def gated(job: jobkit.Job, db: Any) -> dict[str, Any]:
        if job.params["n"] >= 3:
            reached.set()
            await release.wait()
        return {}

    await runner.enqueue_many([("gated", {"n": n}) for n in range(6)])
    dash = runner.dashboard(refresh_interval=0.01, drain_concurrency=1)
    three_stored = asyncio.Event()  # the bar counts a job once its outcome is stored
    dash.progress.observe(lambda change: change["new"] == 3 and three_stored.set(),
                          names="value")
    await dash.refresh()
    dash.drain_button.click()
    await reached.wait()
    # A finished job's slot frees before its completion is committed (the completion
    # batcher), so job 3 may start while 1 and 2 are still being stored: wait for them,
    # then for a live refresh that began afterwards (the one in flight may not see them).
    await three_stored.wait()
    await dash.wait_refreshed(dash.refreshes + 2)  # live refreshes, during the drain
    assert dash.busy == "drain"
    assert dash.progress.layout.display is None and dash.progress.max == 6
    assert dash.progress.value == 3 and dash.progress_text.value == "3/6"
    counts = shown(dash.counts_html.value)
    assert counts["completed"] == 3 and counts["processing"] == 1, counts
    release.set()
    await dash.settled()
    assert dash.progress.value == 6 and dash.progress.bar_style == "success"
    assert shown(dash.counts_html.value)["completed"] == 6
    await dash.stopped()
    assert dash.errors == []
    dash.close()


async def test_the_message_line_uses_the_theme_colours(runner: jobkit.Runner,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    dash = runner.dashboard()
    dash.refresh_button.click()
    await dash.settled()
    assert "var(--jp-ui-font-color1" in dash.message.value
    assert "jobkit-message" in dash.message._dom_classes
    assert "jobkit-dashboard" in dash._dom_classes

    async def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(dash.runner, "step", broken)
    dash.step_button.click()
    await dash.settled()
    assert "var(--jp-error-color1" in dash.message.value
    every = " ".join(str(w.value) for w in (dash.message, dash.counts_html, dash.depth_html,
                                             dash.last_step_html, dash.clips_note))
    assert "#495057" not in every, "no fixed grey text that vanishes on a dark theme"
    dash.close()


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size


async def test_the_dashboard_stays_one_screen_tall_from_20_to_400_videos(
        sqlite_url: str) -> None:
    runner = await jobkit.open(sqlite_url, cut_analysis_seconds=0.0)
    try:
        dash = runner.dashboard()
        seen: dict[int, tuple[tuple[int, int], int, int]] = {}
        for target in (20, 400):
            for i in range(dash.videos, target):
                await runner.upload_video(f"video_{i:03d}_{'x' * (i % 7)}.mp4",
                                          duration_ms=20_000 * (i % 5 + 1))
            await runner.drain(concurrency=8, progress=False)
            await dash.step()  # a step (nothing left) and its refresh, as the button does
            png = bytes(dash.clips_image.value)
            seen[target] = (png_size(png), len(png), len(dash.counts_html.value))
            assert dash.videos == target
            assert f"latest 8 of {target} videos" in dash.clips_note.value
        (size20, bytes20, html20), (size400, bytes400, html400) = seen[20], seen[400]
        assert size400[1] == size20[1], "same height: the latest 8 videos, whatever the total"
        assert size400[1] <= 700 and size400[0] <= 1000, size400
        assert bytes400 < 150_000 and bytes400 < 1.5 * bytes20
        assert abs(html400 - html20) <= 5, "the counts table does not grow either"
        dash.close()
    finally:
        await runner.close()


def test_committed_notebooks_show_each_drain_bar_in_its_final_state() -> None:
    """The text form of a drain bar saved in a notebook is its end state, not ``0%``."""
    import json

    found = 0
    for path in sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            for out in cell.get("outputs", []):
                text = "".join(out.get("data", {}).get("text/plain", []))
                if text.startswith("drain:"):
                    found += 1
                    assert text.startswith("drain: 100%"), (path.name, text)
    assert found >= 2


async def test_a_cancelled_action_is_a_cancellation_not_an_error(runner: jobkit.Runner) -> None:
    started = asyncio.Event()

    @runner.handler("forever")
    async def forever(job: jobkit.Job, db: Any) -> dict[str, Any]:
        started.set()
        await asyncio.Event().wait()
        return {}

    await runner.enqueue("forever", {})
    dash = runner.dashboard()
    dash.step_button.click()
    await started.wait()
    (task,) = dash._tasks
    task.cancel()
    await dash.settled()
    assert task.cancelled(), "the CancelledError propagated out of the action's task"
    assert dash.errors == [] and "step: cancelled" in dash.message.value
    assert "var(--jp-error-color1" not in dash.message.value
    assert dash.busy is None and dash.step_button.value is False
    assert not any(b.disabled for b in dash.action_buttons)
    assert await count_jobs(runner, status="pending") == 1, "the job went back to the queue"
    started.clear()
    dash.step_button.click()  # and the dashboard still works
    await started.wait()
    for task in dash._tasks:
        task.cancel()
    await dash.settled()
    assert dash.errors == []
    dash.close()
