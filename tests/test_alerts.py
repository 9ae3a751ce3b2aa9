"""Failure alerts: a local HTTP receiver gets exactly one alert per job failed for good."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import jobkit
from jobkit import alerts, queue
from jobkit.alerts import AlertHook, enable_alerts
from jobkit.models import JobStatus

JOBKIT_BIN = str(Path(sys.executable).parent / "jobkit")


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POSTed JSON body."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.requests = 0
        self.statuses = list(statuses or [])  # answers to give first (then 200)
        self.got_one = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests += 1
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 200:
                    receiver.bodies.append(json.loads(body))
                    receiver.got_one.set()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/alerts"  # nothing listens here any more


async def test_a_job_failing_for_good_sends_exactly_one_alert(
        runner: jobkit.Runner, receiver: Receiver) -> None:
    @runner.handler("broken")
    async def broken(job: jobkit.Job, db: Any) -> None:
        raise ValueError("the disk is full")

    hook = enable_alerts(runner, url=receiver.url, backoff=0.01)
    assert hook is not None
    job = await runner.enqueue("broken", {"n": 1}, max_retries=1, allow_unknown=True)
    await runner.upload_video("fine.mp4", duration_ms=20_000)
    stats = await runner.drain(concurrency=2, progress=False)
    assert (stats.failed, stats.retried, stats.completed) == (1, 1, 1)
    assert await asyncio.to_thread(receiver.got_one.wait, 10), "no alert arrived"
    await hook.aclose()
    assert receiver.requests == 1 and len(receiver.bodies) == 1
    alert = receiver.bodies[0]
    assert alert["alert"] == "job_failed" and alert["status"] == "failed"
    assert alert["job_id"] == str(job.id) and alert["job_type"] == "broken"
    assert alert["error"] == "ValueError: the disk is full"
    assert alert["attempts"] == 2 and alert["max_attempts"] == 2
    assert hook.sent == 1 and hook.undelivered == 0


async def test_receiver_down_the_worker_keeps_working(
        runner: jobkit.Runner, caplog: pytest.LogCaptureFixture) -> None:
    hook = AlertHook(closed_port_url(), timeout=2, retries=2, backoff=0.01)
    hook.attach(runner.events)

    @runner.handler("hopeless")
    async def hopeless(job: jobkit.Job, db: object) -> None:
        raise jobkit.PermanentError("cannot succeed")

    bad = await runner.enqueue("hopeless", {}, allow_unknown=True)
    good = [(await runner.upload_video(f"v{i}.mp4", duration_ms=20_000))[1] for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="jobkit"):
        stats = await runner.drain(concurrency=2, progress=False)
        await hook.aclose()
    assert stats.failed == 1 and stats.completed == 3
    assert (await runner.get_job(bad.id)).status is JobStatus.FAILED
    for job in good:
        assert (await runner.get_job(job.id)).status is JobStatus.COMPLETED
    assert hook.sent == 0 and hook.undelivered == 1
    failures = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(failures) == 1 and str(bad.id) in failures[0]
    # The worker is still usable afterwards.
    await runner.upload_video("after.mp4", duration_ms=20_000)
    assert (await runner.step())["status"] == "completed"


async def test_alert_is_retried_after_a_server_error_but_not_after_a_client_error(
        runner: jobkit.Runner) -> None:
    with Receiver(statuses=[503, 500]) as flaky:
        hook = AlertHook(flaky.url, retries=3, backoff=0.01).attach(runner.events)
        await runner.enqueue("no_such_type", {}, allow_unknown=True)
        await runner.step()
        assert await asyncio.to_thread(flaky.got_one.wait, 10)
        await hook.aclose()
        assert flaky.requests == 3 and len(flaky.bodies) == 1 and hook.sent == 1
    with Receiver(statuses=[400]) as refusing:
        hook = AlertHook(refusing.url, retries=3, backoff=0.01).attach(runner.events)
        await runner.enqueue("no_such_type", {}, allow_unknown=True)
        await runner.step()
        await hook.aclose()
        assert refusing.requests == 1 and hook.undelivered == 1


async def test_no_alert_for_cancellations_retries_or_successes(
        runner: jobkit.Runner, receiver: Receiver) -> None:
    @runner.handler("flaky")
    async def flaky(job: jobkit.Job, db: Any) -> dict[str, Any]:
        if job.attempts == 1:
            raise RuntimeError("first try fails")
        return {"ok": True}

    hook = enable_alerts(runner, url=receiver.url)
    assert hook is not None
    await runner.enqueue("flaky", {}, allow_unknown=True)
    assert (await runner.step())["status"] == "retry"
    assert (await runner.step())["status"] == "completed"
    # A running job cancelled on request ends failed without an alert.
    hook.on_event("failed", {"job_id": "x", "status": "failed", "error": "cancelled"})
    hook.on_event("lost", {"job_id": "y", "status": "retry"})
    await hook.aclose()
    assert receiver.requests == 0


async def test_a_lost_job_with_no_retries_left_alerts(runner: jobkit.Runner,
                                                      receiver: Receiver) -> None:
    job = await runner.enqueue("x", {}, max_retries=0, allow_unknown=True)
    async with runner.sessions() as db:  # its worker died: the lease is already over
        await queue.claim_jobs(db, 1, worker_id="ghost", lease_seconds=-1)
    hook = enable_alerts(runner, url=receiver.url, backoff=0.01)
    await runner.drain(progress=False)  # the worker's reaper recovers it: failed
    assert hook is not None
    await hook.aclose()
    assert (await runner.get_job(job.id)).status is JobStatus.FAILED
    assert [b["job_id"] for b in receiver.bodies] == [str(job.id)]
    assert receiver.bodies[0]["event"] == "lost"


def test_no_url_no_hook_and_bad_urls_refused(runner: jobkit.Runner) -> None:
    assert enable_alerts(runner) is None
    with pytest.raises(ValueError, match="http"):
        AlertHook("ftp://example.com/x")
    with pytest.raises(jobkit.ConfigError, match="JOBKIT_ALERT_URL"):
        jobkit.Settings.from_env({"JOBKIT_ALERT_URL": "hooks.example.com/x"})


async def test_urllib_fallback_without_httpx(receiver: Receiver,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # `import httpx` now raises ImportError
    await alerts.post_json(receiver.url, b'{"via": "urllib"}', timeout=5)
    assert receiver.bodies == [{"via": "urllib"}]
    with pytest.raises(alerts.AlertError):
        await alerts.post_json(closed_port_url(), b"{}", timeout=2)


async def test_jobkit_drain_sends_alerts_when_configured(sqlite_url: str,
                                                         receiver: Receiver) -> None:
    async with await jobkit.open(sqlite_url) as runner:
        job = await runner.enqueue("cut_analysis", {"video_asset_id": str(uuid.uuid4())})
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBKIT_")}
    env["JOBKIT_ALERT_URL"] = receiver.url
    proc = await asyncio.to_thread(
        subprocess.run, [JOBKIT_BIN, "drain", "--database-url", sqlite_url, "--json"],
        capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["failed"] == 1
    assert receiver.got_one.is_set(), "the command waited for its alert before exiting"
    assert [b["job_id"] for b in receiver.bodies] == [str(job.id)]
    assert "not found" in receiver.bodies[0]["error"]
