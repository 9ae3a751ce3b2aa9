"""``jobkit step``, ``jobkit work`` and ``jobkit drain``: running jobs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from .args import import_options, positive, queue_options
from .common import EXIT_DISABLED, EXIT_OK, import_modules, opened, settings_of
from .output import out
from .registry import command

if TYPE_CHECKING:
    from ..runner import Runner


def _step_arguments(p: argparse.ArgumentParser) -> None:
    import_options(p)
    p.add_argument("--any-type", action="store_true",
                   help="also claim a job no imported handler can run (it fails at once as "
                        "unknown); by default such jobs are left waiting")
    queue_options(p, "claim")


@command("step", "process ONE job now and print its summary", _step_arguments)
async def cmd_step(args: argparse.Namespace) -> int:
    import_modules(args.imports)
    async with opened(args, alerts=True) as runner:
        known = None if args.any_type else sorted(runner.handlers)
        summary = await runner.step(job_types=known, queues=args.queues)
        waiting = {} if summary.get("processed") or known is None else \
            await _eligible_unknown(runner, known)

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

    out(args, dict(summary), human)
    return EXIT_OK


async def _eligible_unknown(runner: Runner, known: list[str]) -> dict[str, int]:
    """Eligible jobs per type that no handler of this process can run."""
    from sqlalchemy import func, select

    from ..backends import backend_of
    from ..models import ELIGIBLE_VALUES, jobs_table

    async with runner.sessions() as db:
        rows = (await db.execute(
            select(jobs_table.c.job_type, func.count())
            .where(jobs_table.c.status.in_(ELIGIBLE_VALUES),
                   jobs_table.c.run_at <= backend_of(db).now(),
                   jobs_table.c.job_type.not_in(known))
            .group_by(jobs_table.c.job_type))).all()
    return {str(t): int(n) for t, n in rows}


def _work_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=positive, default=None, help="jobs at once (default 1)")
    p.add_argument("--poll-interval", type=float, default=None,
                   help="seconds between polls when idle (default 2)")
    import_options(p)
    p.add_argument("--burst", action="store_true", help="exit when nothing is eligible")
    queue_options(p, "serve")
    p.add_argument("--no-schedules", dest="schedules", action="store_false", default=None,
                   help="do not enqueue the ticks of periodic jobs (another worker does)")
    p.add_argument("--force", action="store_true",
                   help="run even when JOBKIT_WORKER_ENABLED is false")


@command("work", "run a worker until SIGINT/SIGTERM (or --burst)", _work_arguments)
async def cmd_work(args: argparse.Namespace) -> int:
    from ..runner import open as open_runner

    settings = settings_of(args, worker_poll_interval=args.poll_interval,
                           concurrency=args.concurrency)
    if not settings.worker_enabled and not args.force:
        print("jobkit work: the worker is disabled (JOBKIT_WORKER_ENABLED is false). "
              "Enable it with JOBKIT_WORKER_ENABLED=true, or pass --force to run anyway.",
              file=sys.stderr)
        return EXIT_DISABLED
    import_modules(args.imports)
    # jobkit.open, not the other commands' checked opening: an unreachable database is
    # exit code 1 for `work` (see the README's exit codes).
    runner = await open_runner(settings=settings)
    async with opened(args, runner=runner, alerts=True):
        stats = await runner.work(settings.concurrency, handle_signals=True, burst=args.burst,
                                  queues=args.queues, schedules=args.schedules)
    done = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in stats.as_dict().items())
    print(f"jobkit worker stopped: {done}", file=sys.stderr)
    if args.json:
        print(json.dumps(stats.as_dict()))
    return EXIT_OK


def _drain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=positive, default=1, help="jobs at once (default 1)")
    import_options(p)
    queue_options(p, "process")


@command("drain", "process jobs until nothing is eligible, then exit", _drain_arguments)
async def cmd_drain(args: argparse.Namespace) -> int:
    import_modules(args.imports)
    from .. import stats as jobstats

    async with opened(args, alerts=True) as runner:
        # Like `work`: SIGTERM/SIGINT stop gracefully (handlers installed explicitly, so a
        # SIGINT inherited as ignored still stops it); unfinished jobs go back to the queue.
        stats = await runner.drain(concurrency=args.concurrency, progress=False,
                                   handle_signals=True, queues=args.queues)
        async with runner.sessions() as db:
            left = await jobstats.queue_depth(db, queues=args.queues)
            await db.commit()
    d = stats.as_dict()
    remaining = left["eligible"] + left["scheduled"]
    signal_name = stats.stopped_by
    data = {**d, "stopped_by": signal_name, "left": remaining, "left_eligible": left["eligible"],
            "left_scheduled": left["scheduled"]}
    head = (f"drain stopped by {signal_name}: ran" if signal_name else "drained")
    released = f", {d['released']} released back to the queue" if d["released"] else ""
    out(args, data, f"{head} {d['processed']} job(s) in {d['elapsed_s']:g} s: "
                    f"{d['completed']} completed, {d['failed']} failed, {d['retried']} to retry"
                    f"{released}; {remaining} job(s) left in the queue "
                    f"({left['eligible']} eligible now, {left['scheduled']} scheduled later)")
    return EXIT_OK
