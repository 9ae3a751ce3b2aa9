"""Issue 9 (items 2, 3, 4, 6): every face agrees with the README, keeps secrets, refuses
hostile input with one line and writes nothing, and says small things plainly.

Python API through ``runner.*``; the command line through ``jobkit.cli.main([...])`` (in
a thread, as a script would call it) or the real console script where signals, the
current directory or start-up matter; HTTP through httpx against the ASGI app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import count_jobs
from sqlalchemy import func, select, update
from test_worker import wait_until

import jobkit
from jobkit import cli, shapes
from jobkit.api import create_app
from jobkit.errors import InvalidParams, InvalidTransition, UnknownJobType
from jobkit.models import VideoAsset, jobs_table, utcnow, workers_table
from jobkit.urls import redact_url

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
JOBKIT_BIN = str(Path(sys.executable).parent / "jobkit")
SECRET = "s3cretPW"


def cli_env(**settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBKIT_")}
    env.update({"JOBKIT_CUT_ANALYSIS_SECONDS": "0.01", "JOBKIT_RETRY_BACKOFF_BASE": "0",
                "JOBKIT_WORKER_POLL_INTERVAL": "0.2",
                "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])})
    env.update({f"JOBKIT_{k.upper()}": str(v) for k, v in settings.items()})
    return env


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``jobkit ARGV`` in-process (in a thread: it runs its own event loop)."""
    def call() -> int:
        try:
            return cli.main(list(argv))
        except SystemExit as exc:  # argparse refusing an argument
            return int(exc.code or 0)

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    capsys.readouterr()
    try:
        code = await asyncio.to_thread(call)
    finally:  # main() installs its own log handler; give pytest's back
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def media(tmp_path: Path) -> Path:
    return tmp_path / "media"


def make_app(runner: jobkit.Runner, media: Path, **changes: Any) -> Any:
    settings = runner.settings.replace(**{"dev_endpoints": True, "media_dir": str(media),
                                          "max_upload_bytes": 10_000, **changes})
    return create_app(settings, runner=runner)


@pytest.fixture
async def client(runner: jobkit.Runner, media: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app(runner, media)),
                                 base_url="http://jobkit.test") as c:
        yield c


async def count_assets(runner: jobkit.Runner) -> int:
    async with runner.sessions() as db:
        return int((await db.execute(select(func.count()).select_from(VideoAsset))).scalar_one())


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# =====================================================================================
# Item 2: faces that agree with the README
# =====================================================================================
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT inherited as ignored"])
async def test_drain_stops_gracefully_on_signals(db_url: str, runner: jobkit.Runner,
                                                 how: str) -> None:
    await runner.enqueue_many([("sleepy", {"s": 60}) for _ in range(5)], allow_unknown=True)
    ignore_sigint = how.startswith("SIGINT")
    proc = subprocess.Popen(
        [JOBKIT_BIN, "drain", "--concurrency", "2", "--import", "jobs_for_tests",
         "--database-url", db_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=cli_env(shutdown_grace_seconds=0.5),
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint
        else None)
    assert proc.stderr is not None
    started = threading.Event()
    err_lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append(line)
            if line.count("Processing job") and sum("Processing job" in x for x in err_lines) >= 2:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert await asyncio.to_thread(started.wait, 60), "".join(err_lines)
        proc.send_signal(signal.SIGINT if ignore_sigint else signal.SIGTERM)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    await asyncio.to_thread(reader.join, 10)
    assert proc.returncode == 0, "".join(err_lines)
    last = out.strip().splitlines()[-1]
    name = "SIGINT" if ignore_sigint else "SIGTERM"
    assert last.startswith(f"drain stopped by {name}: ran 0 job(s)"), last
    assert "2 released back to the queue; 5 job(s) left in the queue" in last, last
    jobs = [j for j in await _all(runner)]
    assert {str(j["status"]) for j in jobs} == {"pending"}
    assert all(j["attempts"] == 0 for j in jobs), "a released job keeps its attempt"


async def _all(runner: jobkit.Runner) -> list[Any]:
    async with runner.sessions() as db:
        return list((await db.execute(select(jobs_table))).mappings().all())


async def test_unknown_type_is_refused_on_every_face_unless_allowed(
        runner: jobkit.Runner, client: httpx.AsyncClient, db_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnknownJobType, match="allow_unknown=True"):
        await runner.enqueue("nobody", {})
    with pytest.raises(UnknownJobType):
        await runner.enqueue_many([("cut_analysis", {"video_asset_id": str(uuid.uuid4())}),
                                   ("nobody", {})])
    r = await client.post("/jobs", json={"job_type": "nobody"})
    assert r.status_code == 422 and '"allow_unknown": true' in r.json()["detail"]
    code, _, err = await run_cli(capsys, "enqueue", "nobody", "--database-url", db_url)
    assert code == 2 and "--allow-unknown" in one_line(err)
    assert await count_jobs(runner) == 0

    await runner.enqueue("nobody", {}, allow_unknown=True)
    await runner.enqueue_many([("nobody", {})], allow_unknown=True)
    r = await client.post("/jobs", json={"job_type": "nobody", "allow_unknown": True})
    assert r.status_code == 201, r.text
    code, _, err = await run_cli(capsys, "enqueue", "nobody", "--allow-unknown",
                                 "--database-url", db_url)
    assert code == 0, err
    assert await count_jobs(runner, job_type="nobody") == 4
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "refused with `UnknownJobType` unless `allow_unknown=True`" in readme


async def test_prune_without_a_unit_is_refused_with_the_units(
        runner: jobkit.Runner, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    asset, job = await runner.upload_video("a.mp4", duration_ms=20_000)
    await runner.drain(progress=False)
    code, _, err = await run_cli(capsys, "prune", "--older-than", "30", "--database-url",
                                 db_url)
    line = one_line(err)
    assert code == 2 and "no unit" in line and "d (days)" in line and "s (seconds)" in line
    assert await count_jobs(runner) == 1
    code, out, err = await run_cli(capsys, "prune", "--older-than", "30d", "--dry-run",
                                   "--database-url", db_url)
    assert code == 0 and "finished more than 30 days ago" in out, (out, err)


async def test_hints_fit_the_face(runner: jobkit.Runner, client: httpx.AsyncClient,
                                  db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    job = await runner.enqueue("hopeless", {}, allow_unknown=True)
    waiting = await runner.enqueue("elsewhere", {}, allow_unknown=True)
    await runner.cancel(job.id)
    py = str(await runner.explain(job.id))
    assert f"await runner.retry_job('{job.id}')" in py
    code, out, err = await run_cli(capsys, "explain", str(job.id), "--database-url", db_url)
    assert code == 0, err
    assert f"jobkit retry {job.id}" in out and "await" not in out
    code, out, _ = await run_cli(capsys, "explain", str(waiting.id), "--database-url", db_url)
    assert "will fail with UnknownJobType" not in out and "--import MODULE" in out
    assert "jobkit step" in out and "await" not in out
    r = await client.get(f"/jobs/{job.id}/explain")
    assert r.status_code == 200 and f"POST /jobs/{job.id}/retry" in " ".join(r.json()["details"])
    assert "await" not in r.text and "jobkit retry" not in r.text
    missing = uuid.uuid4()
    r = await client.get(f"/jobs/{missing}")
    assert r.status_code == 404 and "GET /jobs" in r.json()["detail"]
    assert "jobkit" not in r.json()["detail"]
    code, _, err = await run_cli(capsys, "show", str(missing), "--database-url", db_url)
    assert code == 4 and "`jobkit jobs`" in one_line(err)


async def test_import_finds_a_module_in_the_current_directory(db_url: str,
                                                              tmp_path: Path) -> None:
    (tmp_path / "my_handlers_here.py").write_text(
        "import jobkit\n\n@jobkit.handler('mine')\nasync def mine(job, db):\n    return {}\n")
    env = cli_env()
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")  # not tests/, nor the current dir
    proc = await asyncio.to_thread(
        subprocess.run, [JOBKIT_BIN, "enqueue", "mine", "--import", "my_handlers_here",
                         "--database-url", db_url, "--json"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["job_type"] == "mine"


async def test_a_url_given_as_an_argument_is_named_as_such(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = f"postgres://u:{SECRET}@db.example/x"
    with pytest.raises(jobkit.DatabaseURLError) as caught:
        await jobkit.open(bad)
    assert "JOBKIT_DATABASE_URL" not in str(caught.value) and SECRET not in str(caught.value)
    assert str(caught.value).startswith("url=")
    code, _, err = await run_cli(capsys, "status", "--database-url", bad)
    line = one_line(err)
    assert code == 2 and "--database-url=" in line
    assert "JOBKIT_DATABASE_URL" not in line and SECRET not in line


async def test_one_duration_of_an_attempt_everywhere(
        runner: jobkit.Runner, handlers: dict, db_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    @runner.handler("takes_a_while")
    async def takes_a_while(job: jobkit.Job, db: Any) -> dict[str, Any]:
        await asyncio.sleep(0.03)
        return {}

    for _ in range(3):
        await runner.enqueue("takes_a_while", {})
        summary = await runner.step()
        shown = shapes.job_dict(await runner.get_job(summary["job_id"]))["processing_time_ms"]
        assert summary["processing_time_ms"] == shown
        code, out, _ = await run_cli(capsys, "show", summary["job_id"], "--json",
                                     "--database-url", db_url)
        assert json.loads(out)["processing_time_ms"] == shown
        explained = str(await runner.explain(summary["job_id"]))
        assert f"Its last attempt ran {shown:,} ms" in explained, (explained, shown)
        code, out, _ = await run_cli(capsys, "step", "--database-url", db_url)  # empty queue
    # the worker's summaries use it too
    await runner.enqueue("takes_a_while", {})
    seen: list[dict[str, Any]] = []
    worker = runner.worker(burst=True, on_done=seen.append)
    await worker.run()
    shown = shapes.job_dict(await runner.get_job(seen[0]["job_id"]))["processing_time_ms"]
    assert seen[0]["processing_time_ms"] == shown


# =====================================================================================
# Item 3: secrets and limits
# =====================================================================================
@pytest.mark.parametrize("url", [
    f"postgresql+asyncpg://u:{SECRET}@h/db",
    f"postgresql+asyncpg://u@h/db?password={SECRET}",
    f"postgresql+asyncpg://u@h/db?ssl=require&sslpassword={SECRET}",
    f"postgresql+asyncpg://u:{SECRET}@h:5432/db?password={SECRET}&application_name=x",
    f"postgresql+asyncpg://u:p@{SECRET}@h/db",
    f"postgresql+asyncpg://h/db?PassWord={SECRET};x=1",
    f"postgresql+asyncpg://h/db?token={SECRET}",
    f"postgres://u:{SECRET}@[not-a-url",
])
def test_redact_url_hides_every_form_of_secret(url: str) -> None:
    from sqlalchemy.engine import make_url

    shown = redact_url(url)
    assert SECRET not in shown and "***" in shown
    if "[not" not in url:
        assert SECRET not in redact_url(make_url(url))


def test_redact_url_keeps_what_is_not_secret() -> None:
    assert redact_url("postgresql+asyncpg://u@h:5/db?ssl=require&passfile=/etc/pgpass") == \
        "postgresql+asyncpg://u@h:5/db?ssl=require&passfile=/etc/pgpass"
    assert redact_url("sqlite+aiosqlite:///./jobkit.db") == "sqlite+aiosqlite:///./jobkit.db"


async def test_a_password_in_the_query_is_never_printed(
        pg_url: str, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    url = f"{pg_url}?password={SECRET}"   # the local server trusts; the password is ignored
    code, out, err = await run_cli(capsys, "status", "--database-url", url)
    assert code == 0, err
    assert SECRET not in out + err and "password=***" in out
    code, out, err = await run_cli(capsys, "status", "--json", "--database-url", url)
    assert SECRET not in out and json.loads(out)["database_url"].endswith("password=***")
    env = cli_env()
    work = await asyncio.to_thread(
        subprocess.run, [JOBKIT_BIN, "work", "--burst", "--force", "--database-url", url],
        capture_output=True, text=True, env=env, timeout=60)
    assert work.returncode == 0, work.stderr
    assert "started" in work.stderr and SECRET not in work.stderr + work.stdout
    async with await jobkit.open(url) as runner:
        app = create_app(runner.settings, runner=runner, run_worker=True)
        with caplog.at_level(logging.INFO, logger="jobkit"):
            async with app.router.lifespan_context(app):
                pass
    assert "jobkit API on" in caplog.text and SECRET not in caplog.text
    unreachable = f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1:1/x?password={SECRET}"
    code, _, err = await run_cli(capsys, "status", "--database-url", unreachable)
    assert code == 5 and SECRET not in err and "cannot reach" in one_line(err)
    with pytest.raises(jobkit.JobkitError) as caught:
        await jobkit.open(unreachable)
    assert SECRET not in str(caught.value)


async def test_json_bodies_have_a_size_limit_even_without_content_length(
        runner: jobkit.Runner, media: Path) -> None:
    app = make_app(runner, media, max_body_bytes=2_000)
    padding = "x" * 3_000
    body = json.dumps({"job_type": "nobody", "allow_unknown": True, "params": {"p": padding}})

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 500):
            yield body[i:i + 500].encode()

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://jobkit.test") as c:
        declared = await c.post("/jobs", content=body,
                                headers={"content-type": "application/json"})
        assert declared.status_code == 413 and "JOBKIT_MAX_BODY_BYTES" in declared.text
        streamed = await c.post("/jobs", content=chunks(),
                                headers={"content-type": "application/json"})
        assert "content-length" not in {k.lower() for k in streamed.request.headers}
        assert streamed.status_code == 413, streamed.text
        small = await c.post("/jobs", json={"job_type": "nobody", "allow_unknown": True})
        assert small.status_code == 201
    assert await count_jobs(runner) == 1
    assert jobkit.Settings.from_env({"JOBKIT_MAX_BODY_BYTES": "5000"}).max_body_bytes == 5000


@pytest.mark.parametrize(("name", "kept"), [
    ("x.php", ""), ("clip.MKV", ".mkv"), ("match.mp4", ".mp4"), ("page.html", ""),
    ("archive.tar.gz", ""), ("noext", "")])
async def test_uploaded_files_keep_only_video_extensions(
        client: httpx.AsyncClient, media: Path, name: str, kept: str) -> None:
    r = await client.post("/upload", files={"file": (name, b"\x00" * 100)},
                          data={"duration_ms": "20000"})
    assert r.status_code == 201, r.text
    (stored,) = os.listdir(media)
    assert os.path.splitext(stored)[1] == kept


# =====================================================================================
# Item 4: hostile input — one clear line, a 4xx or exit 2, nothing written
# =====================================================================================
HUGE = 10 ** 5000
PYTHON_CASES: list[tuple[str, dict[str, Any]]] = [
    ("nan param", {"params": {"x": math.nan}}),
    ("inf param", {"params": {"x": math.inf}}),
    ("delay 1e300", {"delay": 1e300}),
    ("delay nan", {"delay": math.nan}),
    ("delay inf", {"delay": math.inf}),
    ("run_at garbage", {"run_at": "garbage"}),
    ("timeout inf", {"timeout": math.inf}),
    ("timeout nan", {"timeout": math.nan}),
    ("5000-digit param", {"params": {"n": HUGE}}),
    ("5000-digit priority", {"priority": HUGE}),
    ("5000-digit delay", {"delay": HUGE}),
    ("deep params", {"params": {"deep": nested(10_000)}}),
    ("lone surrogate param", {"params": {"s": "\ud800"}}),
    ("lone surrogate key", {"params": {"\ud800": 1}}),
    ("NUL param", {"params": {"s": "a\x00b"}}),
    ("NUL job_type", {"job_type": "a\x00b"}),
    ("surrogate job_type", {"job_type": "a\ud800"}),
    ("long job_type", {"job_type": "t" * 201}),
    ("long dedupe_key", {"dedupe_key": "k" * 201}),
    ("NUL dedupe_key", {"dedupe_key": "k\x00"}),
    ("surrogate dedupe_key", {"dedupe_key": "\ud800"}),
]


@pytest.mark.parametrize(("case", "fields"), PYTHON_CASES, ids=[c for c, _ in PYTHON_CASES])
async def test_hostile_input_from_python(runner: jobkit.Runner, case: str,
                                         fields: dict[str, Any]) -> None:
    spec = {"job_type": "nobody", "allow_unknown": True, **fields}
    job_type = spec.pop("job_type")
    allow = spec.pop("allow_unknown")
    with pytest.raises((InvalidParams, InvalidTransition)) as caught:
        await runner.enqueue(job_type, allow_unknown=allow, **spec)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    message.encode("utf-8")  # printable: no lone surrogate echoed back
    many = {"job_type": job_type, **spec}
    with pytest.raises((InvalidParams, InvalidTransition)):
        await runner.enqueue_many([{"job_type": job_type}, many], allow_unknown=True)
    assert await count_jobs(runner) == 0


@pytest.mark.parametrize("filename", ["../../x", "a/b.mp4", "a\x00b.mp4", "\ud800.mp4",
                                      "x" * 256, ""])
async def test_hostile_filenames_from_python(runner: jobkit.Runner, filename: str) -> None:
    with pytest.raises(InvalidTransition) as caught:
        await runner.upload_video(filename, duration_ms=20_000)
    str(caught.value).encode("utf-8")
    assert await count_jobs(runner) == 0 and await count_assets(runner) == 0


HTTP_CASES: list[tuple[str, str]] = [
    ("NaN delay", '{"job_type": "nobody", "allow_unknown": true, "delay": NaN}'),
    ("Infinity timeout", '{"job_type": "nobody", "allow_unknown": true, "timeout": Infinity}'),
    ("NaN param", '{"job_type": "nobody", "allow_unknown": true, "params": {"x": NaN}}'),
    ("1e400 param", '{"job_type": "nobody", "allow_unknown": true, "params": {"x": 1e400}}'),
    ("delay 1e300", '{"job_type": "nobody", "allow_unknown": true, "delay": 1e300}'),
    ("deep params", '{"job_type": "nobody", "allow_unknown": true, "params": {"d": '
     + "[" * 10_000 + "]" * 10_000 + "}}"),
    ("deep body", "[" * 10_000 + "]" * 10_000),
    ("surrogate param", '{"job_type": "nobody", "allow_unknown": true, '
                        '"params": {"s": "\\ud800"}}'),
    ("surrogate job_type", '{"job_type": "x\\ud800", "allow_unknown": true}'),
    ("surrogate dedupe_key", '{"job_type": "nobody", "allow_unknown": true, '
                             '"dedupe_key": "\\udfff"}'),
    ("NUL job_type", '{"job_type": "x\\u0000", "allow_unknown": true}'),
    ("5000-digit param", '{"job_type": "nobody", "allow_unknown": true, "params": {"n": '
     + "9" * 5000 + "}}"),
    ("5000-digit priority", '{"job_type": "nobody", "allow_unknown": true, "priority": '
     + "9" * 5000 + "}"),
    ("run_at garbage", '{"job_type": "nobody", "allow_unknown": true, "run_at": "garbage"}'),
    ("long job_type", '{"job_type": "' + "t" * 201 + '", "allow_unknown": true}'),
    ("long dedupe_key", '{"job_type": "nobody", "allow_unknown": true, "dedupe_key": "'
     + "k" * 201 + '"}'),
]


@pytest.mark.parametrize(("case", "body"), HTTP_CASES, ids=[c for c, _ in HTTP_CASES])
async def test_hostile_input_over_http(client: httpx.AsyncClient, runner: jobkit.Runner,
                                       case: str, body: str) -> None:
    r = await client.post("/jobs", content=body.encode(),
                          headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and len(detail) < 600, detail
    assert await count_jobs(runner) == 0


@pytest.mark.parametrize("filename", ["../../x", "\\ud800.mp4", "a\\u0000b.mp4"])
async def test_hostile_upload_names_over_http(client: httpx.AsyncClient, runner: jobkit.Runner,
                                              filename: str) -> None:
    body = '{"filename": "' + filename + '", "duration_ms": 20000}'
    r = await client.post("/upload", content=body.encode(),
                          headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "\n" not in r.json()["detail"]
    assert await count_jobs(runner) == 0 and await count_assets(runner) == 0


CLI_CASES: list[tuple[str, list[str]]] = [
    ("deep --params", ["nobody", "--params", '{"d": ' + "[" * 10_000 + "]" * 10_000 + "}"]),
    ("NaN --params", ["nobody", "--params", '{"x": NaN}']),
    ("5000-digit --params", ["nobody", "--params", '{"n": ' + "9" * 5000 + "}"]),
    ("surrogate --params", ["nobody", "--params", '{"s": "\\ud800"}']),
    ("--delay 1e300", ["nobody", "--delay", "1e300"]),
    ("--delay nan", ["nobody", "--delay", "nan"]),
    ("--delay inf", ["nobody", "--delay", "inf"]),
    ("--timeout inf", ["nobody", "--timeout", "Infinity"]),
    ("--run-at garbage", ["nobody", "--run-at", "garbage"]),
    ("5000-digit --priority", ["nobody", "--priority", "9" * 5000]),
    ("long TYPE", ["t" * 201]),
    ("long --dedupe-key", ["nobody", "--dedupe-key", "k" * 201]),
    ("undecodable TYPE", [os.fsdecode(b"bad\xff")]),
]


@pytest.mark.parametrize(("case", "argv"), CLI_CASES, ids=[c for c, _ in CLI_CASES])
async def test_hostile_input_on_the_command_line(
        runner: jobkit.Runner, db_url: str, capsys: pytest.CaptureFixture[str],
        case: str, argv: list[str]) -> None:
    code, out, err = await run_cli(capsys, "enqueue", *argv, "--allow-unknown",
                                   "--database-url", db_url)
    assert code == 2, (code, err[:500])
    line = one_line(err)
    assert len(line) < 400, line
    assert out == ""
    assert await count_jobs(runner) == 0


# =====================================================================================
# Item 6: smaller things users hit
# =====================================================================================
async def test_status_counts_jobs_done_not_attempts_and_keeps_it_current(
        runner: jobkit.Runner, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    tries: dict[str, int] = {}

    @runner.handler("flaky_once")
    async def flaky_once(job: jobkit.Job, db: Any) -> dict[str, Any]:
        tries[str(job.id)] = tries.get(str(job.id), 0) + 1
        if tries[str(job.id)] == 1 and job.params["flaky"]:
            raise jobkit.Retry(delay=0)
        return {}

    finished = asyncio.Event()
    done: list[dict[str, Any]] = []

    def on_done(summary: dict[str, Any]) -> None:
        done.append(summary)
        if sum(s["status"] == "completed" for s in done) == 4:
            finished.set()

    await runner.enqueue_many([("flaky_once", {"flaky": i < 2}) for i in range(4)])
    worker = runner.worker(concurrency=2, on_done=on_done)  # heartbeat every 20 s
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(finished.wait(), 30)
        assert len(done) == 6  # 4 jobs, 6 attempts

        async def reported() -> int:
            async with runner.sessions() as db:
                return int((await db.execute(select(workers_table.c.jobs_done).where(
                    workers_table.c.id == worker.id))).scalar_one())

        async def four_reported() -> bool:
            return await reported() == 4

        # the worker writes it when it goes idle; the heartbeat alone would take 20 s
        await wait_until(four_reported, timeout=10, what="jobs_done == 4 in the workers row")
        code, out, err = await run_cli(capsys, "status", "--json", "--database-url", db_url)
        (row,) = [w for w in json.loads(out)["workers"] if w["id"] == worker.id]
        assert row["jobs_done"] == 4
        code, out, err = await run_cli(capsys, "status", "--database-url", db_url)
        assert "4 job(s) done" in out
    finally:
        worker.stop()
        await task
    assert worker.stats.jobs_done == 4 and worker.stats.processed == 6


async def test_status_after_drain_only_sessions_says_why_instead_of_alarming(
        runner: jobkit.Runner, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    await runner.upload_video("a.mp4", duration_ms=20_000)
    await runner.drain(progress=False)
    code, out, err = await run_cli(capsys, "status", "--database-url", db_url)
    assert code == 0, err
    assert "UNHEALTHY" not in out and "idle" in out and "stopped cleanly" in out
    code, out, _ = await run_cli(capsys, "status", "--json", "--database-url", db_url)
    data = json.loads(out)
    assert data["health"] == "idle" and data["problems"] == [] and "drain" in data["note"]
    # a crashed worker (silent while "running") is still a problem
    async with runner.sessions() as db:
        await db.execute(workers_table.insert().values(
            id="ghost", hostname="h", pid=1, concurrency=1, state="running", jobs_done=0,
            started_at=utcnow(), last_heartbeat_at=utcnow().replace(year=2000)))
        await db.commit()
    code, out, _ = await run_cli(capsys, "status", "--database-url", db_url)
    assert "UNHEALTHY" in out


async def test_a_sync_handler_is_a_usage_error(
        db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sync_handlers_mod.py").write_text(
        "import jobkit\n\n@jobkit.handler('plain')\ndef plain(job, db):\n    return {}\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = await run_cli(capsys, "enqueue", "plain", "--import", "sync_handlers_mod",
                                 "--database-url", db_url)
    line = one_line(err)
    assert code == 2 and "async def" in line and "unexpected" not in line
    with pytest.raises(TypeError):
        jobkit.register_handler("plain2", lambda job, db: {})  # type: ignore[arg-type,return-value]


async def test_a_non_json_result_names_the_result(runner: jobkit.Runner) -> None:
    @runner.handler("setty")
    async def setty(job: jobkit.Job, db: Any) -> dict[str, Any]:
        return {"tags": {"a", "b"}}

    await runner.enqueue("setty", {})
    summary = await runner.step()
    assert summary["status"] == "failed"
    assert summary["error"].startswith("InvalidResult: the handler's result is not storable "
                                       "JSON: result['tags']"), summary["error"]


async def test_cut_analysis_params_are_checked_at_enqueue(
        runner: jobkit.Runner, client: httpx.AsyncClient, db_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    for params in ({}, {"video_asset_id": "not-a-uuid"}, {"video_asset_id": 5}):
        with pytest.raises(InvalidParams, match="video_asset_id"):
            await runner.enqueue("cut_analysis", params)
        r = await client.post("/jobs", json={"job_type": "cut_analysis", "params": params})
        assert r.status_code == 422 and "video_asset_id" in r.json()["detail"]
        code, _, err = await run_cli(capsys, "enqueue", "cut_analysis", "--params",
                                     json.dumps(params), "--database-url", db_url)
        assert code == 2 and "video_asset_id" in one_line(err)
    with pytest.raises(InvalidParams, match=r"jobs\[1\]"):
        await runner.enqueue_many([("cut_analysis", {"video_asset_id": str(uuid.uuid4())}),
                                   ("cut_analysis", {})])
    assert await count_jobs(runner) == 0


async def test_a_deduplicated_enqueue_says_so(runner: jobkit.Runner,
                                              client: httpx.AsyncClient) -> None:
    body = {"job_type": "nobody", "allow_unknown": True, "dedupe_key": "k1"}
    first = await client.post("/jobs", json=body)
    again = await client.post("/jobs", json=body)
    assert first.status_code == 201 and first.json()["deduplicated"] is False
    assert again.status_code == 200 and again.json()["deduplicated"] is True
    assert again.json()["id"] == first.json()["id"]
    job = await runner.enqueue("nobody", {}, dedupe_key="k1", allow_unknown=True)
    assert job.deduplicated and str(job.id) == first.json()["id"]
    assert await count_jobs(runner) == 1


async def test_bad_json_gets_the_same_message_on_every_route(client: httpx.AsyncClient) -> None:
    details = set()
    for route in ("/jobs", "/upload"):
        r = await client.post(route, content=b'{"job_type": ',
                              headers={"content-type": "application/json"})
        assert r.status_code == 422
        details.add(r.json()["detail"])
    (detail,) = details
    assert detail.startswith("body is not valid JSON")


async def test_swagger_ui_is_served_locally(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text and "https://" not in page.text
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+\.(?:js|css|png))['"]""", page.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        r = await client.get(asset)
        assert r.status_code == 200 and len(r.content) > 1000, asset


def _all_help() -> dict[str, str]:
    parser = cli.build_parser()
    out = {"jobkit": parser.format_help()}
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        out[name] = p.format_help()
    return out


async def test_help_readme_and_openapi_say_nothing_odd(client: httpx.AsyncClient) -> None:
    helps = _all_help()
    for name, text in helps.items():
        assert "``" not in text, name
        assert "seed" not in text.lower(), name
    for name in ("show", "explain", "cancel", "retry"):
        assert "the job's id" in helps[name], name
    assert "--json" in helps["demo"] and "--json" not in helps["serve"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "seed" not in readme.lower()
    assert "`--json` (every command but `serve`)" in readme
    schema = (await client.get("/openapi.json")).text
    assert "seed" not in schema.lower()
    import inspect

    for name in jobkit.__all__:  # help() in a notebook is user-facing too
        obj = getattr(jobkit, name)
        docs = [inspect.getdoc(obj) or ""]
        if inspect.isclass(obj):
            docs += [inspect.getdoc(m) or "" for n, m in inspect.getmembers(obj)
                     if callable(m) and not n.startswith("__")]
        assert all("seed" not in d.lower() for d in docs), name


async def test_demo_json_and_no_interleaved_logs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run_cli(capsys, "demo", "--json")
    assert code == 0, err
    demo = json.loads(out)
    # Five videos by name (simulated) and three synthetic files (decoded, known cuts).
    assert demo["processed"] == 8
    assert len(demo["cuts"]) == 3 and all(demo["cuts"].values())
    code, out, err = await run_cli(capsys, "demo")
    assert code == 0 and "clips per video" in out
    assert " INFO " not in err, err[:500]


async def test_debug_logging_is_not_flooded_by_the_driver(
        sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    async with await jobkit.open(sqlite_url) as runner:
        await runner.upload_video("a.mp4", duration_ms=20_000)
    code, out, err = await run_cli(capsys, "--log-level", "DEBUG", "step", "--database-url",
                                   sqlite_url)
    assert code == 0 and "completed" in out
    assert "Processing job" in err and "aiosqlite" not in err, err[:500]


async def test_jobs_status_cancelled_is_accepted(
        runner: jobkit.Runner, client: httpx.AsyncClient, db_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    keep = await runner.enqueue("nobody", {}, allow_unknown=True)
    gone = await runner.enqueue("nobody", {}, allow_unknown=True)
    await runner.cancel(gone.id)
    async with runner.sessions() as db:  # a failed job that was not cancelled
        await db.execute(update(jobs_table).where(jobs_table.c.id == keep.id)
                         .values(status="failed", error="boom"))
        await db.commit()
    code, out, err = await run_cli(capsys, "jobs", "--status", "cancelled", "--json",
                                   "--database-url", db_url)
    assert code == 0, err
    assert [j["id"] for j in json.loads(out)] == [str(gone.id)]
    r = await client.get("/jobs", params={"status": "cancelled"})
    assert r.status_code == 200 and [j["id"] for j in r.json()["jobs"]] == [str(gone.id)]


async def test_serve_reports_its_worker_in_words(runner: jobkit.Runner,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(runner.settings, runner=runner, run_worker=True)
    with caplog.at_level(logging.INFO, logger="jobkit"):
        async with app.router.lifespan_context(app):
            pass
    (line,) = [r.getMessage() for r in caplog.records if "worker stopped" in r.getMessage()]
    assert "{" not in line and "ran 0 attempt(s)" in line, line


async def test_processing_stats_are_rounded(runner: jobkit.Runner) -> None:
    for i in range(3):
        await runner.upload_video(f"v{i}.mp4", duration_ms=20_000)
    await runner.drain(progress=False)
    stats = await runner.processing_stats()
    for column in ("mean_ms", "p50_ms", "p95_ms", "max_ms", "mean_wait_ms"):
        value = float(stats.loc["cut_analysis", column])
        assert value == round(value, 1), (column, value)
