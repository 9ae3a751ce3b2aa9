"""The old home of :mod:`jobkit.notebook.dashboard` (``runner.dashboard()``, ipywidgets),
kept so that ``from jobkit.widgets import Dashboard`` goes on working: the same objects,
not copies."""

from __future__ import annotations

from .extras import require

require("jobkit.widgets", 'ipywidgets', 'pandas', 'matplotlib')

from .notebook.dashboard import ERROR_COLOUR as ERROR_COLOUR
from .notebook.dashboard import TEXT_COLOUR as TEXT_COLOUR
from .notebook.dashboard import ActionButton as ActionButton
from .notebook.dashboard import Dashboard
from .notebook.dashboard import counts_table as counts_table
from .notebook.dashboard import depth_table as depth_table

__all__ = ["Dashboard"]
