"""What every ``jobkit`` command shares: exit codes, its settings, its runner, ``--import``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import ConfigError, DatabaseURLError, JobkitError
from .registry import EXIT_USAGE as EXIT_USAGE

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ..runner import Runner

EXIT_OK, EXIT_ERROR, EXIT_DISABLED, EXIT_INTERRUPTED = 0, 1, 3, 130
EXIT_NOT_FOUND, EXIT_DATABASE = 4, 5


class UsageError(JobkitError):
    """A command-line argument jobkit cannot use (exit code 2)."""


class DatabaseUnavailable(JobkitError):
    """The database cannot be reached or is not a jobkit database (exit code 5)."""


def settings_of(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The command's settings: ``$JOBKIT_*`` with ``--database-url`` and ``overrides``."""
    url = getattr(args, "database_url", None)
    try:
        return Settings.from_env(database_url=url, **overrides)
    except DatabaseURLError as exc:
        raise url_error(args, exc) from None


def url_error(args: argparse.Namespace, exc: ConfigError) -> ConfigError:
    """A URL error naming where the URL came from (--database-url, not the variable)."""
    if getattr(args, "database_url", None) is None:
        return exc
    return DatabaseURLError("--database-url", exc.value, exc.expected)


def import_modules(names: list[str]) -> None:
    """Import the ``--import`` modules (they register handlers)."""
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


async def open_runner(args: argparse.Namespace, *, create: bool = False,
                      settings: Settings | None = None, check_schema: bool = True) -> Runner:
    """A Runner on the command's database, checked reachable and at this jobkit's schema
    (created when ``create``; upgraded as :func:`jobkit.open` does)."""
    from ..runner import Runner as RunnerClass
    from ..schema import ensure_schema

    settings = settings or settings_of(args)
    url = settings.database_url
    backend = backend_for_url(url)
    if backend is not None and not create:
        path = backend.missing_file(url)
        if path is not None:
            raise DatabaseUnavailable(f"no database at {path}; create it with `jobkit init` "
                                      "(or pass --database-url)")
    try:
        engine = await open_engine(settings)
    except DatabaseURLError as exc:
        raise url_error(args, exc) from None
    try:
        if check_schema:
            await ensure_schema(engine, settings, create=create)
    except BaseException:
        await engine.dispose()
        raise
    return RunnerClass(engine, settings)


@contextlib.asynccontextmanager
async def opened(args: argparse.Namespace, *, create: bool = False,
                 settings: Settings | None = None, check_schema: bool = True,
                 alerts: bool = False, runner: Runner | None = None) -> AsyncIterator[Runner]:
    """The command's runner (:func:`open_runner`, or ``runner`` when given), closed on the way
    out; with ``alerts``, failed jobs are alerted meanwhile (``JOBKIT_ALERT_URL``) and the
    alerts in flight are delivered before it closes."""
    if runner is None:
        runner = await open_runner(args, create=create, settings=settings,
                                   check_schema=check_schema)
    hook = None
    try:
        if alerts:
            from ..alerts import enable_alerts

            hook = enable_alerts(runner)
        yield runner
    finally:
        if hook is not None:
            await hook.aclose()
        await runner.close()


async def open_engine(settings: Settings) -> AsyncEngine:
    """An engine on the settings' database, checked reachable."""
    from ..database import check_database, create_engine

    url = settings.database_url
    backend = backend_for_url(url)
    engine = create_engine(url, settings=settings,
                           connect_args=backend.connect_timeout(10) if backend else {})
    try:
        await check_database(engine)
    except JobkitError as exc:
        await engine.dispose()
        raise DatabaseUnavailable(str(exc)) from None
    return engine


def backend_for_url(url: str) -> Any:
    """The backend a URL names, or None for a URL no backend takes (``create_engine`` then
    says what is wrong with it)."""
    from sqlalchemy.exc import ArgumentError

    from ..backends import backend_of

    try:
        return backend_of(url)
    except (ValueError, ArgumentError):
        return None
