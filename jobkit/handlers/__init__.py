"""Built-in handlers."""

from .cut_analysis import run_cut_analysis

__all__ = ["run_cut_analysis"]
