"""The dispatch table: ``job_type`` → async handler ``(job, db) -> dict``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from .blocking import run_blocking as run_blocking  # its home before blocking.py
from .checks import check_max_running
from .errors import HandlerExistsError, InvalidHandler, UnknownJobType
from .handlers.cut_analysis import run_cut_analysis
from .models import Job

Handler = Callable[[Job, AsyncSession], Awaitable[Any]]
H = TypeVar("H", bound=Handler)
T = TypeVar("T")

#: The default handler table. Register more with :func:`handler` or :func:`register_handler`.
DISPATCH_TABLE: dict[str, Handler] = {
    "cut_analysis": run_cut_analysis,
}


@dataclass(frozen=True)
class HandlerOptions:
    """What a handler says about its jobs: their default queue and a global limit."""

    queue: str | None = None
    max_running: int | None = None


_OPTIONS_ATTR = "__jobkit_options__"


def handler_options(table: Mapping[str, Handler], name: str) -> HandlerOptions:
    """The options registered with the handler of ``name`` in ``table`` (defaults if none)."""
    fn = table.get(name)
    found = getattr(fn, _OPTIONS_ATTR, None)
    return found if isinstance(found, HandlerOptions) else HandlerOptions()


def register_handler(name: str, fn: Handler, *, replace: bool = False,
                     table: dict[str, Handler] | None = None, queue: str | None = None,
                     max_running: int | None = None) -> Handler:
    """Register ``fn`` as the handler of jobs of type ``name``.

    Args:
        queue: the queue its jobs go to when enqueued without one.
        max_running: at most this many of its jobs run at once across every worker
            (stored in the database when a worker starts).

    Raises:
        HandlerExistsError: ``name`` is taken and ``replace`` is false.
        InvalidHandler (a TypeError): ``fn`` is not an ``async def`` function.
    """
    table = DISPATCH_TABLE if table is None else table
    if not isinstance(name, str) or not name:
        raise TypeError(f"a handler name must be a non-empty string, got {name!r}")
    if not inspect.iscoroutinefunction(fn):
        raise InvalidHandler(
            f"handler {name!r} must be an `async def` function taking (job, db), not a plain "
            f"`def`; "
            "run blocking code inside it with `await jobkit.run_blocking(fn, *args)`")
    if queue is not None:
        from .checks import check_queue

        check_queue(queue)
    check_max_running(max_running)
    entry = fn
    if queue is not None or max_running is not None:
        options = HandlerOptions(queue=queue, max_running=max_running)
        try:
            setattr(fn, _OPTIONS_ATTR, options)
        except AttributeError:  # a bound method: carry the options on a thin wrapper
            bound = fn

            @functools.wraps(bound)
            async def entry(job: Job, db: AsyncSession) -> Any:
                return await bound(job, db)

            setattr(entry, _OPTIONS_ATTR, options)
    if name in table and table[name] is not fn and table[name] is not entry and not replace:
        raise HandlerExistsError(name)
    table[name] = entry
    return fn


def check_job(job_type: Any, params: Any = None, *, table: dict[str, Handler] | None = None,
              allow_unknown: bool = False) -> None:
    """Refuse, before anything is written, a ``job_type`` with no handler in ``table``
    (:class:`UnknownJobType`, unless ``allow_unknown``) and params that the handler's own
    ``check_params`` (e.g. ``cut_analysis`` needs a ``video_asset_id``) or JSON refuse
    (:class:`InvalidParams`)."""
    from .checks import check_name
    from .jsonutil import check_params

    table = DISPATCH_TABLE if table is None else table
    check_name("job_type", job_type)
    fn = table.get(job_type)
    if fn is None:
        if not allow_unknown:
            raise UnknownJobType(job_type, table)
        return
    check = getattr(fn, "check_params", None)
    if check is not None:
        check(check_params(params))


def handler(name: str | None = None, *, replace: bool = False, queue: str | None = None,
            max_running: int | None = None) -> Callable[[H], H]:
    """Decorator: ``@jobkit.handler("resize")`` registers the function under that name.

    ``queue="video"`` makes it the default queue of its jobs; ``max_running=2`` lets at
    most two of them run at once across every worker and process.
    """

    def decorate(fn: H) -> H:
        register_handler(name or fn.__name__, fn, replace=replace, queue=queue,
                         max_running=max_running)
        return fn

    return decorate


async def dispatch_job(job: Job, db: AsyncSession,
                       table: dict[str, Handler] | None = None) -> Any:
    """Run ``job``'s handler. Raises :class:`UnknownJobType` (a ``KeyError``) if none."""
    table = DISPATCH_TABLE if table is None else table
    try:
        fn = table[job.job_type]
    except KeyError:
        raise UnknownJobType(job.job_type, table) from None
    return await fn(job, db)
