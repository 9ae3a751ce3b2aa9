"""The HTTP API: the upload → process → get flow, job control, health and metrics.

Needs the ``api`` extra (``pip install -e '.[api]' (from the jobkit checkout)``). Build the app with
:func:`create_app` and run it with ``jobkit serve`` (uvicorn). Every route calls the
same functions a script would (:class:`jobkit.Runner`, :mod:`jobkit.queue`,
:mod:`jobkit.stats`) and answers in the shapes of :mod:`jobkit.shapes`, as the command line does.

Modules: :mod:`~jobkit.api.app` (``create_app``), the routers :mod:`~jobkit.api.upload`,
:mod:`~jobkit.api.jobs` and :mod:`~jobkit.api.health`, their :mod:`~jobkit.api.models`,
and what they share: :mod:`~jobkit.api.state`, :mod:`~jobkit.api.bodies` (size limits,
strict JSON), :mod:`~jobkit.api.errors` (error responses).
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import fastapi_offline  # noqa: F401
    import pydantic  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"jobkit.api needs the 'api' extra ({exc.name} is missing): "
        "pip install -e '.[api]' (from the jobkit checkout)") from exc

from .app import create_app
from .models import EnqueueIn, JobOut, UploadIn, UploadOut, check_filename
from .state import ApiState

__all__ = ["ApiState", "EnqueueIn", "JobOut", "UploadIn", "UploadOut", "check_filename",
           "create_app"]
