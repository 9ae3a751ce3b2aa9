"""A worker process for the multi-process, latency and memory scenarios.

``python -m benchmarks.worker_proc URL --concurrency N [--burst] [--wait-go]
[--rss-at 20000,100000]``: prints ``ready`` once it is working (after ``go`` on stdin
with ``--wait-go``), then one JSON line with its stats when it stops (SIGTERM, or
nothing left with ``--burst``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import Any

import psutil

import jobkit
from benchmarks import handlers as _handlers  # noqa: F401 - registers the handlers


async def main(args: argparse.Namespace) -> None:
    settings = jobkit.Settings.from_env(database_url=args.url, worker_poll_interval=0.5)
    engine = jobkit.create_engine(args.url)
    proc = psutil.Process()
    marks = sorted(int(x) for x in args.rss_at.split(",") if x) if args.rss_at else []
    rss: dict[str, int] = {}
    done = 0

    def on_done(summary: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        if marks and done == marks[0]:
            marks.pop(0)
            rss[str(done)] = proc.memory_info().rss
            rss[f"peak@{done}"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    worker = jobkit.Worker(engine, settings=settings, concurrency=args.concurrency,
                           burst=args.burst, handle_signals=not args.burst, on_done=on_done)
    # Open the pool's connections before the clock starts.
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SELECT 1")
    if args.wait_go:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    t0 = time.perf_counter()
    task = asyncio.ensure_future(worker.run())
    if not args.wait_go:
        while worker.state != "running":  # noqa: ASYNC110 - the Worker offers no event
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # let the LISTEN / data_version watcher start
        print("ready", flush=True)
    stats = await task
    elapsed = time.perf_counter() - t0
    await engine.dispose()
    print(json.dumps({"elapsed": elapsed, "stats": stats.as_dict(), "rss": rss,
                      "rss_start": rss.get("start"),
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}),
          flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--burst", action="store_true")
    p.add_argument("--wait-go", action="store_true")
    p.add_argument("--rss-at", default="")
    asyncio.run(main(p.parse_args()))
