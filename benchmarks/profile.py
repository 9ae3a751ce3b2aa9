"""Profile jobkit's hot path with pyinstrument: ``python -m benchmarks.profile BACKEND SCENARIO``.

Scenarios: ``drain1`` / ``drain10`` / ``drain100`` (no-op jobs at concurrency 1 / 10 /
100), ``write`` (a handler writing through its session, concurrency 1), ``write10``
(concurrency 10), ``cut`` (cut_analysis, 0.5 s each, concurrency 100), ``enqueue``
(single enqueues), ``enqueue_many``. Writes an HTML and a text profile to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from . import handlers as _handlers  # noqa: F401 - registers the handlers
from . import scenarios
from .common import Databases

HERE = os.path.dirname(os.path.abspath(__file__))


async def main(backend: str, scenario: str, n: int, tag: str, show_all: bool = False) -> None:
    from pyinstrument import Profiler

    dbs = Databases()
    await dbs.start()
    try:
        url = await dbs.fresh(backend)
        job_type = "bench_write" if scenario.startswith("write") else "bench_noop"
        if scenario.startswith(("drain", "write")):
            await scenarios.seed_jobs(url, n, job_type)
        elif scenario == "cut":
            await scenarios._seed_assets(url, n, bare_jobs=False)
        r = await scenarios.open_runner(url, cut_analysis_seconds=0.5)
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        t0 = time.perf_counter()
        profiler.start()
        try:
            if scenario == "enqueue":
                for i in range(n):
                    await r.enqueue("bench_noop", {"i": i})
            elif scenario == "enqueue_many":
                await r.enqueue_many([("bench_noop", {"i": i}) for i in range(n)])
            else:
                conc = {"drain1": 1, "drain10": 10, "drain100": 100, "write": 1, "write10": 10,
                        "cut": 100}[scenario]
                await r.worker(concurrency=conc, burst=True).run()
        finally:
            profiler.stop()
            await r.close()
        dt = time.perf_counter() - t0
        print(f"{backend} {scenario}: {n} jobs in {dt:.2f}s = {n / dt:.0f} jobs/s")
        out = os.path.join(HERE, "results", f"profile-{tag}-{backend}-{scenario}")
        with open(out + ".txt", "w") as f:
            f.write(profiler.output_text(unicode=False, color=False, show_all=show_all))
        with open(out + ".html", "w") as f:
            f.write(profiler.output_html())
        print("wrote", out + ".txt")
    finally:
        await dbs.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("backend", choices=["sqlite", "postgresql"])
    p.add_argument("scenario", choices=["drain1", "drain10", "drain100", "write", "write10",
                                        "cut", "enqueue", "enqueue_many"])
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--tag", default="before")
    p.add_argument("--all", action="store_true", help="show library frames too")
    a: Any = p.parse_args()
    asyncio.run(main(a.backend, a.scenario, a.n, a.tag, a.all))
