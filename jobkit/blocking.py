"""Blocking code in a handler, off the event loop. A foundation module: handlers import it
without importing the dispatcher that imports them."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def run_blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a blocking function in a thread so the worker's event loop keeps serving.

    A handler that blocks the loop stops heartbeats and timeouts for every job of its
    worker; wrap CPU-bound or blocking I/O calls with this.
    """
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
