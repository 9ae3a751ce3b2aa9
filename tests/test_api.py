"""The HTTP API: httpx against the ASGI app on both backends, and `jobkit serve` for real."""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import count_jobs
from sqlalchemy import func, select

import jobkit
from jobkit.api import create_app
from jobkit.models import VideoAsset, utcnow, workers_table
from jobkit.video import make_test_video

JOBKIT_BIN = str(Path(sys.executable).parent / "jobkit")


@pytest.fixture
def media(tmp_path: Path) -> Path:
    return tmp_path / "media"


def api_settings(runner: jobkit.Runner, media: Path, **changes: Any) -> jobkit.Settings:
    values: dict[str, Any] = {"dev_endpoints": True, "media_dir": str(media),
                              "max_upload_bytes": 10_000, **changes}
    return runner.settings.replace(**values)


@pytest.fixture
async def client(runner: jobkit.Runner, media: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(api_settings(runner, media), runner=runner)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://jobkit.test") as c:
        yield c


async def count_assets(runner: jobkit.Runner) -> int:
    async with runner.sessions() as db:
        return int((await db.execute(select(func.count()).select_from(VideoAsset))).scalar_one())


def media_files(media: Path) -> list[str]:
    return sorted(os.listdir(media)) if media.exists() else []


# ------------------------------------------------------------------------------------
# The seed's flow and job control
# ------------------------------------------------------------------------------------


async def test_seed_flow_upload_process_get(client: httpx.AsyncClient,
                                            runner: jobkit.Runner) -> None:
    up = await client.post("/upload", json={"filename": "match.mp4", "duration": 60000})
    assert up.status_code == 201, up.text
    body = up.json()
    assert body["status"] == "pending" and body["job_type"] == "cut_analysis"
    assert body["stored"] is False

    pending = await client.get(f"/jobs/{body['job_id']}")
    assert pending.status_code == 200 and pending.json()["status"] == "pending"

    processed = await client.post("/jobs/process")
    assert processed.status_code == 200
    summary = processed.json()
    assert set(summary) == {"processed", "job_id", "job_type", "status", "result",
                            "processing_time_ms", "error"}
    assert summary["job_id"] == body["job_id"] and summary["status"] == "completed"
    assert summary["result"]["clips_created"] == 3 and summary["error"] is None

    got = (await client.get(f"/jobs/{body['job_id']}")).json()
    assert got["status"] == "completed" and got["result"] == summary["result"]
    assert got["attempts"] == 1 and got["processing_time_ms"] is not None

    empty = await client.post("/jobs/process")
    assert empty.json() == {"processed": False, "message": "No pending jobs in queue"}

    listed = (await client.get("/jobs", params={"status": "completed", "limit": 5})).json()
    assert listed["count"] == 1 and listed["jobs"][0]["id"] == body["job_id"]
    assert (await client.get("/jobs", params={"status": "pending"})).json()["count"] == 0


async def test_unknown_ids_are_404_and_bad_queries_422(client: httpx.AsyncClient) -> None:
    for path in (f"/jobs/{uuid.uuid4()}", "/jobs/not-a-uuid"):
        r = await client.get(path)
        assert r.status_code == 404 and "no job with id" in r.json()["detail"]
    for action in ("retry", "cancel"):
        r = await client.post(f"/jobs/{uuid.uuid4()}/{action}")
        assert r.status_code == 404
    r = await client.get("/jobs", params={"status": "lost"})
    assert r.status_code == 422 and r.json()["detail"].startswith("status:")
    r = await client.get("/jobs", params={"limit": 0})
    assert r.status_code == 422 and "limit" in r.json()["detail"]


async def test_enqueue_retry_cancel(client: httpx.AsyncClient, runner: jobkit.Runner) -> None:
    @runner.handler("always_fails")
    async def always_fails(job: jobkit.Job, db: Any) -> None:
        raise jobkit.PermanentError("nope")

    r = await client.post("/jobs", json={"job_type": "always_fails", "params": {"n": 1},
                                         "priority": 5, "max_retries": 0})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "pending" and job["priority"] == 5 and job["max_attempts"] == 1
    assert (await client.post("/jobs/process")).json()["status"] == "failed"

    retried = await client.post(f"/jobs/{job['id']}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    again = await client.post(f"/jobs/{job['id']}/retry")
    assert again.status_code == 409 and "only failed or retry" in again.json()["detail"]
    cancelled = await client.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "failed" and cancelled.json()["error"] == "cancelled"
    twice = await client.post(f"/jobs/{job['id']}/cancel")
    assert twice.status_code == 409


@pytest.mark.parametrize(("body", "words"), [
    ({"job_type": "no_such_type"}, "unknown job_type 'no_such_type'"),
    ({"job_type": "cut_analysis", "params": [1, 2]}, "params:"),
    ({"job_type": "cut_analysis", "priority": "high"}, "priority:"),
    ({"job_type": "cut_analysis", "run_at": "2030-01-01T00:00:00"}, "run_at:"),
    ({"job_type": "cut_analysis", "run_at": "2030-01-01T00:00:00Z", "delay": 5,
      "params": {"video_asset_id": "0190f3a4-0000-7000-8000-000000000000"}},
     "give run_at or delay, not both"),
    ({"job_type": "cut_analysis", "delay": -1}, "delay:"),
    ({"params": {}}, "job_type:"),
])
async def test_enqueue_validation_is_422_with_a_message(
        client: httpx.AsyncClient, runner: jobkit.Runner, body: dict, words: str) -> None:
    r = await client.post("/jobs", json=body)
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]
    assert await count_jobs(runner) == 0


async def test_process_is_404_unless_dev_endpoints(runner: jobkit.Runner, media: Path) -> None:
    app = create_app(api_settings(runner, media, dev_endpoints=False), runner=runner)
    await runner.upload_video("a.mp4", duration_ms=20_000)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        r = await c.post("/jobs/process")
    assert r.status_code == 404 and "JOBKIT_DEV_ENDPOINTS=true" in r.json()["detail"]
    assert await count_jobs(runner, status="pending") == 1, "nothing was processed"


# ------------------------------------------------------------------------------------
# Upload safety
# ------------------------------------------------------------------------------------


async def test_multipart_upload_is_stored_under_a_generated_name(
        client: httpx.AsyncClient, runner: jobkit.Runner, media: Path) -> None:
    data = os.urandom(3000)
    r = await client.post("/upload", files={"file": ("My Match.MP4", data, "video/mp4")},
                          data={"duration_ms": "45000"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["stored"] is True and body["size_bytes"] == 3000
    assert body["filename"] == "My Match.MP4"
    [name] = media_files(media)
    assert re.fullmatch(r"[0-9a-f]{32}\.mp4", name)
    assert (media / name).read_bytes() == data
    asset = await runner.get_asset(body["video_asset_id"])
    assert asset.stored_path == str(media / name) and asset.size_bytes == 3000
    assert asset.duration_ms == 45000


def _multipart(filename: str, payload: bytes, duration: str) -> tuple[bytes, str]:
    boundary = "jobkitboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="duration_ms"\r\n\r\n'
        f"{duration}\r\n".encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{filename}"\r\nContent-Type: video/mp4\r\n\r\n'.encode() + payload + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 4096):
        yield data[i:i + 4096]


@pytest.mark.parametrize("case", [
    "traversal-multipart", "traversal-json", "backslash-json", "oversized-multipart",
    "oversized-chunked", "oversized-json", "non-numeric-multipart", "non-numeric-json",
    "float-json", "zero-duration", "missing-file", "wrong-content-type",
])
async def test_unsafe_uploads_are_rejected_and_nothing_is_written(
        client: httpx.AsyncClient, runner: jobkit.Runner, media: Path, case: str) -> None:
    small = b"x" * 100
    big = b"x" * 50_000  # the limit is 10 000 bytes
    if case == "traversal-multipart":
        r = await client.post("/upload", files={"file": ("../../etc/passwd", small)},
                              data={"duration_ms": "1000"})
        expected, words = 422, "path separator"
    elif case == "traversal-json":
        r = await client.post("/upload", json={"filename": "../../etc/passwd",
                                               "duration_ms": 1000})
        expected, words = 422, "path separator"
    elif case == "backslash-json":
        r = await client.post("/upload", json={"filename": "..\\..\\boot.ini",
                                               "duration_ms": 1000})
        expected, words = 422, "path separator"
    elif case == "oversized-multipart":
        r = await client.post("/upload", files={"file": ("big.mp4", big)},
                              data={"duration_ms": "1000"})
        expected, words = 413, "10000 bytes"
    elif case == "oversized-chunked":  # no Content-Length: the stream itself is counted
        body, ctype = _multipart("big.mp4", big, "1000")
        r = await client.post("/upload", content=_chunks(body),
                              headers={"content-type": ctype})
        assert "content-length" not in r.request.headers
        expected, words = 413, "10000 bytes"
    elif case == "oversized-json":
        r = await client.post("/upload", json={"filename": "a.mp4", "duration_ms": 1,
                                               "pad": "x" * 70_000})
        expected, words = 413, "JSON body larger than"
    elif case == "non-numeric-multipart":
        r = await client.post("/upload", files={"file": ("a.mp4", small)},
                              data={"duration_ms": "sixty seconds"})
        expected, words = 422, "duration_ms: must be a whole number"
    elif case == "non-numeric-json":
        r = await client.post("/upload", json={"filename": "a.mp4", "duration_ms": "abc"})
        expected, words = 422, "duration_ms"
    elif case == "float-json":
        r = await client.post("/upload", json={"filename": "a.mp4", "duration_ms": 1.5})
        expected, words = 422, "duration_ms"
    elif case == "zero-duration":
        r = await client.post("/upload", files={"file": ("a.mp4", small)},
                              data={"duration_ms": "0"})
        expected, words = 422, "between 1"
    elif case == "missing-file":
        r = await client.post("/upload", data={"duration_ms": "1000"},
                              files={"other": ("a.mp4", small)})
        expected, words = 422, "'file' part"
    else:
        r = await client.post("/upload", content=b"filename=a.mp4",
                              headers={"content-type": "text/plain"})
        expected, words = 415, "multipart/form-data"
    assert r.status_code == expected, r.text
    assert words in r.json()["detail"]
    assert media_files(media) == [], "no file was written"
    assert await count_assets(runner) == 0 and await count_jobs(runner) == 0


# ------------------------------------------------------------------------------------
# Health
# ------------------------------------------------------------------------------------


async def _add_worker(runner: jobkit.Runner, wid: str, seconds_ago: float) -> None:
    from datetime import timedelta

    async with runner.sessions() as db:
        beat = utcnow() - timedelta(seconds=seconds_ago)
        await db.execute(workers_table.insert().values(
            id=wid, hostname="h", pid=1, concurrency=1, state="running", jobs_done=0,
            started_at=beat, last_heartbeat_at=beat))
        await db.commit()


async def test_health_needs_a_recent_worker_heartbeat(client: httpx.AsyncClient,
                                                      runner: jobkit.Runner) -> None:
    await runner.upload_video("a.mp4", duration_ms=20_000)
    none = await client.get("/health")
    assert none.status_code == 503
    body = none.json()
    assert body["status"] == "unhealthy" and body["database"] == "ok"
    assert body["workers_alive"] == 0 and body["queue_depth"] == 1
    assert "heartbeated" in body["problems"][0]

    window = runner.settings.dead_after
    await _add_worker(runner, "silent", seconds_ago=window + 5)
    stale = await client.get("/health")
    assert stale.status_code == 503 and stale.json()["workers_alive"] == 0

    await _add_worker(runner, "fresh", seconds_ago=1)
    ok = await client.get("/health")
    assert ok.status_code == 200, ok.text
    assert ok.json() == {**ok.json(), "status": "ok", "workers_alive": 1, "problems": []}


async def _aiosqlite_threads_gone(timeout: float = 10) -> None:
    """aiosqlite stops the thread of a failed connect without awaiting it: let it finish
    while our event loop still runs (else it reports "Event loop is closed")."""
    deadline = time.monotonic() + timeout
    while any("_connection_worker_thread" in t.name for t in threading.enumerate()):
        assert time.monotonic() < deadline, "aiosqlite threads still running"
        await asyncio.sleep(0.01)


async def test_health_is_503_when_the_database_is_unreachable(
        backend: str, tmp_path: Path, media: Path) -> None:
    if backend == "sqlite":
        folder = tmp_path / "gone"
        folder.mkdir()
        url = f"sqlite+aiosqlite:///{folder / 'db.sqlite'}"
    else:
        url = "postgresql+asyncpg://postgres@127.0.0.1:1/jobkit"
    runner = await jobkit.open(url, create_schema=False)
    if backend == "sqlite":
        folder.rmdir()  # the database can no longer be opened
    try:
        app = create_app(runner.settings.replace(media_dir=str(media)), runner=runner)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            r = await c.get("/health")
            m = await c.get("/metrics")
            j = await c.get(f"/jobs/{uuid.uuid4()}")
    finally:
        await runner.close()
        if backend == "sqlite":
            await _aiosqlite_threads_gone()
    assert r.status_code == 503
    assert r.json()["status"] == "unhealthy"
    assert r.json()["database"].startswith("unreachable:")
    assert m.status_code == 503 and m.text.startswith("# database unreachable")
    assert j.status_code == 503 and j.json()["detail"].startswith("database unavailable")


async def test_worker_in_the_app_lifespan(runner: jobkit.Runner, media: Path) -> None:
    """With a worker in the lifespan: uploads get processed, /health is ok, shutdown is clean."""
    app = create_app(api_settings(runner, media), runner=runner, run_worker=True,
                     concurrency=2)
    done = asyncio.Event()
    completed: list[str] = []

    def on_completed(event: str, payload: dict[str, Any]) -> None:
        completed.append(payload["job_id"])
        if len(completed) == 2:
            done.set()

    runner.on("completed", on_completed)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            ids = [(await c.post("/upload", json={"filename": f"{i}.mp4",
                                                  "duration_ms": 30_000})).json()["job_id"]
                   for i in range(2)]
            await asyncio.wait_for(done.wait(), 30)
            health = await c.get("/health")
            jobs = [(await c.get(f"/jobs/{i}")).json()["status"] for i in ids]
        worker = app.state.jobkit.worker
    assert sorted(completed) == sorted(ids) and jobs == ["completed", "completed"]
    assert health.status_code == 200, health.text
    assert health.json()["in_process_worker"] == "running"
    assert worker.state == "stopped"
    async with runner.sessions() as db:
        state = (await db.execute(select(workers_table.c.state).where(
            workers_table.c.id == worker.id))).scalar_one()
    assert state == "stopped"


# ------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"'
                     r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*)?\})? (\S+)$')


def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A strict reader of the Prometheus text format 0.0.4 (what we emit of it)."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            assert name not in types, f"TYPE twice for {name}"
            types[name] = kind
            continue
        if line.startswith("# HELP ") or not line.strip():
            continue
        assert not line.startswith("#"), line
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels_text, value = m.group(1), m.group(3) or "", m.group(5)
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or (family in types and types[family] == "histogram"), line
        labels = tuple(tuple(p.split("=", 1)) for p in labels_text.split(",") if p)
        parsed = float(value.replace("+Inf", "inf"))
        assert not math.isnan(parsed)
        key = (name, tuple((k, v.strip('"')) for k, v in labels))
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = parsed
    return samples


async def test_metrics_parse_and_match_the_database(client: httpx.AsyncClient,
                                                    runner: jobkit.Runner) -> None:
    for i in range(3):
        await runner.upload_video(f"m{i}.mp4", duration_ms=20_000)
    await runner.enqueue("no_such_type", {}, allow_unknown=True)
    for _ in range(4):
        await runner.step()
    await runner.upload_video("waiting.mp4", duration_ms=20_000)
    await runner.enqueue("cut_analysis", {"video_asset_id": str(uuid.uuid4())}, delay=3600)
    await _add_worker(runner, "w1", seconds_ago=0)

    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse_prometheus(r.text)
    for status in ("pending", "processing", "retry", "completed", "failed"):
        assert m[("jobkit_jobs", (("status", status),))] == await count_jobs(runner,
                                                                              status=status)
    assert m[("jobkit_jobs", (("status", "completed"),))] == 3
    assert m[("jobkit_jobs_completed_total", ())] == 3
    assert m[("jobkit_jobs_failed_total", ())] == 1
    assert m[("jobkit_queue_depth", ())] == 1 and m[("jobkit_jobs_scheduled", ())] == 1
    assert m[("jobkit_workers_alive", ())] == 1
    buckets = sorted(((float(lbl[0][1].replace("+Inf", "inf")), v) for (n, lbl), v in m.items()
                      if n == "jobkit_job_processing_seconds_bucket"))
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "histogram buckets are cumulative"
    assert buckets[-1] == (math.inf, 3) and m[("jobkit_job_processing_seconds_count", ())] == 3
    total = m[("jobkit_job_processing_seconds_sum", ())]
    async with runner.sessions() as db:
        from jobkit.models import jobs_table

        rows = (await db.execute(select(jobs_table.c.started_at, jobs_table.c.finished_at)
                                 .where(jobs_table.c.status == "completed"))).all()
    expected = sum((f - s).total_seconds() for s, f in rows)
    assert total == pytest.approx(expected, abs=0.01)


async def test_openapi_schema_is_complete(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    expected = {("/upload", "post"), ("/jobs", "post"), ("/jobs", "get"),
                ("/jobs/{job_id}", "get"), ("/jobs/{job_id}/retry", "post"),
                ("/jobs/{job_id}/explain", "get"),
                ("/jobs/{job_id}/cancel", "post"), ("/jobs/process", "post"),
                ("/health", "get"), ("/metrics", "get"), ("/schedules", "get")}
    assert {(p, m) for p, ops in paths.items() for m in ops} == expected
    for path, method in expected:
        op = paths[path][method]
        assert op.get("summary"), (path, method)
        assert any(code.startswith("2") for code in op["responses"]), (path, method)
    upload = paths["/upload"]["post"]
    assert set(upload["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert {"413", "415", "422"} <= set(upload["responses"])
    assert "404" in paths["/jobs/{job_id}"]["get"]["responses"]
    assert "409" in paths["/jobs/{job_id}/retry"]["post"]["responses"]
    assert "503" in paths["/health"]["get"]["responses"]
    components = schema["components"]["schemas"]
    assert {"JobOut", "UploadOut", "EnqueueIn", "ProcessOut", "HealthOut",
            "ErrorOut", "ScheduleList"} <= set(components)


# ------------------------------------------------------------------------------------
# `jobkit serve`, for real
# ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_jobkit_serve_for_real(sqlite_url: str, tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBKIT_")}
    env.update(JOBKIT_CUT_ANALYSIS_SECONDS="0.01", JOBKIT_DEV_ENDPOINTS="true",
               JOBKIT_MEDIA_DIR=str(tmp_path / "media"))
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([JOBKIT_BIN, "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--database-url", sqlite_url], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            deadline = time.monotonic() + 30
            while True:  # wait for the server to come up (a condition, with a deadline)
                assert proc.poll() is None, "jobkit serve exited early"
                try:
                    if (await c.get("/health")).status_code in (200, 503):
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "jobkit serve did not come up in 30 s"
                await asyncio.sleep(0.1)
            clip = make_test_video(tmp_path / "match.mp4", [2.0, 2.0, 2.0])  # 3 shots
            up = await c.post("/upload", files={"file": ("match.mp4",
                                                         Path(clip.path).read_bytes())})
            assert up.status_code == 201, up.text
            job_id = up.json()["job_id"]
            processed = (await c.post("/jobs/process")).json()
            assert processed["job_id"] == job_id and processed["status"] == "completed"
            got = (await c.get(f"/jobs/{job_id}")).json()
            assert got["status"] == "completed" and got["result"]["clips_created"] == 3
            assert got["result"]["analysis"] == "frames" and got["progress"] == 1.0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    log.seek(0)
    text = log.read()
    assert code == 0, text
    assert "Application shutdown complete" in text and "Traceback" not in text
    assert len(os.listdir(tmp_path / "media")) == 1
