"""Failure alerts: POST a JSON alert to ``JOBKIT_ALERT_URL`` for every job that ends ``failed``.

The hook subscribes to a runner's events. Delivery runs in background tasks, so a
slow or dead receiver never holds a worker slot; each alert is retried with an
exponential backoff and a per-request timeout, and one that cannot be delivered
is logged (never raised). ``jobkit work``, ``jobkit drain``, ``jobkit step`` and
``jobkit serve`` enable it whenever the URL is set; in code::

    from jobkit.alerts import enable_alerts
    hook = enable_alerts(runner)                   # None when no URL is configured
    ...
    await hook.aclose()                             # wait (bounded) for alerts in flight

Deliberate cancellations (``jobkit cancel``) end ``failed`` too but are not alerted.
HTTP goes through httpx when it is installed (the ``api`` extra), else through the
standard library's urllib in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .jsonutil import dumps
from .urls import check_alert_url, safe_url

if TYPE_CHECKING:
    from .events import EventBus
    from .runner import Runner

log = logging.getLogger("jobkit")

USER_AGENT = "jobkit-alerts/1"


class AlertError(Exception):
    """One delivery attempt failed (network error, timeout or a non-2xx answer)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def build_alert(event: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The JSON body sent for one failed job."""
    return {
        "source": "jobkit",
        "alert": "job_failed",
        "event": event,
        "job_id": payload.get("job_id"),
        "job_type": payload.get("job_type"),
        "status": "failed",
        "error": payload.get("error"),
        "attempts": payload.get("attempt"),
        "max_attempts": payload.get("max_attempts"),
        "worker_id": payload.get("worker_id"),
        "host": socket.gethostname(),
        "time": datetime.now(UTC).isoformat(),
    }


def _post_urllib(url: str, body: bytes, timeout: float) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - configured URL
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def post_json(url: str, body: bytes, timeout: float) -> None:
    """POST ``body`` once; raises :class:`AlertError` unless the answer is 2xx."""
    try:
        import httpx
    except ImportError:  # no api extra: the standard library, off the event loop
        try:
            status = await asyncio.wait_for(asyncio.to_thread(_post_urllib, url, body, timeout),
                                            timeout + 1)
        except (OSError, TimeoutError, ValueError) as exc:
            raise AlertError(f"{type(exc).__name__}: {exc}") from None
    else:
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                resp = await client.post(url, content=body, headers={
                    "Content-Type": "application/json", "User-Agent": USER_AGENT})
            status = resp.status_code
        except (httpx.HTTPError, OSError, ValueError) as exc:
            raise AlertError(f"{type(exc).__name__}: {exc}") from None
    if not 200 <= status < 300:
        # A client error will not heal by retrying (except timeouts and rate limits).
        raise AlertError(f"HTTP {status}",
                         retryable=status >= 500 or status in (408, 425, 429))


class AlertHook:
    """Sends one alert per job that ends ``failed``.

    Args:
        url: where to POST the JSON alert.
        timeout: seconds per delivery attempt.
        retries: further attempts after the first one fails.
        backoff: seconds before the first retry; doubles each time.
    """

    def __init__(self, url: str, *, timeout: float = 5.0, retries: int = 3,
                 backoff: float = 0.5) -> None:
        check_alert_url(url)
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.sent = 0
        self.undelivered = 0
        self._tasks: set[asyncio.Task[bool]] = set()
        self._buses: list[EventBus] = []

    def __repr__(self) -> str:
        return (f"<AlertHook {safe_url(self.url)} sent={self.sent} undelivered={self.undelivered} "
                f"in_flight={len(self._tasks)}>")

    # -- wiring --------------------------------------------------------------------------
    def attach(self, events: EventBus) -> AlertHook:
        """Subscribe to ``failed`` (and ``lost`` jobs whose retries are spent)."""
        events.on("failed", self.on_event)
        events.on("lost", self.on_event)
        self._buses.append(events)
        return self

    def detach(self) -> None:
        for bus in self._buses:
            bus.off("failed", self.on_event)
            bus.off("lost", self.on_event)
        self._buses.clear()

    def on_event(self, event: str, payload: dict[str, Any]) -> None:
        """The subscriber: schedules a delivery and returns at once."""
        if payload.get("status") != "failed":
            return  # a lost attempt that will be retried
        if payload.get("error") == "cancelled":
            return  # someone asked for it
        alert = build_alert(event, payload)
        task = asyncio.get_running_loop().create_task(self.deliver(alert),
                                                      name=f"jobkit-alert-{alert['job_id']}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- delivery ------------------------------------------------------------------------
    async def deliver(self, alert: dict[str, Any]) -> bool:
        """POST one alert with retries; True when delivered. Never raises an error."""
        body = dumps(alert).encode()
        delay = self.backoff
        last = ""
        for attempt in range(1, self.retries + 2):
            try:
                await post_json(self.url, body, self.timeout)
            except AlertError as exc:
                last = str(exc)
                if not exc.retryable or attempt > self.retries:
                    break
                log.warning("alert for job %s: attempt %s failed (%s); retrying in %.2gs",
                            alert.get("job_id"), attempt, last, delay)
                await asyncio.sleep(delay)
                delay *= 2
            except Exception as exc:  # noqa: BLE001 - an alert must never break the worker
                last = f"{type(exc).__name__}: {exc}"
                break
            else:
                self.sent += 1
                log.info("alert sent for failed job %s", alert.get("job_id"))
                return True
        self.undelivered += 1
        log.error("alert for failed job %s not delivered to %s: %s", alert.get("job_id"),
                  safe_url(self.url), last.replace(self.url, safe_url(self.url)))
        return False

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop listening and wait for alerts in flight (at most ``timeout`` seconds)."""
        self.detach()
        pending = set(self._tasks)
        if not pending:
            return
        limit = timeout if timeout is not None else self.timeout * (self.retries + 1) + 1
        done, still = await asyncio.wait(pending, timeout=limit)
        for task in still:
            task.cancel()
        if still:
            log.error("%s alert(s) still in flight at shutdown were dropped", len(still))
            await asyncio.gather(*still, return_exceptions=True)


def enable_alerts(runner: Runner, url: str | None = None, **kwargs: Any) -> AlertHook | None:
    """Send an alert for every job this runner's workers fail for good.

    Uses ``url`` or the runner's ``alert_url`` setting (``JOBKIT_ALERT_URL``); returns
    None when neither is set. Timeout and retries come from the settings unless given.
    """
    target = url or runner.settings.alert_url
    if not target:
        return None
    kwargs.setdefault("timeout", runner.settings.alert_timeout)
    kwargs.setdefault("retries", runner.settings.alert_retries)
    return AlertHook(target, **kwargs).attach(runner.events)


__all__ = ["AlertError", "AlertHook", "build_alert", "enable_alerts", "post_json"]
