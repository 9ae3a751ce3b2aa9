"""Job events (claimed, completed, retried, failed, lost) for code that wants to react."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("jobkit")

EVENTS = ("claimed", "completed", "retried", "failed", "lost")

Callback = Callable[[str, dict[str, Any]], Any]


class EventBus:
    """Subscribers per event name; a failing subscriber is logged, never fatal."""

    def __init__(self) -> None:
        self._subs: dict[str, list[Callback]] = {name: [] for name in EVENTS}

    def on(self, event: str, callback: Callback) -> Callback:
        """Call ``callback(event, payload)`` (sync or async) on every ``event``."""
        if event not in self._subs:
            raise ValueError(f"unknown event {event!r}; choose from {', '.join(EVENTS)}")
        self._subs[event].append(callback)
        return callback

    def off(self, event: str, callback: Callback) -> None:
        if callback in self._subs.get(event, []):
            self._subs[event].remove(callback)

    def __bool__(self) -> bool:
        return any(self._subs.values())

    async def emit(self, event: str, payload: dict[str, Any]) -> None:
        for cb in list(self._subs.get(event, ())):
            try:
                out = cb(event, payload)
                if inspect.isawaitable(out):
                    await out
            except Exception:  # noqa: BLE001 - a subscriber must not break the worker
                log.exception("event subscriber %r failed on %s", cb, event)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={len(v)}" for k, v in self._subs.items() if v)
        return f"EventBus({counts})"
