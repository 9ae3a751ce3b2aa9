"""``runner.dashboard()``: an ipywidgets view of the queue with buttons that drive it (also
importable as ``jobkit.widgets``).

Button callbacks never block the kernel: each one starts a task on the running
event loop (the notebook's own) and returns at once. The buttons are toggle
buttons: the browser shows one pressed the moment it is clicked, even while the
kernel is busy with a cell, and it stays pressed until its action ends. While an
action runs, the other action buttons are disabled; its outcome, or its error, is
shown inside the widget. A Drain shows its progress and refreshes the counts while
it runs. Code can drive the same actions with ``await dash.step()``,
``await dash.run(10)``, ``await dash.drain()`` and ``await dash.refresh()``, and
wait for clicked actions with ``await dash.settled()``.

The dashboard keeps every task it starts (actions, the auto-refresh loop, a Drain's
live refresh) and stops its loops by telling them to stop, never by cancelling a
database call half-way. When its runner closes, it says so and disables itself.
"""

from __future__ import annotations

from ..extras import require

require("jobkit.notebook.dashboard", 'ipywidgets', 'pandas', 'matplotlib')

import asyncio
import contextlib
import html
import io
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..display import progress_table, stats_html, status_badge, summary_html

if TYPE_CHECKING:
    import pandas as pd

    from ..runner import Runner, StepSummary
    from ..worker import WorkerStats

__all__ = ["Dashboard"]

log = logging.getLogger("jobkit")

#: JupyterLab's theme variables (with light-theme fallbacks for other front ends), so the
#: message line is readable in the dark theme too.
TEXT_COLOUR = "var(--jp-ui-font-color1, #212529)"
ERROR_COLOUR = "var(--jp-error-color1, #dc3545)"


class ActionButton(widgets.ToggleButton):  # type: ignore[misc]  # ipywidgets is untyped
    """A button that the browser shows pressed at once and that stays pressed until its
    action ends (a ToggleButton: its pressed state lives in the browser, so a click gives
    feedback even while the kernel is busy with a cell and cannot answer yet)."""

    def __init__(self, on_press: Callable[[ActionButton], None], **kwargs: Any) -> None:
        super().__init__(value=False, **kwargs)
        self._on_press = on_press
        self.observe(self._changed, names="value")

    def click(self) -> None:
        """Do what a click does (from code): press it, or report it is still pressed."""
        pressed = bool(getattr(self, "value"))  # noqa: B009 - the trait is untyped
        if pressed:
            self._on_press(self)
        else:
            self.value = True

    def _changed(self, change: dict[str, Any]) -> None:
        self._on_press(self)


class Dashboard(widgets.VBox):  # type: ignore[misc]  # ipywidgets is untyped
    """Status counts, queue depth, the last step, the latest videos' clips, and buttons.

    Args:
        runner: the :class:`~jobkit.Runner` to show and drive.
        refresh_interval: seconds between refreshes while auto-refresh is on.
        drain_concurrency: jobs at once for the **Drain** button.
        max_videos: the clips plot shows this many of the latest videos, so the widget
            stays about one screen tall and quick to refresh whatever the table holds.
    """

    def __init__(self, runner: Runner, *, refresh_interval: float = 2.0,
                 drain_concurrency: int = 4, max_videos: int = 8) -> None:
        self._auto_gen = 0  # bumped to stop the auto-refresh loop of an older generation
        self._auto_wake: asyncio.Event | None = None
        if not refresh_interval > 0:
            raise ValueError(f"refresh_interval must be > 0 seconds, got {refresh_interval!r}")
        for name, value in (("drain_concurrency", drain_concurrency),
                            ("max_videos", max_videos)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        self.runner = runner
        self.refresh_interval = float(refresh_interval)
        self.drain_concurrency = drain_concurrency
        self.max_videos = max_videos
        self.counts: pd.Series | None = None
        self.depth: pd.Series | None = None
        self.videos = 0  # videos with clips, in all
        self.refreshes = 0
        self.auto_refreshes = 0  # of which made by the auto-refresh loop
        self.errors: list[str] = []
        self.busy: str | None = None
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()  # clicked actions
        self._loops: set[asyncio.Task[None]] = set()  # auto-refresh and live-refresh loops
        self._refreshed: asyncio.Condition | None = None
        self._clips_key: tuple[Any, ...] | None = None
        self._action_done: str | None = None
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

        from ..urls import redact_url

        self.title = widgets.HTML(
            f"<b>jobkit</b> <code>{html.escape(redact_url(runner.engine.url))}</code>")
        self.counts_html = widgets.HTML("<i>not loaded yet: press Refresh</i>")
        self.depth_html = widgets.HTML("")
        self.last_step_html = widgets.HTML(
            summary_html(runner.last_step, across=True) if runner.last_step else "<i>no step yet</i>")
        self.message = widgets.HTML("")
        self.message.add_class("jobkit-message")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="drain",
                                            bar_style="info",
                                            layout=widgets.Layout(display="none"))
        self.progress_text = widgets.HTML("")
        self.running_html = widgets.HTML("")  # a progress bar per running job
        self.clips_note = widgets.HTML("")
        self.clips_image = widgets.Image(format="png", layout=widgets.Layout(
            max_width="820px", display="none"))
        actions: list[tuple[str, str, str, str, Callable[[], Awaitable[str | None]]]] = [
            ("step", "Step", "play", "process one job", self._step_action),
            ("run 10", "Run 10", "forward", "process up to 10 jobs, one at a time",
             self._run10_action),
            ("drain", "Drain", "fast-forward", "process every eligible job", self._drain_action),
        ]
        self._actions: dict[int, tuple[str, Callable[[], Awaitable[str | None]]]] = {}
        made = []
        for label, text, icon, tip, action in actions:
            button = ActionButton(self._pressed, description=text, icon=icon, tooltip=tip)
            self._actions[id(button)] = (label, action)
            made.append(button)
        self.step_button, self.run10_button, self.drain_button = made
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh",
                                             tooltip="reload counts, depth and clips")
        self.auto_refresh = widgets.ToggleButton(
            value=False, description="Auto-refresh", icon="clock-o",
            tooltip=f"refresh every {self.refresh_interval:g} s")
        self.refresh_button.on_click(lambda _b: self._launch("refresh", self._refresh_action,
                                                             exclusive=False))
        self.auto_refresh.observe(self._on_auto, names="value")
        buttons = widgets.HBox([self.step_button, self.run10_button, self.drain_button,
                                self.refresh_button, self.auto_refresh])
        top = widgets.HBox([self.counts_html, self.depth_html],
                           layout=widgets.Layout(justify_content="space-between"))
        drain_row = widgets.HBox([self.progress, self.progress_text])
        super().__init__(children=[self.title, buttons, self.message, drain_row, top,
                                   self.running_html, self.last_step_html, self.clips_note,
                                   self.clips_image])
        self.add_class("jobkit-dashboard")
        runner.on_close(self._runner_closed)

    @property
    def action_buttons(self) -> list[ActionButton]:
        return [self.step_button, self.run10_button, self.drain_button]

    def __repr__(self) -> str:
        counts = ("" if self.counts is None else
                  " " + " ".join(f"{k}={int(v)}" for k, v in self.counts.items()))
        closed = " closed" if self.closed else ""
        return f"<Dashboard {self.runner.backend}{counts} refreshes={self.refreshes}{closed}>"

    # -- actions (awaitable from code; the buttons start them as tasks) ---------------------
    async def step(self) -> StepSummary:
        """Process one job, show its summary, refresh."""
        summary = await self.runner.step()
        self.last_step_html.value = summary_html(summary, across=True)
        await self.refresh()
        return summary

    async def run(self, n: int = 10) -> list[StepSummary]:
        """Process up to ``n`` jobs one at a time (stops early when the queue is empty)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a whole number >= 1, got {n!r}")
        done: list[StepSummary] = []
        for _ in range(n):
            summary = await self.runner.step()
            if not summary.get("processed"):
                break
            done.append(summary)
            self.last_step_html.value = summary_html(summary, across=True)
        if not done:
            self.last_step_html.value = "<i>No pending jobs in queue</i>"
        self._action_done = f"ran {len(done)} job{'s' if len(done) != 1 else ''}"
        await self.refresh()
        return done

    async def drain(self) -> WorkerStats:
        """Process every eligible job (``drain_concurrency`` at once), show the stats, refresh.

        While it runs, a progress bar counts the jobs done and the counts refresh every
        ``refresh_interval`` (at most every second).
        """
        depth = await self.runner.queue_depth()
        bar = self.progress
        bar.max, bar.value, bar.bar_style = max(1, int(depth["eligible"])), 0, "info"
        bar.layout.display = None
        self.progress_text.value = f"0/{int(depth['eligible'])}"

        def tick(_summary: dict[str, Any]) -> None:
            if bar.value + 1 > bar.max:  # a retry brought back a job already counted
                bar.max = bar.value + 1
            bar.value += 1
            self.progress_text.value = f"{bar.value}/{bar.max}"

        stop = asyncio.Event()
        live = self._track_loop(self._live_refresh(stop))
        worker = self.runner.worker(concurrency=self.drain_concurrency, burst=True, on_done=tick)
        try:
            stats = await worker.run()
        finally:
            stop.set()
            await asyncio.gather(live, return_exceptions=True)
        bar.bar_style = "success"
        self.last_step_html.value = stats_html(stats, across=True)
        self._action_done = f"drained {stats.processed} job{'s' if stats.processed != 1 else ''}"
        await self.refresh()
        return stats

    async def refresh(self) -> None:
        """Reload status counts, queue depth and the latest videos' clips from the database."""
        await self._refresh()

    async def settled(self) -> None:
        """Wait until every action started by a button click has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def wait_refreshed(self, count: int, timeout: float | None = 30.0) -> None:
        """Wait until the dashboard has refreshed ``count`` times in all (e.g. auto-refresh)."""
        cond = self._condition()
        async with asyncio.timeout(timeout), cond:
            await cond.wait_for(lambda: self.refreshes >= count)

    async def stopped(self) -> None:
        """Wait until no refresh loop (auto-refresh, a Drain's live refresh) is left running."""
        while self._loops:
            await asyncio.gather(*list(self._loops), return_exceptions=True)

    def close(self) -> None:
        """Stop auto-refresh and close the widgets."""
        self._stop_auto()
        runner = self.__dict__.get("runner")
        if runner is not None:
            runner.off_close(self._runner_closed)
        for name in ("title", "counts_html", "depth_html", "last_step_html", "message",
                     "progress", "progress_text", "running_html", "clips_note", "clips_image",
                     "step_button", "run10_button", "drain_button", "refresh_button",
                     "auto_refresh"):
            child = self.__dict__.get(name)  # absent when __init__ refused its arguments
            if child is not None:
                child.close()
        super().close()

    # -- the refresh ------------------------------------------------------------------------
    async def _refresh(self, live: Callable[[], bool] | None = None, *,
                       auto: bool = False, plot: bool = True) -> bool:
        """Read everything in one session, then publish it, unless ``live()`` turned false
        meanwhile (a loop that was told to stop shows and counts nothing more). ``plot``
        False leaves the clips plot as it is (a Drain's live refresh: counts, quickly)."""
        from .frames import (
            clips_frame,
            queue_counts,
            queue_depth,
            running_progress,
            status_counts,
            videos_with_clips,
        )

        clips: pd.DataFrame | None = None
        videos = self.videos
        async with self.runner._reading() as db:
            counts = await status_counts(db)
            per_queue = await queue_counts(db)
            depth = await queue_depth(db)
            running = await running_progress(db)
            if plot:
                clips = await clips_frame(db, latest_videos=self.max_videos)
                videos = await videos_with_clips(db)
        key = png = None
        if clips is not None:
            key = (videos, len(clips), tuple(clips["clip_id"].tail(1)))
            if key != self._clips_key and len(clips):
                png = await asyncio.to_thread(_render_clips, clips)
        if live is not None and not live():
            return False
        self.counts, self.depth, self.videos = counts, depth, videos
        self.counts_html.value = counts_table(counts, per_queue)
        self.depth_html.value = depth_table(depth)
        self.running_html.value = progress_table(running).markup if len(running) else ""
        if clips is not None and key != self._clips_key:
            self._clips_key = key
            shown = clips["video_asset_id"].nunique()
            self.clips_note.value = ("" if not videos else
                                     f"<small>clips of the latest {shown} of {videos} "
                                     f"video{'s' if videos != 1 else ''}</small>")
            if png is not None:
                self.clips_image.value = png
                self.clips_image.layout.display = None
            else:
                self.clips_image.layout.display = "none"
        self.refreshes += 1
        if auto:
            self.auto_refreshes += 1
        cond = self._condition()
        async with cond:
            cond.notify_all()
        return True

    async def _live_refresh(self, stop: asyncio.Event) -> None:
        """Refresh while a Drain runs, until ``stop`` is set (never cancelled mid-query)."""
        period = min(self.refresh_interval, 1.0)
        while not stop.is_set() and not self._is_closed():
            try:
                await self._refresh(lambda: not stop.is_set() and not self._is_closed(),
                                    plot=False)
            except Exception as exc:  # noqa: BLE001 - the Drain itself reports its errors
                log.debug("jobkit dashboard: live refresh failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await stop.wait()

    # -- auto-refresh -----------------------------------------------------------------------
    def _on_auto(self, change: dict[str, Any]) -> None:
        if change.get("new"):
            if self._is_closed():
                self.auto_refresh.value = False
                return
            loop = self._running_loop()
            if loop is None:
                self._say("auto-refresh needs a running event loop (Jupyter)", error=True)
                self.auto_refresh.value = False
                return
            self._auto_gen += 1
            self._track_loop(self._auto_loop(self._auto_gen), loop)
        else:
            self._stop_auto()

    def _stop_auto(self) -> None:
        """Stop the auto-refresh loop now: it publishes and counts nothing more, and it ends
        at its next await point (a refresh's query in flight finishes, unseen)."""
        self._auto_gen += 1
        if self._auto_wake is not None:
            self._auto_wake.set()

    def _auto_live(self, gen: int) -> bool:
        return gen == self._auto_gen and not self._is_closed()

    async def _auto_loop(self, gen: int) -> None:
        wake = self._auto_wake = asyncio.Event()
        while self._auto_live(gen):
            try:
                await self._refresh(lambda: self._auto_live(gen), auto=True)
            except Exception as exc:  # noqa: BLE001 - shown in the widget, then keep going
                if not self._auto_live(gen):
                    return  # stopped (or the runner closed) while the refresh ran
                self._report("auto-refresh", exc)
            if not self._auto_live(gen):
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_interval):
                    await wake.wait()  # set by _stop_auto: end at once, not after a period

    # -- the actions behind the buttons -----------------------------------------------------
    async def _step_action(self) -> str | None:
        summary = await self.step()
        return None if summary.get("processed") else "no pending jobs in queue"

    async def _run10_action(self) -> str | None:
        await self.run(10)
        return self._action_done

    async def _drain_action(self) -> str | None:
        await self.drain()
        return self._action_done

    async def _refresh_action(self) -> str | None:
        await self.refresh()
        return None

    # -- plumbing ---------------------------------------------------------------------------
    def _is_closed(self) -> bool:
        return self.closed or bool(getattr(self.runner, "closed", False))

    def _runner_closed(self) -> None:
        """The runner closed: stop every loop, disable the buttons, and say so."""
        if self.closed:
            return
        self.closed = True
        self._stop_auto()
        for button in [*self.action_buttons, self.refresh_button, self.auto_refresh]:
            button.disabled = True
        self.auto_refresh.value = False
        self._say("this runner is closed: open a new one (await jobkit.open(...)) and call "
                  "its dashboard()")

    def _condition(self) -> asyncio.Condition:
        if self._refreshed is None:
            self._refreshed = asyncio.Condition()
        return self._refreshed

    def _running_loop(self) -> asyncio.AbstractEventLoop | None:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            if self._loop is not None and self._loop.is_running():
                return self._loop
            return None

    def _track_loop(self, coro: Coroutine[Any, Any, None],
                    loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Task[None]:
        task = (loop or asyncio.get_running_loop()).create_task(coro)
        self._loops.add(task)
        task.add_done_callback(self._loops.discard)
        return task

    def _pressed(self, button: ActionButton) -> None:
        """An action button changed (a click in the browser, or ``click()`` from code)."""
        label, action = self._actions[id(button)]
        if self.busy == label:
            if button.value:
                self._say(f"{label} is still running")
            else:
                button.value = True  # clicked again while running: stays pressed until done
            return
        if not button.value:
            return  # released by _guard
        if self._launch(label, action, button=button) is None:
            button.value = False

    def _launch(self, label: str, action: Callable[[], Awaitable[str | None]], *,
                exclusive: bool = True,
                button: ActionButton | None = None) -> asyncio.Task[None] | None:
        """Start ``action`` as a task on the running loop; never blocks, never raises."""
        if self._is_closed():
            self._runner_closed()
            return None
        if exclusive and self.busy is not None:
            self._say(f"{self.busy} is still running: {label} was not started")
            return None
        loop = self._running_loop()
        if loop is None:
            self._say("no running event loop: use the dashboard in Jupyter, or create it "
                      "inside async code", error=True)
            return None
        if exclusive:
            self.busy = label
            for other in self.action_buttons:
                other.disabled = True
        self._say(f"{label}…")
        task = loop.create_task(self._guard(label, action, exclusive, button))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, label: str, action: Callable[[], Awaitable[str | None]],
                     exclusive: bool, button: ActionButton | None) -> None:
        self._action_done = None
        try:
            said = await action()
            self._say(said or f"{label}: done")
        except asyncio.CancelledError:
            self._say(f"{label}: cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 - shown in the widget, not lost
            if self._is_closed():
                self._runner_closed()
            else:
                self._report(label, exc)
        finally:
            if exclusive:
                self.busy = None
                for other in self.action_buttons:
                    other.disabled = self.closed
            if button is not None:
                button.value = False

    def _report(self, label: str, exc: BaseException) -> None:
        text = f"{label} failed: {type(exc).__name__}: {exc}"
        self.errors.append(text)
        log.warning("jobkit dashboard: %s", text)
        self._say(text, error=True)

    def _say(self, text: str, *, error: bool = False) -> None:
        colour = ERROR_COLOUR if error else TEXT_COLOUR
        self.message.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"


def counts_table(counts: pd.Series, per_queue: pd.DataFrame | None = None) -> str:
    """Status counts as an HTML table with coloured headers: one row, plus one row per
    queue when ``per_queue`` has more than one (or one not named "default")."""
    head = "".join(f"<th style='padding:0 8px'>{status_badge(s)}</th>" for s in counts.index)
    cells = "".join(f"<td title='{html.escape(str(s))}' style='text-align:center'>{int(n)}</td>"
                    for s, n in counts.items())
    rows = f"<tr><th></th>{head}</tr><tr><th style='text-align:left'>all</th>{cells}</tr>"
    if per_queue is not None and (len(per_queue) > 1 or list(per_queue.index) not in
                                  ([], ["default"])):
        for queue_name, row in per_queue.iterrows():
            q = html.escape(str(queue_name))
            rows += (f"<tr><th style='text-align:left;padding-right:6px'>{q}</th>" + "".join(
                f"<td title='{q} {html.escape(str(s))}' style='text-align:center'>"
                f"{int(row.get(str(s), 0))}</td>" for s in counts.index) + "</tr>")
    return (f"<table><caption style='text-align:left'><b>jobs per status</b></caption>"
            f"{rows}</table>")


def depth_table(depth: pd.Series) -> str:
    """Queue depth as a small HTML table."""
    rows = "".join(f"<tr><th style='text-align:left;padding-right:8px'>{html.escape(str(k))}</th>"
                   f"<td title='{html.escape(str(k))}'>{int(v)}</td></tr>"
                   for k, v in depth.items())
    return f"<table><caption style='text-align:left'><b>queue depth</b></caption>{rows}</table>"


def _render_clips(clips: pd.DataFrame) -> bytes:
    """The clips plot, with rows a little tighter than the standalone plot's."""
    from .plots import JobkitFigure, plot_visual_scores

    videos = clips["video_asset_id"].nunique()
    fig = JobkitFigure(figsize=(9.0, 0.36 * videos + 1.3), layout="constrained")
    plot_visual_scores(clips, ax=fig.add_subplot())
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # constrained layout already fits: no second, tight draw
    return buf.getvalue()
