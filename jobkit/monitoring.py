"""The old home of :mod:`jobkit.notebook.frames` (pandas frames over jobkit's tables), kept
so that ``from jobkit.monitoring import jobs_frame`` and ``jobkit.monitoring.X`` go on
working: the same objects, not copies."""

from __future__ import annotations

from .extras import require

require("jobkit.monitoring", 'pandas')

from .notebook.frames import CLIPS_SCHEMA as CLIPS_SCHEMA
from .notebook.frames import DATETIME_DTYPE as DATETIME_DTYPE
from .notebook.frames import FAILURES_SCHEMA as FAILURES_SCHEMA
from .notebook.frames import JOBS_SCHEMA as JOBS_SCHEMA
from .notebook.frames import PROGRESS_SCHEMA as PROGRESS_SCHEMA
from .notebook.frames import STATS_COLUMNS as STATS_COLUMNS
from .notebook.frames import STATUS_DTYPE as STATUS_DTYPE
from .notebook.frames import THUMBNAILS_SCHEMA as THUMBNAILS_SCHEMA
from .notebook.frames import WORKERS_SCHEMA as WORKERS_SCHEMA
from .notebook.frames import Counts as Counts
from .notebook.frames import clip_thumbnails as clip_thumbnails
from .notebook.frames import clips_frame as clips_frame
from .notebook.frames import dependencies_frame as dependencies_frame
from .notebook.frames import jobs_frame as jobs_frame
from .notebook.frames import processing_stats as processing_stats
from .notebook.frames import queue_counts as queue_counts
from .notebook.frames import queue_depth as queue_depth
from .notebook.frames import recent_failures as recent_failures
from .notebook.frames import running_progress as running_progress
from .notebook.frames import schedules_frame as schedules_frame
from .notebook.frames import status_counts as status_counts
from .notebook.frames import throughput as throughput
from .notebook.frames import videos_with_clips as videos_with_clips
from .notebook.frames import worker_health as worker_health

__all__ = [
    "STATUS_DTYPE", "Counts", "clip_thumbnails", "clips_frame", "jobs_frame",
    "processing_stats", "queue_depth", "recent_failures", "running_progress",
    "status_counts", "throughput", "videos_with_clips", "worker_health",
]
