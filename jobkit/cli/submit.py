"""``jobkit upload`` and ``jobkit enqueue``: adding jobs."""

from __future__ import annotations

import argparse
import os

from ..errors import InvalidParams, InvalidTransition, UnknownJobType
from ..shapes import enqueued_dict, upload_dict
from .args import (
    datetime_type,
    float_type,
    import_options,
    int_type,
    json_object,
    priority_type,
    queue_name,
)
from .common import EXIT_OK, UsageError, import_modules, opened
from .output import out, when
from .registry import command


def _upload_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE",
                   help="a video file (its path and size are recorded, and cut_analysis "
                        "decodes it) or just a name (a simulated analysis)")
    p.add_argument("--duration-ms", type=int_type(1, "milliseconds"), default=None,
                   help="the video's length in milliseconds: required for a bare name; "
                        "probed from the file when not given")
    p.add_argument("--priority", type=priority_type, default=0, help="higher runs first")


@command("upload", "register a video and queue its cut_analysis job", _upload_arguments)
async def cmd_upload(args: argparse.Namespace) -> int:
    from ..checks import check_filename

    name, stored_path, size = _video_file(args.file)
    try:
        check_filename(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if stored_path is None and args.duration_ms is None:
        raise UsageError(f"--duration-ms is required for {name!r}, a bare name with no file "
                         "(give the path of an existing video to have it probed)")
    async with opened(args, create=True) as runner:
        if stored_path is not None and args.duration_ms is None:
            # Probed from the file (the video extra); a file that is not a readable video
            # is refused here and nothing is stored.
            asset, job = await runner.upload_video(stored_path, priority=args.priority)
        else:
            asset, job = await runner.upload_video(name, args.duration_ms,
                                                   priority=args.priority,
                                                   stored_path=stored_path, size_bytes=size)
    out(args, upload_dict(asset, job),
        f"uploaded {asset.filename} ({asset.duration_ms / 1000:g} s) as asset "
        f"{asset.id}\njob {job.id} (cut_analysis) pending")
    return EXIT_OK


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


def _enqueue_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_type", metavar="TYPE", help="the handler's name, e.g. cut_analysis")
    p.add_argument("--params", type=json_object, default={}, metavar="JSON",
                   help="the job's params as a JSON object (default {})")
    p.add_argument("--priority", type=priority_type, default=0, help="higher runs first")
    at = p.add_mutually_exclusive_group()
    at.add_argument("--run-at", type=datetime_type, default=None, metavar="TIME",
                    help="not before this ISO 8601 time with a zone, e.g. 2030-01-01T09:00Z")
    at.add_argument("--delay", type=float_type(False), default=None, metavar="SECONDS",
                    help="not before this many seconds from now")
    p.add_argument("--dedupe-key", default=None,
                   help="at most one unfinished job per key (the existing one is returned)")
    p.add_argument("--max-retries", type=int_type(0), default=None,
                   help="retries after the first attempt (default $JOBKIT_MAX_JOB_RETRIES)")
    p.add_argument("--timeout", type=float_type(True), default=None, metavar="SECONDS",
                   help="seconds before a running attempt is cancelled")
    p.add_argument("--allow-unknown", action="store_true",
                   help="enqueue a type no imported module registers (your workers know it)")
    p.add_argument("--queue", type=queue_name, default=None, metavar="NAME",
                   help="the queue it waits in (default: its handler's, else 'default')")
    p.add_argument("--after", action="append", default=None, metavar="ID",
                   help="run only once this job has completed; repeatable")
    import_options(p)


@command("enqueue", "add a job of any registered type", _enqueue_arguments)
async def cmd_enqueue(args: argparse.Namespace) -> int:
    from ..dispatcher import check_job

    import_modules(args.imports)
    # Type and params are checked before the database is opened: a refused job writes nothing.
    from ..queue import build_job_row

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
    async with opened(args, create=True) as runner:
        job = await runner.enqueue(args.job_type, args.params, priority=args.priority,
                                   run_at=args.run_at, delay=args.delay,
                                   max_retries=args.max_retries, timeout=args.timeout,
                                   dedupe_key=args.dedupe_key, allow_unknown=args.allow_unknown,
                                   queue=args.queue, after=args.after)
    later = job.run_at is not None and (job.run_at - job.created_at).total_seconds() >= 1
    eligible = f", eligible from {when(job.run_at)} UTC" if later else ""
    note = f" (deduplicated: already queued under dedupe key {args.dedupe_key!r})" \
        if job.deduplicated else ""
    out(args, enqueued_dict(job), f"job {job.id} ({job.job_type}) {job.status}{eligible}{note}")
    return EXIT_OK
