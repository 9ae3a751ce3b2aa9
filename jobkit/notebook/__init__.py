"""The notebook layer: what jobkit shows in Jupyter, on top of the queue.

- :mod:`jobkit.notebook.frames`: pandas frames over the tables (``runner.jobs()`` …);
  also importable as ``jobkit.monitoring``.
- :mod:`jobkit.notebook.plots`: matplotlib figures of those frames; also ``jobkit.plotting``.
- :mod:`jobkit.notebook.dashboard`: ``runner.dashboard()`` (ipywidgets); also ``jobkit.widgets``.
- :mod:`jobkit.notebook.progress`: the tqdm bars of ``runner.drain`` and ``runner.watch``.

The plain HTML views (``_repr_html_`` of jobs, summaries, the runner) are
:mod:`jobkit.display`, a foundation module. Nothing is imported here: ``import jobkit``
must not load pandas, matplotlib or ipywidgets, so each module is imported only where it is
used (the Runner's methods import theirs when called).
"""
