"""A peer's worker process for the latency scenario across processes.

``python -m benchmarks.peer_proc pgqueuer DSN --dump DIR`` or
``python -m benchmarks.peer_proc huey FILE --dump DIR``: runs the peer's worker (pgqueuer:
``run()``'s defaults; huey: 10 threads), prints ``ready`` once it listens / polls, appends ``<job> <start time>``
to ``DIR/starts.txt`` for every task started, and stops on ``stop`` on stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from typing import Any, TextIO


def _writer(folder: str) -> tuple[TextIO, threading.Lock]:
    return open(os.path.join(folder, "starts.txt"), "a", buffering=1), threading.Lock()


async def run_pgqueuer(dsn: str, folder: str) -> None:
    import asyncpg

    from .peers import _pg_manager

    out, lock = _writer(folder)

    async def handler(job: Any) -> None:
        t = time.time()
        with lock:
            out.write(f"{json.loads(job.payload)['i']} {t!r}\n")

    conn = await asyncpg.connect(dsn)
    qm, kwargs = _pg_manager(conn, None, handler)
    task = asyncio.ensure_future(qm.run(**kwargs))
    await asyncio.sleep(0.5)  # let it LISTEN
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    qm.shutdown.set()
    await task
    await conn.close()
    out.close()


def run_huey(path: str, folder: str) -> None:
    from .peers import HUEY_POLL, HueyRun

    out, lock = _writer(folder)

    def on_start(i: int, t: float) -> None:
        with lock:
            out.write(f"{i} {t!r}\n")

    h = HueyRun(path, on_start)
    consumer = h.consumer(10, poll=HUEY_POLL)
    consumer.start()
    time.sleep(0.3)
    print("ready", flush=True)
    sys.stdin.readline()
    consumer.stop(graceful=True)
    out.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("peer", choices=["pgqueuer", "huey"])
    p.add_argument("target")
    p.add_argument("--dump", required=True)
    a = p.parse_args()
    if a.peer == "pgqueuer":
        asyncio.run(run_pgqueuer(a.target, a.dump))
    else:
        run_huey(a.target, a.dump)
