"""``GET /health`` (for probes) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from .. import stats
from ..database import DB_ERRORS, describe_error
from ..runner import Runner
from ..shapes import health_dict
from .models import HealthOut
from .state import ApiState, State

router = APIRouter()

_HEALTH_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *DB_ERRORS)


@router.get("/health", response_model=HealthOut, tags=["operations"],
            responses={503: {"model": HealthOut, "description": "unhealthy"}},
            summary="Database reachable, workers alive, queue depth")
async def health(state: State) -> JSONResponse:
    out = await _health(state, state.get_runner())
    code = 200 if out.status == "ok" else 503
    return JSONResponse(out.model_dump(), status_code=code)


@router.get("/metrics", response_class=PlainTextResponse, tags=["operations"],
            responses={200: {"content": {"text/plain": {}},
                             "description": "Prometheus text format 0.0.4"},
                       503: {"content": {"text/plain": {}},
                             "description": "database unreachable"}},
            summary="Prometheus metrics: jobs by status, queue depth, processing times")
async def metrics(state: State) -> PlainTextResponse:
    media = "text/plain; version=0.0.4; charset=utf-8"
    try:
        text = await _metrics(state, state.get_runner())
    except DB_ERRORS as exc:
        return PlainTextResponse(f"# database unreachable: {describe_error(exc)}\n",
                                 status_code=503, media_type=media)
    return PlainTextResponse(text, media_type=media)


async def _health(state: ApiState, runner: Runner) -> HealthOut:
    s = state.settings
    problems: list[str] = []
    database, alive, depth = "ok", 0, None
    try:
        async with asyncio.timeout(5):
            async with runner.sessions() as db:
                q = await stats.queue_depth(db)
                alive = await stats.workers_alive(db, s.dead_after)
                await db.commit()
        depth = q
    except _HEALTH_ERRORS as exc:
        database = f"unreachable: {describe_error(exc) if not isinstance(exc, TimeoutError) else 'timed out after 5 s'}"
        problems.append(f"database {database}")
    if database == "ok":
        problems = list(stats.health(alive=alive, needed=s.health_min_workers,
                                     window=s.dead_after, workers_expected=True, probe=True,
                                     problems=problems).problems)
    own = None
    if state.worker is not None:
        own = state.worker.state
        task = state.worker_task
        if task is not None and task.done():
            why = "stopped"
            if not task.cancelled() and task.exception() is not None:
                why = f"crashed: {describe_error(task.exception())}"  # type: ignore[arg-type]
            own = why
            problems.append(f"this server's worker {why}")
    return HealthOut.model_validate(health_dict(
        database=database, alive=alive, needed=s.health_min_workers, window=s.dead_after,
        depth=depth, in_process_worker=own, problems=problems))


def _fmt(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _label(value: str) -> str:
    """A Prometheus label value, escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def _metrics(state: ApiState, runner: Runner) -> str:
    async with runner.sessions() as db:
        counts = await stats.jobs_per_status(db)
        per_queue = await stats.jobs_per_queue(db)
        depth = await stats.queue_depth(db)
        alive = await stats.workers_alive(db, state.settings.dead_after)
        hist = await stats.processing_histogram(db)
        await db.commit()
    out: list[str] = []

    def family(name: str, kind: str, help_text: str,
               samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for suffix, value in samples:
            out.append(f"{name}{suffix} {_fmt(value)}")

    family("jobkit_jobs", "gauge", "Jobs in the database by status.",
           [(f'{{status="{s}"}}', n) for s, n in counts.items()])
    family("jobkit_queue_jobs", "gauge", "Jobs in the database by queue and status.",
           [(f'{{queue="{_label(q)}",status="{s}"}}', n)
            for q, by_status in per_queue.items() for s, n in by_status.items()])
    family("jobkit_queue_depth", "gauge",
           "Jobs ready to run now (pending or retry, run_at passed).", [("", depth["eligible"])])
    family("jobkit_jobs_scheduled", "gauge",
           "Waiting jobs due later (delayed, or retries in their backoff).",
           [("", depth["scheduled"])])
    family("jobkit_jobs_completed_total", "counter",
           "Jobs completed (rows in the database; pruning lowers it).",
           [("", counts["completed"])])
    family("jobkit_jobs_failed_total", "counter",
           "Jobs failed for good (rows in the database; pruning lowers it).",
           [("", counts["failed"])])
    family("jobkit_workers_alive", "gauge",
           "Workers that heartbeated within the health window.", [("", alive)])
    samples = [(f'_bucket{{le="{_fmt(b)}"}}', float(n)) for b, n in hist.buckets]
    samples.append(('_bucket{le="+Inf"}', float(hist.count)))
    samples += [("_sum", hist.sum), ("_count", float(hist.count))]
    family("jobkit_job_processing_seconds", "histogram",
           "Processing time of completed jobs (last attempt, start to finish).", samples)
    return "\n".join(out) + "\n"
