"""``jobkit jobs``, ``schedules``, ``show``, ``explain``, ``failed``, ``retry``, ``cancel`` and
``prune``: looking at jobs and acting on them."""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..errors import InvalidTransition, JobNotFound
from ..models import ALL_STATUSES, TERMINAL
from ..shapes import job_dict, schedule_dict
from .args import ID_HELP, duration_type, import_options, positive, queue_name
from .common import EXIT_OK, UsageError, import_modules, opened
from .output import ago, out, progress_cell, short_error, table, when
from .registry import command


def _jobs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", choices=[*(s.value for s in ALL_STATUSES), "cancelled"],
                   default=None, help="only jobs in this status (cancelled: the failed jobs "
                                      "that were cancelled)")
    p.add_argument("--type", dest="job_type", default=None, help="only jobs of this type")
    p.add_argument("--queue", type=queue_name, default=None, metavar="NAME",
                   help="only jobs of this queue")
    p.add_argument("--limit", type=positive, default=20, help="at most this many (default 20)")


@command("jobs", "list the newest jobs", _jobs_arguments)
async def cmd_jobs(args: argparse.Namespace) -> int:
    from .. import stats

    async with opened(args) as runner, runner.sessions() as db:
        jobs = await stats.list_jobs(db, status=args.status, job_type=args.job_type,
                                   limit=args.limit, queue_name=args.queue)
        await db.commit()
    rows = [(j.id, j.job_type, j.queue, j.status, f"{j.attempts}/{j.max_attempts}",
             j.priority, when(j.created_at), progress_cell(j), short_error(j.error, 50))
            for j in jobs]
    out(args, [job_dict(j) for j in jobs],
        lambda: table(rows, ["ID", "TYPE", "QUEUE", "STATUS", "ATTEMPTS", "PRIO",
                             "CREATED (UTC)", "PROGRESS", "ERROR"]) if rows else "no jobs")
    return EXIT_OK


def _schedules_arguments(p: argparse.ArgumentParser) -> None:
    act = p.add_mutually_exclusive_group()
    act.add_argument("--pause", metavar="NAME", default=None, help="stop enqueueing its ticks")
    act.add_argument("--resume", metavar="NAME", default=None,
                     help="enqueue its ticks again, from the next one")
    act.add_argument("--remove", metavar="NAME", default=None, help="delete it")


@command("schedules", "list the periodic jobs; pause, resume or remove one",
         _schedules_arguments)
async def cmd_schedules(args: argparse.Namespace) -> int:
    from .. import schedules as sched

    note = ""
    async with opened(args) as runner, runner.sessions() as db:
        if args.pause or args.resume:
            name = args.pause or args.resume
            await sched.set_paused(db, name, bool(args.pause))
            note = f"schedule {name!r} {'paused' if args.pause else 'resumed'}"
        elif args.remove:
            await sched.remove_schedule(db, args.remove)
            note = f"schedule {args.remove!r} removed"
        found = await sched.list_schedules(db)
    rows = [(r["name"], r["job_type"], r["queue"] or "-",
             f"cron {r['cron']}" if r["cron"] else f"every {r['every_seconds']:g} s",
             "paused" if r["paused"] else "active", when(r["next_tick_at"]),
             r["last_job_id"] or "-") for r in found]

    def human() -> str:
        listed = table(rows, ["NAME", "TYPE", "QUEUE", "WHEN (UTC)", "STATE", "NEXT (UTC)",
                              "LAST JOB"]) if rows else "no schedules"
        return f"{note}\n{listed}" if note else listed

    out(args, [schedule_dict(r) for r in found], human)
    return EXIT_OK


def _job_id_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="ID", help=ID_HELP)


@command("show", "everything about one job", _job_id_argument)
async def cmd_show(args: argparse.Namespace) -> int:
    async with opened(args) as runner:
        job = await runner.get_job(args.job_id)
    d = job_dict(job)

    def human() -> str:
        lines = [f"job {d['id']}"]
        for key in ("job_type", "status", "attempts", "max_attempts", "priority", "timeout",
                    "dedupe_key", "run_at", "created_at", "started_at", "finished_at",
                    "processing_time_ms", "locked_by", "locked_until"):
            if d[key] is not None:
                lines.append(f"  {key:<18} {d[key]}")
        if job.progress is not None:
            updated = f" (updated {ago(job.progress_at)})" if job.progress_at else ""
            lines.append(f"  {'progress':<18} {progress_cell(job)}{updated}")
        lines.append(f"  {'params':<18} {json.dumps(d['params'], ensure_ascii=False)}")
        if d["result"] is not None:
            lines.append(f"  {'result':<18} {json.dumps(d['result'], ensure_ascii=False)}")
        if d["error"]:
            lines.append("  error:")
            lines += ["    " + line for line in str(d["error"]).splitlines()]
        return "\n".join(lines)

    out(args, d, human)
    return EXIT_OK


def _explain_arguments(p: argparse.ArgumentParser) -> None:
    _job_id_argument(p)
    import_options(p)


@command("explain", "why a job is in its state, and what happens next", _explain_arguments)
async def cmd_explain(args: argparse.Namespace) -> int:
    import_modules(args.imports)
    async with opened(args) as runner:
        explanation = await runner.explain(args.job_id, face="cli")
    out(args, dataclasses.asdict(explanation), str(explanation))
    return EXIT_OK


def _failed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=positive, default=10, help="at most this many (default 10)")


@command("failed", "the most recent failed jobs", _failed_arguments)
async def cmd_failed(args: argparse.Namespace) -> int:
    from .. import stats

    async with opened(args) as runner, runner.sessions() as db:
        jobs = await stats.recent_failures(db, args.limit)
        await db.commit()
    rows = [(j.id, j.job_type, j.attempts, when(j.finished_at), short_error(j.error))
            for j in jobs]
    out(args, [job_dict(j) for j in jobs],
        lambda: table(rows, ["ID", "TYPE", "ATTEMPTS", "FAILED AT (UTC)", "ERROR"])
        if rows else "no failed jobs")
    return EXIT_OK


def _retry_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", metavar="ID", nargs="?", default=None,
                   help=ID_HELP + " (or give --all-failed)")
    p.add_argument("--all-failed", action="store_true", help="every failed job")
    p.add_argument("--type", dest="job_type", default=None,
                   help="with --all-failed: only jobs of this type")
    p.add_argument("--include-cancelled", action="store_true",
                   help="with --all-failed: also jobs that were cancelled on purpose")


@command("retry", "send a failed job (or every failed job) back to pending", _retry_arguments)
async def cmd_retry(args: argparse.Namespace) -> int:
    from .. import stats

    if bool(args.job_id) == bool(args.all_failed):
        raise UsageError("give a job ID or --all-failed (not both)")
    async with opened(args) as runner:
        if args.job_id:
            job = await runner.retry_job(args.job_id)
            out(args, job_dict(job), f"job {job.id} ({job.job_type}) {job.status}")
            return EXIT_OK
        async with runner.sessions() as db:
            ids, skipped = await stats.failed_job_ids(
                db, include_cancelled=args.include_cancelled, job_type=args.job_type)
        retried = []
        for jid in ids:
            try:
                retried.append((await runner.retry_job(jid)).id)
            except (InvalidTransition, JobNotFound):
                continue  # retried or pruned by someone else meanwhile
    note = f"; {skipped} cancelled job(s) left alone (--include-cancelled)" if skipped else ""
    out(args, {"retried": len(retried), "job_ids": [str(i) for i in retried],
               "skipped_cancelled": skipped},
        f"{len(retried)} failed job(s) back to pending{note}")
    return EXIT_OK


@command("cancel", "cancel a waiting job, or ask a running one to stop", _job_id_argument)
async def cmd_cancel(args: argparse.Namespace) -> int:
    async with opened(args) as runner:
        job = await runner.cancel(args.job_id)
    msg = (f"job {job.id} is running; its worker will stop it at its next heartbeat"
           if str(job.status) == "processing" else f"job {job.id} cancelled (failed)")
    out(args, job_dict(job), msg)
    return EXIT_OK


_TERMINAL = ",".join(s.value for s in sorted(TERMINAL, key=lambda s: s.value))


def _prune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--older-than", type=duration_type, required=True, metavar="DURATION",
                   help="a number with a unit, e.g. 30d, 12h, 1d12h, 90m, 45s (units: w, d, "
                        "h, m, s)")
    p.add_argument("--status", default=_TERMINAL,
                   help=f"comma-separated finished statuses (default {_TERMINAL})")
    p.add_argument("--batch-size", type=positive, default=1000,
                   help="rows deleted per transaction (default 1000)")
    p.add_argument("--dry-run", action="store_true", help="count, delete nothing")


@command("prune", "delete finished jobs older than a duration, in batches "
                  "(never unfinished ones; clips are kept)", _prune_arguments)
async def cmd_prune(args: argparse.Namespace) -> int:
    from .. import queue
    from ..durations import human_duration

    try:
        statuses = queue.check_prunable([s.strip() for s in args.status.split(",") if s.strip()])
    except InvalidTransition as exc:
        raise UsageError(f"--status: {exc}") from None
    async with opened(args) as runner, runner.sessions() as db:
        n = await queue.prune(db, args.older_than, statuses, batch_size=args.batch_size,
                            dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    out(args, {"deleted": 0 if args.dry_run else n, "matched": n, "dry_run": args.dry_run,
               "statuses": list(statuses),
               "older_than_s": args.older_than.total_seconds()},
        f"{verb} {n} {'/'.join(statuses)} job(s) finished more than "
        f"{human_duration(args.older_than)} ago")
    return EXIT_OK
