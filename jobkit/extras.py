"""Optional dependencies: a missing one is an ImportError that names the extra to install."""

from __future__ import annotations

import importlib.util

EXTRAS = {"pandas": "notebook", "matplotlib": "notebook", "ipywidgets": "notebook",
          "tqdm": "notebook", "fastapi": "api", "uvicorn": "api", "multipart": "api"}


def require(module: str, *packages: str) -> None:
    """Raise a helpful ImportError if any of ``packages`` is not installed."""
    missing = [p for p in packages if not _installed(p)]
    if missing:
        extra = EXTRAS.get(missing[0], "notebook")
        raise ImportError(
            f"{module} needs {', '.join(missing)}: install jobkit's {extra!r} extra, "
            f"e.g. pip install -e '.[{extra}]' from the jobkit checkout")


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # ValueError: blocked in sys.modules
        return False
