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
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, insert

import jobkit

EXECUTED: Counter[str] = Counter()
# In a worker process (JOBKIT_BENCH_EXEC_DIR set), executions go to a file instead, 16 bytes
# per job, so the memory scenario measures the worker and not this bookkeeping.
_LOG = None
if os.environ.get("JOBKIT_BENCH_EXEC_DIR"):
    _LOG = open(os.path.join(os.environ["JOBKIT_BENCH_EXEC_DIR"], f"{os.getpid()}.ids"), "wb")


def _ran(job: jobkit.Job) -> None:
    if _LOG is not None:
        _LOG.write(job.id.bytes)
    else:
        EXECUTED[str(job.id)] += 1


bench_rows = Table("bench_rows", MetaData(), Column("job_id", String(36)), Column("n", Integer))


@jobkit.handler("bench_noop", replace=True)
async def bench_noop(job: jobkit.Job, db: Any) -> None:
    _ran(job)


@jobkit.handler("bench_write", replace=True)
async def bench_write(job: jobkit.Job, db: Any) -> None:
    """Writes one row through the job's session: its completion joins that transaction."""
    _ran(job)
    await db.execute(insert(bench_rows).values(job_id=str(job.id), n=job.attempts))


@jobkit.handler("bench_started", replace=True)
async def bench_started(job: jobkit.Job, db: Any) -> dict[str, float]:
    """Returns the wall-clock time it started (enqueue → start latency)."""
    t = time.time()
    _ran(job)
    return {"t": t}


def _dump() -> None:
    folder = os.environ.get("JOBKIT_BENCH_EXEC_DIR")
    if _LOG is not None:
        _LOG.close()
    if folder and EXECUTED:  # the bare worker process counts in memory
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
        elif name.endswith(".ids"):
            with open(os.path.join(folder, name), "rb") as f:
                data = f.read()
            total.update(str(uuid.UUID(bytes=data[i:i + 16])) for i in range(0, len(data), 16))
    return total
