"""A bare-SQL worker process (the multi-process baseline): claim 100, complete 100.

``python -m benchmarks.bare_proc URL --burst --wait-go``: prints ``ready``, waits for
``go`` on stdin, drains the queue, prints a JSON line, dumps its executions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from benchmarks import bare
from benchmarks.handlers import EXECUTED


async def main(args: argparse.Namespace) -> None:
    b = await bare.connect(args.url)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    t0 = time.perf_counter()
    done = await b.drain_batched(lambda row: EXECUTED.update([str(row[0])]), 100)
    elapsed = time.perf_counter() - t0
    await b.close()
    print(json.dumps({"elapsed": elapsed, "done": done}), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--burst", action="store_true")
    p.add_argument("--wait-go", action="store_true")
    p.add_argument("--concurrency", type=int, default=100)
    asyncio.run(main(p.parse_args()))
