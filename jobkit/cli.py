"""The `jobkit` command line: thin argument parsing over the functions a script calls.

Every command takes --database-url (default: $JOBKIT_DATABASE_URL or ./jobkit.db) and
--json (machine-readable output on stdout); logs go to stderr.

Exit codes:
  0    success
  1    jobkit refused the request (invalid params, a job in the wrong state, ...)
  2    bad command-line usage or configuration (unknown option, malformed JSON, ...)
  3    `work` refused: the worker is disabled (JOBKIT_WORKER_ENABLED is false;
       pass --force or enable it)
  4    no such job
  5    the database cannot be reached, has no jobkit tables (`jobkit init`), or its
       schema is older (`jobkit migrate`) or newer (upgrade jobkit) than this jobkit's
  130  interrupted
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import cli_parser
from .cli_parser import Command
from .config import Settings
from .errors import (
    ConfigError,
    DatabaseURLError,
    InvalidParams,
    InvalidTransition,
    JobkitError,
    JobNotFound,
    SchemaError,
    UnknownJobType,
)
from .logsetup import setup_logging

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .alerts import AlertHook
    from .runner import Runner
    from .schema import SchemaState

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DISABLED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_NOT_FOUND, EXIT_DATABASE = 4, 5


class UsageError(JobkitError):
    """A command-line argument jobkit cannot use (exit code 2)."""


class DatabaseUnavailable(JobkitError):
    """The database cannot be reached or is not a jobkit database (exit code 5)."""


# ---------------------------------------------------------------------------
# Shared plumbing
# ---------------------------------------------------------------------------
def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    url = getattr(args, "database_url", None)
    try:
        return Settings.from_env(database_url=url, **overrides)
    except DatabaseURLError as exc:
        raise _url_error(args, exc) from None


def _url_error(args: argparse.Namespace, exc: ConfigError) -> ConfigError:
    """A URL error naming where the URL came from (--database-url, not the variable)."""
    if getattr(args, "database_url", None) is None:
        return exc
    return DatabaseURLError("--database-url", exc.value, exc.expected)


def _import_modules(names: list[str]) -> None:
    # Like uvicorn and rq: a module in the current directory can be imported by name.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UsageError(f"--import {name}: cannot import it ({exc}); it must be on "
                             "PYTHONPATH or in the current directory") from None
        except Exception as exc:  # noqa: BLE001 - a broken module is a usage error (exit 2)
            raise UsageError(f"--import {name}: importing it failed: {type(exc).__name__}: "
                             f"{exc}") from None


async def _open(args: argparse.Namespace, *, create: bool = False,
                settings: Settings | None = None, check_schema: bool = True) -> Runner:
    """A Runner on the command's database, checked reachable and at this jobkit's schema
    (created when ``create``; upgraded as :func:`jobkit.open` does)."""
    from .runner import Runner as RunnerClass
    from .schema import ensure_schema

    settings = settings or _settings(args)
    url = settings.database_url
    if url.startswith("sqlite") and not create:
        path = _sqlite_missing(url)
        if path is not None:
            raise DatabaseUnavailable(f"no database at {path}; create it with `jobkit init` "
                                      "(or pass --database-url)")
    try:
        engine = await _engine(settings)
    except DatabaseURLError as exc:
        raise _url_error(args, exc) from None
    try:
        if check_schema:
            await ensure_schema(engine, settings, create=create)
    except BaseException:
        await engine.dispose()
        raise
    return RunnerClass(engine, settings)


async def _engine(settings: Settings) -> AsyncEngine:
    """An engine on the settings' database, checked reachable."""
    from .database import check_database, create_engine

    url = settings.database_url
    extra: dict[str, Any] = {"connect_args": {"timeout": 10}} if url.startswith("postgresql") \
        else {}
    engine = create_engine(url, settings=settings, **extra)
    try:
        await check_database(engine)
    except JobkitError as exc:
        await engine.dispose()
        raise DatabaseUnavailable(str(exc)) from None
    return engine


def _out(args: argparse.Namespace, data: Any, human: str | Callable[[], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, default=str, ensure_ascii=False))
    else:
        print(human() if callable(human) else human)


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _short_error(error: str | None, width: int = 60) -> str:
    from .errors import last_line

    line = last_line(error) or ""
    return line if len(line) <= width else line[:width - 1] + "…"


def _ago(value: datetime | None) -> str:
    from .models import utcnow

    if value is None:
        return "never"
    s = max(0.0, (utcnow() - value).total_seconds())
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    if s < 172800:
        return f"{s / 3600:.0f}h ago"
    return f"{s / 86400:.0f}d ago"


async def _alerts_on(runner: Runner) -> AlertHook | None:
    from .alerts import enable_alerts

    return enable_alerts(runner)


async def _alerts_off(hook: AlertHook | None) -> None:
    if hook is not None:
        await hook.aclose()


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
async def cmd_work(args: argparse.Namespace) -> int:
    from .runner import open as open_runner

    settings = _settings(args, worker_poll_interval=args.poll_interval,
                         concurrency=args.concurrency)
    if not settings.worker_enabled and not args.force:
        print("jobkit work: the worker is disabled (JOBKIT_WORKER_ENABLED is false). "
              "Enable it with JOBKIT_WORKER_ENABLED=true, or pass --force to run anyway.",
              file=sys.stderr)
        return EXIT_DISABLED
    _import_modules(args.imports)
    runner = await open_runner(settings=settings)
    hook = await _alerts_on(runner)
    try:
        stats = await runner.work(settings.concurrency, handle_signals=True, burst=args.burst,
                                  queues=args.queues, schedules=args.schedules)
    finally:
        await _alerts_off(hook)
        await runner.close()
    done = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in stats.as_dict().items())
    print(f"jobkit worker stopped: {done}", file=sys.stderr)
    if args.json:
        print(json.dumps(stats.as_dict()))
    return EXIT_OK


async def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    out = await run_demo(args.database_url, concurrency=args.concurrency, plot_path=args.plot,
                         quiet=args.json)
    if args.json:
        print(json.dumps(out, default=str))
    return EXIT_OK


async def cmd_init(args: argparse.Namespace) -> int:
    from .schema import read_state
    from .urls import redact_url

    runner = await _open(args, create=True)
    try:
        url = redact_url(runner.engine.url)
        state = await read_state(runner.engine)
        _out(args, {"database_url": url, "backend": runner.backend,
                    "schema_revision": state.revision,
                    "schema_version": int(state.revision or 0)},
             f"jobkit schema ready in {url} (revision {state.revision})")
    finally:
        await runner.close()
    return EXIT_OK


async def cmd_migrate(args: argparse.Namespace) -> int:
    from .schema import describe_change, upgrade
    from .urls import redact_url

    settings = _settings(args)
    if args.sql:
        start = args.from_revision or await _sql_start(settings)
        sys.stdout.write(_offline_sql(settings.database_url, start))
        return EXIT_OK
    if args.from_revision:
        raise UsageError("--from goes with --sql (a live database says where it is)")
    try:
        engine = await _engine(settings)
    except DatabaseURLError as exc:
        raise _url_error(args, exc) from None
    try:
        before, after = await upgrade(engine)
    finally:
        await engine.dispose()
    url = redact_url(settings.database_url)
    change = describe_change(before, after)
    human = f"{change} in {url}" if change else \
        f"jobkit schema in {url} is current (revision {after.revision})"
    _out(args, {"database_url": url, "from_revision": before.revision,
                "revision": after.revision, "head": after.head,
                "upgraded": change is not None}, human)
    return EXIT_OK


async def _sql_start(settings: Settings) -> str:
    """Where the database is, for ``migrate --sql`` without ``--from`` (read-only)."""
    from .schema import FROM_EMPTY, FROM_V010, read_state

    url = settings.database_url
    if url.startswith("sqlite") and _sqlite_missing(url) is not None:
        return FROM_EMPTY
    try:
        engine = await _engine(settings)
    except DatabaseUnavailable as exc:
        raise DatabaseUnavailable(f"{exc}; to print the SQL without connecting, say where the "
                                  "database is with --from base|0.1.0|REVISION") from None
    try:
        state = await read_state(engine)
    finally:
        await engine.dispose()
    if state.status == "newer":
        from .errors import SchemaTooNew
        from .urls import redact_url
        from .version import __version__

        raise SchemaTooNew(redact_url(url), str(state.revision), state.head, __version__)
    if state.revision is None:
        return FROM_EMPTY
    return state.revision if state.stamped else FROM_V010


def _offline_sql(url: str, start: str) -> str:
    from .schema import offline_sql

    try:
        return offline_sql(url, start)
    except SchemaError as exc:
        raise UsageError(f"--from: {exc}") from None


def _video_file(path: str) -> tuple[str, str | None, int | None]:
    """(name, stored_path, size_bytes) of ``upload FILE``: a real file, or a bare name."""
    if os.path.isfile(path):
        size = os.path.getsize(path)
        return os.path.basename(path), os.path.abspath(path), size
    if os.path.exists(path):
        raise UsageError(f"{path!r} is not a regular file")
    if os.sep in path or (os.altsep and os.altsep in path):
        raise UsageError(f"no such file {path!r}; give an existing video path, or a bare "
                         "name (e.g. match.mp4) to register a video without a file")
    if not path.strip():
        raise UsageError("FILE must not be empty")
    return path, None, None


def _sqlite_missing(url: str) -> str | None:
    """The path of a SQLite URL's file when it does not exist."""
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if path.startswith("file:"):
        path = path[5:]
    return None if os.path.exists(path) else path


async def cmd_upload(args: argparse.Namespace) -> int:
    from .checks import check_filename

    name, stored_path, size = _video_file(args.file)
    try:
        check_filename(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if stored_path is None and args.duration_ms is None:
        raise UsageError(f"--duration-ms is required for {name!r}, a bare name with no file "
                         "(give the path of an existing video to have it probed)")
    runner = await _open(args, create=True)
    try:
        if stored_path is not None and args.duration_ms is None:
            # Probed from the file (the video extra); a file that is not a readable video
            # is refused here and nothing is stored.
            asset, job = await runner.upload_video(stored_path, priority=args.priority)
        else:
            asset, job = await runner.upload_video(name, args.duration_ms,
                                                   priority=args.priority,
                                                   stored_path=stored_path, size_bytes=size)
    finally:
        await runner.close()
    data = {"video_asset_id": str(asset.id), "job_id": str(job.id), "job_type": job.job_type,
            "status": str(job.status), "filename": asset.filename,
            "duration_ms": asset.duration_ms, "stored_path": asset.stored_path,
            "size_bytes": asset.size_bytes, "width": asset.width, "height": asset.height,
            "fps": asset.fps}
    _out(args, data, f"uploaded {asset.filename} ({asset.duration_ms / 1000:g} s) as asset "
                     f"{asset.id}\njob {job.id} (cut_analysis) pending")
    return EXIT_OK


async def cmd_enqueue(args: argparse.Namespace) -> int:
    from .dispatcher import check_job

    _import_modules(args.imports)
    # Type and params are checked before the database is opened: a refused job writes nothing.
    from .queue import build_job_row

    try:
        check_job(args.job_type, args.params, allow_unknown=args.allow_unknown)
        build_job_row(args.job_type, args.params, priority=args.priority, run_at=args.run_at,
                      delay=args.delay, max_retries=args.max_retries, timeout=args.timeout,
                      dedupe_key=args.dedupe_key)
    except UnknownJobType as exc:
        raise UsageError(
            f"unknown job type {exc.job_type!r} (registered: {', '.join(exc.known) or 'none'}); "
            "pass --import MODULE that registers it, or --allow-unknown if only your workers "
            "know it") from None
    except (InvalidParams, InvalidTransition) as exc:
        raise UsageError(str(exc)) from None
    runner = await _open(args, create=True)
    try:
        job = await runner.enqueue(args.job_type, args.params, priority=args.priority,
                                   run_at=args.run_at, delay=args.delay,
                                   max_retries=args.max_retries, timeout=args.timeout,
                                   dedupe_key=args.dedupe_key, allow_unknown=args.allow_unknown,
                                   queue=args.queue, after=args.after)
    finally:
        await runner.close()
    from .ops import job_dict

    later = job.run_at is not None and (job.run_at - job.created_at).total_seconds() >= 1
    when = f", eligible from {_when(job.run_at)} UTC" if later else ""
    note = f" (deduplicated: already queued under dedupe key {args.dedupe_key!r})" \
        if job.deduplicated else ""
    _out(args, {**job_dict(job), "deduplicated": job.deduplicated},
         f"job {job.id} ({job.job_type}) {job.status}{when}{note}")
    return EXIT_OK


async def cmd_step(args: argparse.Namespace) -> int:
    _import_modules(args.imports)
    runner = await _open(args)
    hook = await _alerts_on(runner)
    try:
        known = None if args.any_type else sorted(runner.handlers)
        summary = await runner.step(job_types=known, queues=args.queues)
        waiting = {} if summary.get("processed") or known is None else \
            await _eligible_unknown(runner, known)
    finally:
        await _alerts_off(hook)
        await runner.close()

    def human() -> str:
        if not summary.get("processed"):
            if waiting:
                kinds = ", ".join(f"{n} {t!r}" for t, n in sorted(waiting.items()))
                return (f"{summary.get('message')} that this process can run; waiting for a "
                        f"handler: {kinds} (pass --import MODULE, or --any-type to fail "
                        "them as unknown)")
            return str(summary.get("message"))
        head = (f"job {summary['job_id']} ({summary['job_type']}) {summary['status']} in "
                f"{summary['processing_time_ms']}ms")
        if summary.get("error"):
            return f"{head}\nerror: {summary['error']}"
        return f"{head}\nresult: {json.dumps(summary['result'], ensure_ascii=False)}"

    _out(args, dict(summary), human)
    return EXIT_OK


async def cmd_drain(args: argparse.Namespace) -> int:
    from . import stats as jobstats

    _import_modules(args.imports)

    runner = await _open(args)
    hook = await _alerts_on(runner)
    try:
        # Like `work`: SIGTERM/SIGINT stop gracefully (handlers installed explicitly, so a
        # SIGINT inherited as ignored still stops it); unfinished jobs go back to the queue.
        stats = await runner.drain(concurrency=args.concurrency, progress=False,
                                   handle_signals=True, queues=args.queues)
        async with runner.sessions() as db:
            left = await jobstats.queue_depth(db, queues=args.queues)
            await db.commit()
    finally:
        await _alerts_off(hook)
        await runner.close()
    d = stats.as_dict()
    remaining = left["eligible"] + left["scheduled"]
    signal_name = stats.stopped_by
    data = {**d, "stopped_by": signal_name, "left": remaining, "left_eligible": left["eligible"],
            "left_scheduled": left["scheduled"]}
    head = (f"drain stopped by {signal_name}: ran" if signal_name else "drained")
    released = f", {d['released']} released back to the queue" if d["released"] else ""
    _out(args, data, f"{head} {d['processed']} job(s) in {d['elapsed_s']:g} s: "
                     f"{d['completed']} completed, {d['failed']} failed, {d['retried']} to retry"
                     f"{released}; {remaining} job(s) left in the queue "
                     f"({left['eligible']} eligible now, {left['scheduled']} scheduled later)")
    return EXIT_OK


async def cmd_status(args: argparse.Namespace) -> int:
    from . import stats as jobstats
    from .schema import read_state
    from .urls import redact_url

    runner = await _open(args, check_schema=False)
    s = runner.settings
    try:
        state = await read_state(runner.engine)
        if state.status != "current":
            return _schema_status(args, redact_url(runner.engine.url), state,
                                  runner.backend)
        async with runner.sessions() as db:
            counts = await jobstats.status_counts(db)
            per_queue = await jobstats.queue_status_counts(db)
            depth = await jobstats.queue_depth(db)
            workers = await jobstats.workers(db, s.dead_after)
            alive = await jobstats.workers_alive(db, s.dead_after)
            states = await jobstats.worker_states(db)
            hist = await jobstats.processing_histogram(db)
            await db.commit()
        url = redact_url(runner.engine.url)
    finally:
        await runner.close()
    problems: list[str] = []
    note = None
    crashed = states.get("dead", 0) + sum(1 for w in workers if w.state == "running"
                                          and not w.alive)
    if alive < s.health_min_workers:
        if crashed or states.get("running", 0):
            problems.append(f"{alive} worker(s) heartbeated in the last {s.dead_after:g} s; "
                            f"{s.health_min_workers} needed")
        else:
            # Only one-off sessions (drain, step) ran here, and every worker stopped
            # cleanly: nothing is broken, jobs simply wait for the next session.
            note = ("no long-running worker; every worker stopped cleanly (e.g. after "
                    "`jobkit drain`), so jobs wait until `jobkit work` or `jobkit drain` runs")
    avg = hist.sum / hist.count if hist.count else None
    health = "unhealthy" if problems else ("idle" if note else "ok")
    data = {"database_url": url, "jobs": counts, "queues": per_queue,
            "total": sum(counts.values()),
            "queue_depth": depth["eligible"], "scheduled": depth["scheduled"],
            "avg_processing_s": None if avg is None else round(avg, 4),
            "workers_alive": alive, "workers_by_state": states,
            "workers": [w.as_dict() for w in workers],
            "health": health, "problems": problems, "note": note,
            "schema": state.as_dict()}

    def human() -> str:
        lines = [f"database  {url}", f"schema    revision {state.revision} (current)",
                 "jobs      " + "  ".join(f"{k} {v}" for k, v in counts.items())
                 + f"  (total {data['total']})",
                 f"queue     {depth['eligible']} eligible now, {depth['scheduled']} scheduled later"]
        if len(per_queue) > 1 or (per_queue and "default" not in per_queue):
            for name, n in per_queue.items():
                lines.append(f"  queue {name}: " + "  ".join(f"{k} {v}" for k, v in n.items()))
        if avg is not None:
            lines.append(f"timing    {avg:.3f} s average over {hist.count} completed job(s)")
        by_state = ", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "none yet"
        lines.append(f"workers   {alive} alive ({by_state})")
        for w in workers:
            if w.state == "running":
                lines.append(f"  {w.id}  {'alive' if w.alive else 'SILENT'}  heartbeat "
                             f"{_ago(w.last_heartbeat_at)}  {w.jobs_done} job(s) done  "
                             f"concurrency {w.concurrency}")
        if problems:
            lines.append("health    UNHEALTHY: " + "; ".join(problems))
        elif note:
            lines.append(f"health    idle: {note}")
        else:
            lines.append("health    ok")
        return "\n".join(lines)

    _out(args, data, human)
    return EXIT_OK


def _schema_status(args: argparse.Namespace, url: str, state: SchemaState,
                   backend: str) -> int:
    """``jobkit status`` of a database whose schema this jobkit cannot use as it is."""
    if state.status == "empty":
        raise DatabaseUnavailable(f"{url} has no jobkit tables; create them with `jobkit init`")
    if state.status == "newer":
        line = (f"revision {state.revision}, newer than this jobkit's newest ({state.head}): "
                "upgrade jobkit on this host")
    elif backend == "sqlite":
        line = (f"revision {state.revision}, older than this jobkit's {state.head}: opening "
                "it with jobkit upgrades it (or run `jobkit migrate`)")
    else:
        line = (f"revision {state.revision}, older than this jobkit's {state.head}: "
                "run `jobkit migrate`")
    data = {"database_url": url, "schema": state.as_dict(), "health": "unhealthy",
            "problems": [f"schema {line}"]}
    _out(args, data, f"database  {url}\nschema    {line}\nhealth    UNHEALTHY: the schema "
                     "is not this jobkit's; job counts need a current schema")
    return EXIT_OK


async def cmd_jobs(args: argparse.Namespace) -> int:
    from . import ops
    from . import stats as jobstats

    runner = await _open(args)
    try:
        async with runner.sessions() as db:
            jobs = await jobstats.list_jobs(db, status=args.status, job_type=args.job_type,
                                       limit=args.limit, queue_name=args.queue)
            await db.commit()
    finally:
        await runner.close()
    rows = [(j.id, j.job_type, j.queue, j.status, f"{j.attempts}/{j.max_attempts}",
             j.priority, _when(j.created_at), _progress_cell(j), _short_error(j.error, 50))
            for j in jobs]
    _out(args, [ops.job_dict(j) for j in jobs],
         lambda: _table(rows, ["ID", "TYPE", "QUEUE", "STATUS", "ATTEMPTS", "PRIO",
                               "CREATED (UTC)", "PROGRESS", "ERROR"]) if rows else "no jobs")
    return EXIT_OK


async def cmd_schedules(args: argparse.Namespace) -> int:
    from . import schedules as sched

    runner = await _open(args)
    note = ""
    try:
        async with runner.sessions() as db:
            if args.pause or args.resume:
                name = args.pause or args.resume
                await sched.set_paused(db, name, bool(args.pause))
                note = f"schedule {name!r} {'paused' if args.pause else 'resumed'}"
            elif args.remove:
                await sched.remove_schedule(db, args.remove)
                note = f"schedule {args.remove!r} removed"
            found = await sched.list_schedules(db)
    finally:
        await runner.close()
    data = [{"name": r["name"], "job_type": r["job_type"], "queue": r["queue"],
             "cron": r["cron"], "every_seconds": r["every_seconds"],
             "paused": bool(r["paused"]), "params": r["params"],
             "last_tick_at": r["last_tick_at"].isoformat(),
             "next_tick_at": r["next_tick_at"].isoformat(),
             "last_job_id": None if r["last_job_id"] is None else str(r["last_job_id"])}
            for r in found]
    rows = [(r["name"], r["job_type"], r["queue"] or "-",
             f"cron {r['cron']}" if r["cron"] else f"every {r['every_seconds']:g} s",
             "paused" if r["paused"] else "active", _when(r["next_tick_at"]),
             r["last_job_id"] or "-") for r in found]

    def human() -> str:
        table = _table(rows, ["NAME", "TYPE", "QUEUE", "WHEN (UTC)", "STATE", "NEXT (UTC)",
                              "LAST JOB"]) if rows else "no schedules"
        return f"{note}\n{table}" if note else table

    _out(args, data, human)
    return EXIT_OK


def _progress_cell(job: Any, width: int = 10) -> str:
    """``[####      ]  40% decoding 12/30 s`` for a job that reported progress."""
    if job.progress is None:
        return ""
    filled = int(round(job.progress * width))
    text = f"[{'#' * filled}{' ' * (width - filled)}] {job.progress * 100:3.0f}%"
    if job.progress_message and str(job.status) == "processing":
        text += f" {job.progress_message[:40]}"
    return text


async def cmd_show(args: argparse.Namespace) -> int:
    from .ops import job_dict

    runner = await _open(args)
    try:
        job = await runner.get_job(args.job_id)
    finally:
        await runner.close()
    d = job_dict(job)

    def human() -> str:
        lines = [f"job {d['id']}"]
        for key in ("job_type", "status", "attempts", "max_attempts", "priority", "timeout",
                    "dedupe_key", "run_at", "created_at", "started_at", "finished_at",
                    "processing_time_ms", "locked_by", "locked_until"):
            if d[key] is not None:
                lines.append(f"  {key:<18} {d[key]}")
        if job.progress is not None:
            when = f" (updated {_ago(job.progress_at)})" if job.progress_at else ""
            lines.append(f"  {'progress':<18} {_progress_cell(job)}{when}")
        lines.append(f"  {'params':<18} {json.dumps(d['params'], ensure_ascii=False)}")
        if d["result"] is not None:
            lines.append(f"  {'result':<18} {json.dumps(d['result'], ensure_ascii=False)}")
        if d["error"]:
            lines.append("  error:")
            lines += ["    " + line for line in str(d["error"]).splitlines()]
        return "\n".join(lines)

    _out(args, d, human)
    return EXIT_OK


async def _eligible_unknown(runner: Runner, known: list[str]) -> dict[str, int]:
    """Eligible jobs per type that no handler of this process can run."""
    from sqlalchemy import func, select

    from .models import ELIGIBLE_VALUES, jobs_table, utcnow

    async with runner.sessions() as db:
        rows = (await db.execute(
            select(jobs_table.c.job_type, func.count())
            .where(jobs_table.c.status.in_(ELIGIBLE_VALUES), jobs_table.c.run_at <= utcnow(),
                   jobs_table.c.job_type.not_in(known))
            .group_by(jobs_table.c.job_type))).all()
    return {str(t): int(n) for t, n in rows}


async def cmd_explain(args: argparse.Namespace) -> int:
    _import_modules(args.imports)
    runner = await _open(args)
    try:
        explanation = await runner.explain(args.job_id, face="cli")
    finally:
        await runner.close()
    _out(args, dataclasses.asdict(explanation), str(explanation))
    return EXIT_OK


async def cmd_failed(args: argparse.Namespace) -> int:
    from . import ops
    from . import stats as jobstats

    runner = await _open(args)
    try:
        async with runner.sessions() as db:
            jobs = await jobstats.recent_failures(db, args.limit)
            await db.commit()
    finally:
        await runner.close()
    rows = [(j.id, j.job_type, j.attempts, _when(j.finished_at), _short_error(j.error))
            for j in jobs]
    _out(args, [ops.job_dict(j) for j in jobs],
         lambda: _table(rows, ["ID", "TYPE", "ATTEMPTS", "FAILED AT (UTC)", "ERROR"])
         if rows else "no failed jobs")
    return EXIT_OK


async def cmd_retry(args: argparse.Namespace) -> int:
    from . import ops
    from . import stats as jobstats
    from .errors import InvalidTransition

    if bool(args.job_id) == bool(args.all_failed):
        raise UsageError("give a job ID or --all-failed (not both)")
    runner = await _open(args)
    try:
        if args.job_id:
            job = await runner.retry_job(args.job_id)
            _out(args, ops.job_dict(job), f"job {job.id} ({job.job_type}) {job.status}")
            return EXIT_OK
        async with runner.sessions() as db:
            ids, skipped = await jobstats.failed_job_ids(
                db, include_cancelled=args.include_cancelled, job_type=args.job_type)
        retried = []
        for jid in ids:
            try:
                retried.append((await runner.retry_job(jid)).id)
            except (InvalidTransition, JobNotFound):
                continue  # retried or pruned by someone else meanwhile
    finally:
        await runner.close()
    note = f"; {skipped} cancelled job(s) left alone (--include-cancelled)" if skipped else ""
    _out(args, {"retried": len(retried), "job_ids": [str(i) for i in retried],
                "skipped_cancelled": skipped},
         f"{len(retried)} failed job(s) back to pending{note}")
    return EXIT_OK


async def cmd_cancel(args: argparse.Namespace) -> int:
    from .ops import job_dict

    runner = await _open(args)
    try:
        job = await runner.cancel(args.job_id)
    finally:
        await runner.close()
    msg = (f"job {job.id} is running; its worker will stop it at its next heartbeat"
           if str(job.status) == "processing" else f"job {job.id} cancelled (failed)")
    _out(args, job_dict(job), msg)
    return EXIT_OK


async def cmd_prune(args: argparse.Namespace) -> int:
    from . import durations
    from . import queue as jobqueue
    from .errors import InvalidTransition

    try:
        statuses = jobqueue.check_prunable([s.strip() for s in args.status.split(",") if s.strip()])
    except InvalidTransition as exc:
        raise UsageError(f"--status: {exc}") from None
    runner = await _open(args)
    try:
        async with runner.sessions() as db:
            n = await jobqueue.prune(db, args.older_than, statuses, batch_size=args.batch_size,
                                dry_run=args.dry_run)
    finally:
        await runner.close()
    verb = "would delete" if args.dry_run else "deleted"
    _out(args, {"deleted": 0 if args.dry_run else n, "matched": n, "dry_run": args.dry_run,
                "statuses": list(statuses),
                "older_than_s": args.older_than.total_seconds()},
         f"{verb} {n} {'/'.join(statuses)} job(s) finished more than "
         f"{durations.human_duration(args.older_than)} ago")
    return EXIT_OK


async def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .api import create_app
    except ImportError as exc:
        raise UsageError(f"jobkit serve needs the api extra ({exc}): "
                         "pip install -e '.[api]' (from the jobkit checkout)") from None
    settings = _settings(args, concurrency=args.concurrency,
                         dev_endpoints=True if args.dev_endpoints else None)
    _import_modules(args.imports)
    runner = await _open(args, create=True, settings=settings)
    app = create_app(settings, runner=runner)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None,
                            lifespan="on", server_header=False)
    server = uvicorn.Server(config)
    # uvicorn re-raises a caught SIGTERM once it has shut down; handle it so that a
    # graceful stop exits 0 (SIGINT still ends with 130, as Ctrl-C should).
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(sig: int, frame: Any) -> None:
        server.handle_exit(sig, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        await server.serve()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise JobkitError(f"the server could not start on {args.host}:{args.port} "
                              "(see the log above)") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        await runner.close()
    return EXIT_OK


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------
def _exit_code(exc: BaseException) -> int:
    from .execute import DB_ERRORS

    if isinstance(exc, UsageError | ConfigError):
        return EXIT_USAGE
    if isinstance(exc, JobNotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, (DatabaseUnavailable, SchemaError, *DB_ERRORS)):
        return EXIT_DATABASE
    return EXIT_ERROR


def _message(exc: BaseException) -> str:
    from .execute import DB_ERRORS

    if isinstance(exc, JobNotFound):
        return f"no job with id {exc.job_id}; list jobs with `jobkit jobs`"
    if isinstance(exc, JobkitError):
        return str(exc)
    if isinstance(exc, DB_ERRORS):
        from .database import describe_error

        return f"database error: {describe_error(exc)}"
    return (f"unexpected error: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback)")


COMMANDS: dict[str, Command] = {
    "init": cmd_init, "migrate": cmd_migrate, "upload": cmd_upload, "enqueue": cmd_enqueue, "step": cmd_step,
    "work": cmd_work, "drain": cmd_drain, "status": cmd_status, "jobs": cmd_jobs,
    "show": cmd_show, "explain": cmd_explain, "failed": cmd_failed, "retry": cmd_retry,
    "cancel": cmd_cancel, "prune": cmd_prune, "serve": cmd_serve, "demo": cmd_demo,
    "schedules": cmd_schedules,
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``jobkit`` command."""
    return cli_parser.build_parser(COMMANDS, __doc__)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # `demo` prints a report on stdout: its per-job INFO lines would interleave with it.
    default_level = "WARNING" if args.command == "demo" else "INFO"
    setup_logging(args.log_level or default_level, args.log_format)
    func: Command = args.func
    try:
        return asyncio.run(func(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (`jobkit jobs --json | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - every error becomes one line and an exit code
        if args.debug:
            traceback.print_exc()
        print(f"jobkit {args.command}: {_message(exc)}", file=sys.stderr)
        return _exit_code(exc)
