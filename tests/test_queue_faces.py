"""Queues, pipelines and schedules through the faces: command line, HTTP, dashboard, plots,
explain."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from test_api import api_settings
from test_cli import jk, out_json
from test_worker import wait_until

import jobkit
from jobkit.api import create_app
from jobkit.notebook.dashboard import counts_table
from jobkit.notebook.plots import plot_dependencies


@pytest.fixture
async def client(runner: jobkit.Runner, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(api_settings(runner, tmp_path), runner=runner)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_http_queue_after_and_schedules(client: httpx.AsyncClient,
                                              runner: jobkit.Runner) -> None:
    made = await client.post("/jobs", json={"job_type": "noop", "queue": "video"})
    assert made.status_code == 201, made.text
    first = made.json()
    assert first["queue"] == "video"
    second = await client.post("/jobs", json={"job_type": "noop", "after": [first["id"]]})
    assert second.status_code == 201, second.text
    bad = await client.post("/jobs", json={"job_type": "noop",
                                           "after": ["00000000-0000-0000-0000-000000000001"]})
    assert bad.status_code == 422 and "no job 00000000-0000-0000-0000-000000000001" in bad.text
    listed = (await client.get("/jobs", params={"queue": "video"})).json()
    assert [j["id"] for j in listed["jobs"]] == [first["id"]]
    assert (await client.get("/jobs", params={"queue": ""})).status_code == 422

    await runner.schedule("nightly", "noop", {"k": "y"}, cron="0 3 * * *")
    body = (await client.get("/schedules")).json()
    assert body["count"] == 1
    (s,) = body["schedules"]
    assert (s["name"], s["cron"], s["paused"], s["last_job_id"]) == (
        "nightly", "0 3 * * *", False, None)
    metrics = (await client.get("/metrics")).text
    assert 'jobkit_queue_jobs{queue="video",status="pending"} 1' in metrics
    assert 'jobkit_queue_jobs{queue="default",status="pending"} 1' in metrics


async def test_cli_queue_after_status_and_schedules(sqlite_url: str) -> None:
    params = json.dumps({"video_asset_id": str(uuid.uuid4())})
    made = out_json(jk("enqueue", "cut_analysis", "--params", params, "--queue", "video",
                       "--json", url=sqlite_url))
    assert made["queue"] == "video"
    after = out_json(jk("enqueue", "cut_analysis", "--params", params, "--after", made["id"],
                        "--json", url=sqlite_url))
    bad = jk("enqueue", "cut_analysis", "--params", params, "--queue", " ", url=sqlite_url)
    assert bad.returncode == 2 and "queue must be a non-empty name" in bad.stderr
    listed = out_json(jk("jobs", "--queue", "video", "--json", url=sqlite_url))
    assert [j["id"] for j in listed] == [made["id"]]
    status = out_json(jk("status", "--json", url=sqlite_url))
    assert status["queues"]["video"]["pending"] == 1
    assert status["queues"]["default"]["pending"] == 1
    text = jk("status", url=sqlite_url).stdout
    assert "queue video: pending 1" in text
    why = jk("explain", after["id"], url=sqlite_url).stdout
    assert f"waiting for job {made['id']} (pending)" in why

    async with await jobkit.open(sqlite_url) as runner:
        await runner.schedule("tick", "cut_analysis", {"video_asset_id": str(uuid.uuid4())},
                              every=60)
    shown = out_json(jk("schedules", "--json", url=sqlite_url))
    assert [(s["name"], s["every_seconds"], s["paused"]) for s in shown] == [("tick", 60.0, False)]
    paused = jk("schedules", "--pause", "tick", url=sqlite_url)
    assert paused.returncode == 0 and "schedule 'tick' paused" in paused.stdout
    assert "paused" in paused.stdout.splitlines()[-1]
    missing = jk("schedules", "--remove", "nope", url=sqlite_url)
    assert missing.returncode != 0 and "no schedule named 'nope'" in missing.stderr
    assert jk("schedules", "--remove", "tick", url=sqlite_url).returncode == 0
    assert "no schedules" in jk("schedules", url=sqlite_url).stdout


async def test_explain_names_a_queue_no_live_worker_serves(runner: jobkit.Runner) -> None:
    job = await runner.enqueue("noop", {}, queue="gpu")
    worker = runner.worker(queues=["cpu"], schedules=False)
    task = asyncio.create_task(worker.run())
    try:
        async def registered() -> bool:
            return len(await runner.worker_health()) == 1

        await wait_until(registered, what="the worker to register")
        why = await runner.explain(job.id)
    finally:
        worker.stop()
        await task
    assert "None of the 1 live worker serves queue 'gpu'" in str(why)
    assert "jobkit work --queue gpu" in str(why)


def test_counts_table_has_a_row_per_queue() -> None:
    counts = pd.Series({"pending": 3, "processing": 0, "retry": 0, "completed": 2, "failed": 1})
    per_queue = pd.DataFrame({"pending": [1, 2], "processing": [0, 0], "retry": [0, 0],
                              "completed": [2, 0], "failed": [0, 1]},
                             index=pd.Index(["default", "video"], name="queue"))
    html = counts_table(counts, per_queue)
    assert ">video</th>" in html and "title='video failed' style='text-align:center'>1<" in html
    assert ">video<" not in counts_table(counts, per_queue.loc[["default"]])


async def test_plot_dependencies_draws_each_job_and_edge(runner: jobkit.Runner) -> None:
    jobs = await runner.enqueue_many([{"job_type": "noop"}, {"job_type": "noop", "after": [0]},
                                      {"job_type": "noop", "after": [0]},
                                      {"job_type": "noop", "after": [1, 2]}])
    edges = await runner.dependencies(jobs)
    assert len(edges) == 4
    fig = plot_dependencies(await runner.jobs(), edges)
    ax: Any = fig.axes[0]
    arrows = [t for t in ax.texts if type(t).__name__ == "Annotation"]
    boxes = [t.get_text() for t in ax.texts if type(t).__name__ != "Annotation"]
    assert len(arrows) == 4 and all(a.arrow_patch is not None for a in arrows)
    assert boxes == ["noop\npending"] * 4
    with pytest.raises(ValueError, match="lacks column"):
        plot_dependencies(pd.DataFrame({"id": []}), edges)
