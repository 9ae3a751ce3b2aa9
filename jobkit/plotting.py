"""The old home of :mod:`jobkit.notebook.plots` (matplotlib figures of the monitoring
frames), kept so that ``from jobkit.plotting import plot_visual_scores`` goes on working:
the same objects, not copies."""

from __future__ import annotations

from .extras import require

require("jobkit.plotting", 'pandas', 'matplotlib')

from .notebook.plots import (
    JobkitFigure,
    plot_dependencies,
    plot_latency,
    plot_status_counts,
    plot_throughput,
    plot_visual_scores,
)

__all__ = ["JobkitFigure", "plot_dependencies", "plot_latency", "plot_status_counts",
           "plot_throughput", "plot_visual_scores"]
