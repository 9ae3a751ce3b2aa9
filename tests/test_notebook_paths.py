"""The notebook layer's layout: the old module paths give the same objects as the new homes,
and importing the package (or its progress bars) loads neither pandas, matplotlib, ipywidgets
nor tqdm."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

OLD_TO_NEW = {
    "jobkit.monitoring": "jobkit.notebook.frames",
    "jobkit.plotting": "jobkit.notebook.plots",
    "jobkit.widgets": "jobkit.notebook.dashboard",
}


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_old_module_paths_give_the_same_objects(old: str) -> None:
    before, after = importlib.import_module(old), importlib.import_module(OLD_TO_NEW[old])
    assert before.__all__ == after.__all__
    public = [n for n in vars(before) if not n.startswith("_") and n != "annotations"
              and n != "require"]
    assert set(after.__all__) <= set(public)
    for name in public:
        assert getattr(before, name) is getattr(after, name), name


def test_the_notebook_package_loads_nothing_heavy() -> None:
    code = ("import sys, jobkit, jobkit.notebook, jobkit.notebook.progress\n"
            "heavy = {'pandas', 'matplotlib', 'ipywidgets', 'tqdm'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
