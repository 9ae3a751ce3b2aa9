"""``runner.dashboard()``: an ipywidgets view of the queue with buttons that drive it.

Button callbacks never block the kernel: each one starts a task on the running
event loop (the notebook's own) and returns at once. While an action runs, the
action buttons are disabled; its outcome, or its error, is shown inside the
widget. Code can drive the same actions with ``await dash.step()``,
``await dash.run(10)``, ``await dash.drain()`` and ``await dash.refresh()``, and
wait for clicked actions with ``await dash.settled()``.
"""

from __future__ import annotations

from .extras import require

require("jobkit.widgets", 'ipywidgets', 'pandas', 'matplotlib')

import asyncio
import html
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from .display import STATUS_COLOURS, progress_table, stats_html, status_badge, summary_html

if TYPE_CHECKING:
    import pandas as pd

    from .runner import Runner, StepSummary
    from .worker import WorkerStats

__all__ = ["Dashboard"]

log = logging.getLogger("jobkit")


class Dashboard(widgets.VBox):  # type: ignore[misc]  # ipywidgets is untyped
    """Status counts, queue depth, the last step, the latest clips plot, and buttons.

    Args:
        runner: the :class:`~jobkit.Runner` to show and drive.
        refresh_interval: seconds between refreshes while auto-refresh is on.
        drain_concurrency: jobs at once for the **Drain** button.
    """

    def __init__(self, runner: Runner, *, refresh_interval: float = 2.0,
                 drain_concurrency: int = 4) -> None:
        self._auto_task: asyncio.Task[None] | None = None
        if not refresh_interval > 0:
            raise ValueError(f"refresh_interval must be > 0 seconds, got {refresh_interval!r}")
        if isinstance(drain_concurrency, bool) or not isinstance(drain_concurrency, int) \
                or drain_concurrency < 1:
            raise ValueError(f"drain_concurrency must be a whole number >= 1, "
                             f"got {drain_concurrency!r}")
        self.runner = runner
        self.refresh_interval = float(refresh_interval)
        self.drain_concurrency = drain_concurrency
        self.counts: pd.Series | None = None
        self.depth: pd.Series | None = None
        self.refreshes = 0
        self.errors: list[str] = []
        self.busy: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refreshed: asyncio.Condition | None = None
        self._clips_key: tuple[Any, ...] | None = None
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

        from .database import redact_url

        self.title = widgets.HTML(
            f"<b>jobkit</b> <code>{html.escape(redact_url(runner.engine.url))}</code>")
        self.counts_html = widgets.HTML("<i>not loaded yet: press Refresh</i>")
        self.depth_html = widgets.HTML("")
        self.last_step_html = widgets.HTML(
            summary_html(runner.last_step) if runner.last_step else "<i>no step yet</i>")
        self.message = widgets.HTML("")
        self.running_html = widgets.HTML("")  # a progress bar per running job
        self.clips_image = widgets.Image(format="png", layout=widgets.Layout(max_width="820px"))
        self.step_button = widgets.Button(description="Step", icon="play",
                                          tooltip="process one job")
        self.run10_button = widgets.Button(description="Run 10", icon="forward",
                                           tooltip="process up to 10 jobs, one at a time")
        self.drain_button = widgets.Button(description="Drain", icon="fast-forward",
                                           tooltip="process every eligible job")
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh",
                                             tooltip="reload counts, depth and clips")
        self.auto_refresh = widgets.ToggleButton(
            value=False, description="Auto-refresh", icon="clock-o",
            tooltip=f"refresh every {self.refresh_interval:g} s")
        self.step_button.on_click(lambda _b: self._launch("step", self.step))
        self.run10_button.on_click(lambda _b: self._launch("run 10", lambda: self.run(10)))
        self.drain_button.on_click(lambda _b: self._launch("drain", self.drain))
        self.refresh_button.on_click(lambda _b: self._launch("refresh", self.refresh,
                                                             exclusive=False))
        self.auto_refresh.observe(self._on_auto, names="value")
        buttons = widgets.HBox([self.step_button, self.run10_button, self.drain_button,
                                self.refresh_button, self.auto_refresh])
        top = widgets.HBox([self.counts_html, self.depth_html],
                           layout=widgets.Layout(justify_content="space-between"))
        super().__init__(children=[self.title, buttons, self.message, top,
                                   self.running_html, self.last_step_html, self.clips_image])

    @property
    def action_buttons(self) -> list[widgets.Button]:
        return [self.step_button, self.run10_button, self.drain_button]

    def __repr__(self) -> str:
        counts = ("" if self.counts is None else
                  " " + " ".join(f"{k}={int(v)}" for k, v in self.counts.items()))
        return f"<Dashboard {self.runner.backend}{counts} refreshes={self.refreshes}>"

    # -- actions (awaitable from code; the buttons start them as tasks) ---------------------
    async def step(self) -> StepSummary:
        """Process one job, show its summary, refresh."""
        summary = await self.runner.step()
        self.last_step_html.value = summary_html(summary)
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
            self.last_step_html.value = summary_html(summary)
        if not done:
            self.last_step_html.value = "<i>No pending jobs in queue</i>"
        self._say(f"ran {len(done)} job{'s' if len(done) != 1 else ''}")
        await self.refresh()
        return done

    async def drain(self) -> WorkerStats:
        """Process every eligible job (``drain_concurrency`` at once), show the stats, refresh."""
        stats = await self.runner.drain(self.drain_concurrency, progress=False)
        self.last_step_html.value = stats_html(stats)
        self._say(f"drained {stats.processed} job{'s' if stats.processed != 1 else ''}")
        await self.refresh()
        return stats

    async def refresh(self) -> None:
        """Reload status counts, queue depth and the clips plot from the database."""
        counts = await self.runner.status_counts()
        per_queue = await self.runner.status_counts(by_queue=True)
        depth = await self.runner.queue_depth()
        clips = await self.runner.clips()
        running = await self.runner.running_progress()
        self.counts, self.depth = counts, depth
        self.running_html.value = progress_table(running).markup if len(running) else ""
        self.counts_html.value = counts_table(counts, per_queue)
        self.depth_html.value = depth_table(depth)
        key = (len(clips), tuple(clips["clip_id"].tail(1)))
        if key != self._clips_key:
            self._clips_key = key
            if len(clips):
                self.clips_image.value = await asyncio.to_thread(_render_clips, clips)
                self.clips_image.layout.display = None
            else:
                self.clips_image.layout.display = "none"
        self.refreshes += 1
        cond = self._condition()
        async with cond:
            cond.notify_all()

    async def settled(self) -> None:
        """Wait until every action started by a button click has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def wait_refreshed(self, count: int, timeout: float | None = 30.0) -> None:
        """Wait until the dashboard has refreshed ``count`` times in all (e.g. auto-refresh)."""
        cond = self._condition()
        async with asyncio.timeout(timeout), cond:
            await cond.wait_for(lambda: self.refreshes >= count)

    def close(self) -> None:
        """Stop auto-refresh and close the widgets."""
        self._stop_auto()
        for name in ("title", "counts_html", "depth_html", "last_step_html", "message",
                     "clips_image", "step_button", "run10_button", "drain_button",
                     "refresh_button", "auto_refresh"):
            child = self.__dict__.get(name)  # absent when __init__ refused its arguments
            if child is not None:
                child.close()
        super().close()

    # -- plumbing ---------------------------------------------------------------------------
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

    def _launch(self, label: str, action: Callable[[], Awaitable[Any]], *,
                exclusive: bool = True) -> asyncio.Task[None] | None:
        """Start ``action`` as a task on the running loop; never blocks, never raises."""
        if exclusive and self.busy is not None:
            self._say(f"busy: {self.busy} is still running", error=True)
            return None
        loop = self._running_loop()
        if loop is None:
            self._say("no running event loop: use the dashboard in Jupyter, or create it "
                      "inside async code", error=True)
            return None
        if exclusive:
            self.busy = label
            for button in self.action_buttons:
                button.disabled = True
        self._say(f"{label}…")
        task = loop.create_task(self._guard(label, action, exclusive))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, label: str, action: Callable[[], Awaitable[Any]],
                     exclusive: bool) -> None:
        try:
            await action()
            if self.message.value.endswith(f"{html.escape(label)}…</span>"):
                self._say(f"{label}: done")
        except asyncio.CancelledError:
            self._say(f"{label}: cancelled", error=True)
            raise
        except Exception as exc:  # noqa: BLE001 - shown in the widget, not lost
            self._report(label, exc)
        finally:
            if exclusive:
                self.busy = None
                for button in self.action_buttons:
                    button.disabled = False

    def _report(self, label: str, exc: BaseException) -> None:
        text = f"{label} failed: {type(exc).__name__}: {exc}"
        self.errors.append(text)
        log.warning("jobkit dashboard: %s", text)
        self._say(text, error=True)

    def _say(self, text: str, *, error: bool = False) -> None:
        colour = STATUS_COLOURS["failed"] if error else "#495057"
        self.message.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

    def _on_auto(self, change: dict[str, Any]) -> None:
        if change.get("new"):
            loop = self._running_loop()
            if loop is None:
                self._say("auto-refresh needs a running event loop (Jupyter)", error=True)
                self.auto_refresh.value = False
                return
            if self._auto_task is None or self._auto_task.done():
                self._auto_task = loop.create_task(self._auto_loop())
        else:
            self._stop_auto()

    def _stop_auto(self) -> None:
        if getattr(self, "_auto_task", None) is not None:
            assert self._auto_task is not None
            self._auto_task.cancel()
            self._auto_task = None

    async def _auto_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep refreshing; show the error
                self._report("auto-refresh", exc)
            await asyncio.sleep(self.refresh_interval)  # the refresh period itself


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
    from .plotting import JobkitFigure, plot_visual_scores

    fig = plot_visual_scores(clips)
    assert isinstance(fig, JobkitFigure)
    return fig._repr_png_()
