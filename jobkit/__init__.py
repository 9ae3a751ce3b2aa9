"""jobkit: a persistent, database-backed job queue that feels at home in a notebook.

The names below are the public API: open a :class:`Runner` with :func:`open` (or
:func:`connect_sync` outside asyncio), register handlers with :func:`handler`, and catch
the errors listed here. Everything else lives in its module (``jobkit.queue``,
``jobkit.dispatcher``, ``jobkit.worker``, ``jobkit.database``, ``jobkit.stats``, …);
ARCHITECTURE.md maps them.
"""

from typing import Any

from .blocking import run_blocking
from .config import Settings
from .dispatcher import handler, register_handler
from .errors import (
    ConfigError,
    DatabaseURLError,
    InvalidParams,
    InvalidTransition,
    JobkitError,
    JobNotFound,
    PermanentError,
    Retry,
    UnknownJobType,
)
from .models import Job, JobStatus
from .progress import report_progress
from .runner import Runner, open
from .schedules import ScheduleNotFound, periodic
from .sync import SyncRunner, connect_sync
from .version import __version__
from .worker import Worker, WorkerStats

__all__ = [
    "ConfigError", "DatabaseURLError", "InvalidParams", "InvalidTransition", "Job",
    "JobNotFound", "JobStatus", "JobkitError", "PermanentError", "Retry", "Runner",
    "ScheduleNotFound", "Settings", "SyncRunner", "UnknownJobType", "Worker", "WorkerStats",
    "__version__", "connect_sync", "handler", "open", "periodic", "register_handler",
    "report_progress", "run_blocking",
]

#: Names that ``import jobkit`` offered before the public API was narrowed: still reachable
#: as ``jobkit.<name>`` so existing code keeps running, but documented in their own modules.
_MOVED = {
    "ACTIVE": "models", "ELIGIBLE": "models", "TERMINAL": "models", "Clip": "models",
    "VideoAsset": "models", "DISPATCH_TABLE": "dispatcher", "dispatch_job": "dispatcher",
    "HandlerExistsError": "errors", "InvalidHandler": "errors", "InvalidResult": "errors",
    "create_engine": "database", "get_db": "database", "init_schema": "database",
    "claim_jobs": "queue", "dequeue_job": "queue", "enqueue": "queue", "enqueue_many": "queue",
    "StepSummary": "runner", "process_single_job": "worker", "worker_loop": "worker",
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'jobkit' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"jobkit.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_MOVED})
