"""The ``jobkit`` command line: thin argument parsing over the functions a script calls.

Exit codes: 0 success; 1 a jobkit error (bad input, unknown job, unreachable
database); 2 bad command-line usage; 3 ``work`` refused because the worker is
disabled (``JOBKIT_WORKER_ENABLED=false``; pass ``--force`` or enable it);
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from .config import Settings
from .errors import JobkitError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DISABLED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return Settings.from_env(database_url=getattr(args, "database_url", None), **overrides)


def _import_modules(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise JobkitError(f"--import {name}: cannot import it ({exc}); "
                              "is it on PYTHONPATH?") from None


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
    try:
        stats = await runner.work(settings.concurrency, handle_signals=True, burst=args.burst)
    finally:
        await runner.close()
    print(f"jobkit worker stopped: {stats.as_dict()}", file=sys.stderr)
    return EXIT_OK


async def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    await run_demo(args.database_url, concurrency=args.concurrency, plot_path=args.plot)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobkit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def db_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--database-url", default=None,
                       help="database URL (default: $JOBKIT_DATABASE_URL or ./jobkit.db)")

    p = sub.add_parser("work", help="run a worker until SIGINT/SIGTERM (or --burst)")
    db_arg(p)
    p.add_argument("--concurrency", type=int, default=None, help="jobs at once (default 1)")
    p.add_argument("--poll-interval", type=float, default=None,
                   help="seconds between polls when idle (default 2)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it registers handlers); repeatable")
    p.add_argument("--burst", action="store_true", help="exit when nothing is eligible")
    p.add_argument("--force", action="store_true",
                   help="run even when JOBKIT_WORKER_ENABLED is false")
    p.set_defaults(func=cmd_work)

    p = sub.add_parser("demo", help="upload sample videos, drain, print the outcome")
    p.add_argument("--database-url", default=None,
                   help="default: a fresh SQLite file in a temporary folder")
    p.add_argument("--concurrency", type=int, default=5)
    p.add_argument("--plot", default=None, help="write a PNG of the clip scores here")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    func: Command = args.func
    try:
        return asyncio.run(func(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except JobkitError as exc:
        if args.debug:
            raise
        print(f"jobkit {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
