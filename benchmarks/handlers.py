"""The benchmark's handlers (``--import benchmarks.handlers`` in worker processes).

Each one counts its executions per job id, so the harness can check that every job
ran exactly once; a worker process writes its counts to ``$JOBKIT_BENCH_EXEC_DIR``
when it exits.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from collections import Counter
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, insert

import jobkit

EXECUTED: Counter[str] = Counter()
bench_rows = Table("bench_rows", MetaData(), Column("job_id", String(36)), Column("n", Integer))


@jobkit.handler("bench_noop", replace=True)
async def bench_noop(job: jobkit.Job, db: Any) -> None:
    EXECUTED[str(job.id)] += 1


@jobkit.handler("bench_write", replace=True)
async def bench_write(job: jobkit.Job, db: Any) -> None:
    """Writes one row through the job's session: its completion joins that transaction."""
    EXECUTED[str(job.id)] += 1
    await db.execute(insert(bench_rows).values(job_id=str(job.id), n=job.attempts))


@jobkit.handler("bench_started", replace=True)
async def bench_started(job: jobkit.Job, db: Any) -> dict[str, float]:
    """Returns the wall-clock time it started (enqueue → start latency)."""
    t = time.time()
    EXECUTED[str(job.id)] += 1
    return {"t": t}


def _dump() -> None:
    folder = os.environ.get("JOBKIT_BENCH_EXEC_DIR")
    if folder and EXECUTED:
        with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as f:
            json.dump(dict(EXECUTED), f)


atexit.register(_dump)


def read_dumps(folder: str) -> Counter[str]:
    """Executions per job id summed over every worker process that dumped into ``folder``."""
    total: Counter[str] = Counter()
    for name in os.listdir(folder):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                total.update(json.load(f))
    return total
