"""jobkit: a persistent, database-backed job queue that feels at home in a notebook."""

from .config import Settings
from .database import create_engine, get_db, init_schema
from .dispatcher import DISPATCH_TABLE, dispatch_job, handler, register_handler, run_blocking
from .errors import (
    ConfigError,
    DatabaseURLError,
    HandlerExistsError,
    InvalidHandler,
    InvalidParams,
    InvalidResult,
    InvalidTransition,
    JobkitError,
    JobNotFound,
    PermanentError,
    Retry,
    UnknownJobType,
)
from .models import ACTIVE, ELIGIBLE, TERMINAL, Clip, Job, JobStatus, VideoAsset
from .progress import report_progress
from .queue import claim_jobs, dequeue_job, enqueue, enqueue_many
from .runner import Runner, StepSummary, open
from .schedules import ScheduleNotFound, periodic
from .sync import SyncRunner, connect_sync
from .worker import Worker, WorkerStats, process_single_job, worker_loop

__version__ = "0.1.0"

__all__ = [
    "ACTIVE", "ELIGIBLE", "TERMINAL", "DISPATCH_TABLE",
    "Clip", "ConfigError", "DatabaseURLError", "HandlerExistsError", "InvalidHandler",
    "InvalidParams", "InvalidResult",
    "InvalidTransition", "Job", "JobNotFound", "JobStatus", "JobkitError", "PermanentError",
    "Retry", "Runner", "ScheduleNotFound", "Settings", "StepSummary", "SyncRunner",
    "UnknownJobType", "VideoAsset", "Worker", "WorkerStats",
    "claim_jobs", "connect_sync", "create_engine", "dequeue_job", "dispatch_job", "enqueue", "enqueue_many",
    "get_db", "handler", "init_schema", "open", "periodic", "process_single_job",
    "register_handler", "report_progress",
    "run_blocking", "worker_loop",
]
