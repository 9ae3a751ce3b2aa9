"""``jobkit init`` and ``jobkit migrate``: the database's schema."""

from __future__ import annotations

import argparse
import sys

from ..config import Settings
from ..errors import DatabaseURLError, SchemaError
from .common import (
    EXIT_OK,
    DatabaseUnavailable,
    UsageError,
    backend_for_url,
    open_engine,
    opened,
    settings_of,
    url_error,
)
from .output import out
from .registry import command


@command("init", "create the jobkit tables (idempotent)")
async def cmd_init(args: argparse.Namespace) -> int:
    from ..schema import read_state
    from ..urls import redact_url

    async with opened(args, create=True) as runner:
        url = redact_url(runner.engine.url)
        state = await read_state(runner.engine)
        out(args, {"database_url": url, "backend": runner.backend,
                   "schema_revision": state.revision,
                   "schema_version": int(state.revision or 0)},
            f"jobkit schema ready in {url} (revision {state.revision})")
    return EXIT_OK


def _migrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sql", action="store_true",
                   help="print the upgrade's SQL (one transaction) for a DBA instead of running it")
    p.add_argument("--from", dest="from_revision", default=None, metavar="REVISION",
                   help="with --sql: the database's revision, so it is not asked: base (an "
                        "empty database), 0.1.0 (made by jobkit 0.1.0) or a revision id")


@command("migrate", "upgrade the database's schema to this jobkit's newest revision "
                    "(or print the SQL with --sql)", _migrate_arguments)
async def cmd_migrate(args: argparse.Namespace) -> int:
    from ..schema import describe_change, upgrade
    from ..urls import redact_url

    settings = settings_of(args)
    if args.sql:
        start = args.from_revision or await _sql_start(settings)
        sys.stdout.write(_offline_sql(settings.database_url, start))
        return EXIT_OK
    if args.from_revision:
        raise UsageError("--from goes with --sql (a live database says where it is)")
    try:
        engine = await open_engine(settings)
    except DatabaseURLError as exc:
        raise url_error(args, exc) from None
    try:
        before, after = await upgrade(engine)
    finally:
        await engine.dispose()
    url = redact_url(settings.database_url)
    change = describe_change(before, after)
    human = f"{change} in {url}" if change else \
        f"jobkit schema in {url} is current (revision {after.revision})"
    out(args, {"database_url": url, "from_revision": before.revision,
               "revision": after.revision, "head": after.head,
               "upgraded": change is not None}, human)
    return EXIT_OK


async def _sql_start(settings: Settings) -> str:
    """Where the database is, for ``migrate --sql`` without ``--from`` (read-only)."""
    from ..schema import FROM_EMPTY, FROM_V010, read_state

    url = settings.database_url
    backend = backend_for_url(url)
    if backend is not None and backend.missing_file(url) is not None:
        return FROM_EMPTY
    try:
        engine = await open_engine(settings)
    except DatabaseUnavailable as exc:
        raise DatabaseUnavailable(f"{exc}; to print the SQL without connecting, say where the "
                                  "database is with --from base|0.1.0|REVISION") from None
    try:
        state = await read_state(engine)
    finally:
        await engine.dispose()
    if state.status == "newer":
        from ..errors import SchemaTooNew
        from ..urls import redact_url
        from ..version import __version__

        raise SchemaTooNew(redact_url(url), str(state.revision), state.head, __version__)
    if state.revision is None:
        return FROM_EMPTY
    return state.revision if state.stamped else FROM_V010


def _offline_sql(url: str, start: str) -> str:
    from ..schema import offline_sql

    try:
        return offline_sql(url, start)
    except SchemaError as exc:
        raise UsageError(f"--from: {exc}") from None
