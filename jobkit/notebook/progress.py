"""Progress bars (tqdm: a widget in Jupyter, text in a terminal) for ``runner.drain`` and
``runner.watch``. tqdm is imported only when a bar is made."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..display import rate_text
from ..errors import last_line

if TYPE_CHECKING:
    from ..models import Job
    from ..worker import WorkerStats

__all__ = ["BAR_FORMAT", "JobProgressBar", "ProgressBar", "job_progress_bar", "progress_bar"]


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


#: The drain bar shows its own rate in the same words and by the same formula as the Drain
#: table (jobs done / seconds since the drain began), not tqdm's smoothed rate, which
#: disagreed 3-4x with the table on small drains.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


class ProgressBar:
    """A tqdm bar whose total grows when retries bring back jobs already counted.

    In a notebook the bar is a widget shown with a display id, and :meth:`close`
    updates that display, so the saved notebook's text version of the bar is its final
    state (``100%``), not the ``0%`` it had when it was first shown.
    """

    def __init__(self, bar: Any, handle: Any = None) -> None:
        self.bar = bar
        self.handle = handle
        self.started = time.perf_counter()

    def update(self, n: int = 1) -> None:
        bar = self.bar
        if bar.total is not None and bar.n + n > bar.total:
            bar.total = bar.n + n
            container = getattr(bar, "container", None)  # the notebook widget's own max
            if container is not None:
                container.children[1].max = bar.total
        bar.set_postfix_str(rate_text(bar.n + n, time.perf_counter() - self.started),
                            refresh=False)
        bar.update(n)

    def finish(self, stats: WorkerStats) -> None:
        """Show the drain's own figures (the Drain table's rate) and close."""
        self.bar.set_postfix_str(rate_text(stats.processed, stats.elapsed), refresh=False)
        self.close()

    def close(self) -> None:
        self.bar.close()
        if self.handle is not None:
            self.handle.update(self.bar.container)

    def __repr__(self) -> str:
        return f"<ProgressBar {self.bar.n}/{self.bar.total}>"


class JobProgressBar:
    """A tqdm bar from 0 to 100 % that follows one job's ``progress`` (``runner.watch``)."""

    def __init__(self, bar: Any, label: str) -> None:
        self.bar = bar
        self.label = label

    def show(self, job: Job) -> None:
        bar = self.bar
        fraction = 1.0 if str(job.status) == "completed" else (job.progress or 0.0)
        n = int(round(fraction * 100))
        if n != bar.n:
            bar.n = n
        what = str(job.status)
        if job.progress_message and what == "processing":
            what = job.progress_message
        elif job.error and what in ("failed", "retry"):
            what = f"{what}: {last_line(job.error)}"
        bar.set_description_str(f"{self.label} {what[:80]}", refresh=False)
        bar.refresh()

    def close(self) -> None:
        self.bar.close()

    def __repr__(self) -> str:
        return f"<JobProgressBar {self.bar.n}%>"


def job_progress_bar(job: Job, enabled: bool | None) -> JobProgressBar | None:
    """A bar for ``runner.watch`` (a widget in Jupyter, text in a terminal), or None."""
    if enabled is None:
        enabled = _in_notebook()
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    label = f"{job.job_type} {str(job.id)[:8]}:"
    return JobProgressBar(tqdm(total=100, desc=label, leave=True,
                               bar_format="{percentage:3.0f}%|{bar}| {desc}"), label)


def progress_bar(total: int, enabled: bool | None) -> ProgressBar | None:
    """A tqdm bar (a widget in Jupyter, text in a terminal), or None when off/unavailable.

    ``enabled=None`` means "only in a notebook"; ``False`` is silent.
    """
    notebook = _in_notebook()
    if enabled is None:
        enabled = notebook
    if not enabled:
        return None
    options: dict[str, Any] = {"total": total, "unit": "job", "desc": "drain", "leave": True,
                               "bar_format": BAR_FORMAT}
    try:
        if notebook:
            from IPython.display import display
            from tqdm.notebook import tqdm as notebook_tqdm

            bar = notebook_tqdm(display=False, **options)
            return ProgressBar(bar, display(bar.container, display_id=True))  # type: ignore[no-untyped-call]
        from tqdm import tqdm
    except ImportError:
        return None
    return ProgressBar(tqdm(**options))
