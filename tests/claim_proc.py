"""A process of several coroutines that only claim jobs, printing each claimed id.

Usage: python claim_proc.py URL COROUTINES
"""

from __future__ import annotations

import asyncio
import os
import sys

import jobkit
from jobkit import queue


async def main(url: str, coroutines: int) -> None:
    engine = jobkit.create_engine(url)
    sessions = jobkit.database.make_sessionmaker(engine)
    claimed: list[str] = []
    errors: list[str] = []

    async def claimer(n: int) -> None:
        wid = f"{os.getpid()}-{n}"
        while True:
            try:
                async with sessions() as db:
                    jobs = await queue.claim_jobs(db, 1, worker_id=wid)
            except Exception as exc:  # noqa: BLE001 - every error is reported, then counted
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if not jobs:
                return
            claimed.append(str(jobs[0].id))

    await asyncio.gather(*(claimer(i) for i in range(coroutines)))
    await engine.dispose()
    for jid in claimed:
        print(jid)
    for err in errors:
        print("ERROR", err, file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
