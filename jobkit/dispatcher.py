"""The dispatch table: ``job_type`` → async handler ``(job, db) -> dict``."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from .errors import HandlerExistsError, UnknownJobType
from .handlers.cut_analysis import run_cut_analysis
from .models import Job

Handler = Callable[[Job, AsyncSession], Awaitable[Any]]
H = TypeVar("H", bound=Handler)
T = TypeVar("T")

#: The default handler table. Register more with :func:`handler` or :func:`register_handler`.
DISPATCH_TABLE: dict[str, Handler] = {
    "cut_analysis": run_cut_analysis,
}


def register_handler(name: str, fn: Handler, *, replace: bool = False,
                     table: dict[str, Handler] | None = None) -> Handler:
    """Register ``fn`` as the handler of jobs of type ``name``.

    Raises:
        HandlerExistsError: ``name`` is taken and ``replace`` is false.
        TypeError: ``fn`` is not an ``async def`` function.
    """
    table = DISPATCH_TABLE if table is None else table
    if not isinstance(name, str) or not name:
        raise TypeError(f"a handler name must be a non-empty string, got {name!r}")
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"handler {name!r} must be an `async def` function taking (job, db); "
            "run blocking code inside it with `await jobkit.run_blocking(fn, *args)`")
    if name in table and table[name] is not fn and not replace:
        raise HandlerExistsError(name)
    table[name] = fn
    return fn


def handler(name: str | None = None, *, replace: bool = False) -> Callable[[H], H]:
    """Decorator: ``@jobkit.handler("resize")`` registers the function under that name."""

    def decorate(fn: H) -> H:
        register_handler(name or fn.__name__, fn, replace=replace)
        return fn

    return decorate


def unregister_handler(name: str) -> None:
    """Remove a handler (jobs of that type will then fail as unknown)."""
    DISPATCH_TABLE.pop(name, None)


async def dispatch_job(job: Job, db: AsyncSession,
                       table: dict[str, Handler] | None = None) -> Any:
    """Run ``job``'s handler. Raises :class:`UnknownJobType` (a ``KeyError``) if none."""
    table = DISPATCH_TABLE if table is None else table
    try:
        fn = table[job.job_type]
    except KeyError:
        raise UnknownJobType(job.job_type, table) from None
    return await fn(job, db)


async def run_blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a blocking function in a thread so the worker's event loop keeps serving.

    A handler that blocks the loop stops heartbeats and timeouts for every job of its
    worker; wrap CPU-bound or blocking I/O calls with this.
    """
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
