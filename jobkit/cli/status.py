"""``jobkit status``: jobs per status, queue depth, workers and their health."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..backends import backend_of
from ..shapes import status_dict
from .common import EXIT_OK, DatabaseUnavailable, opened
from .output import ago, out
from .registry import command

if TYPE_CHECKING:
    from ..schema import SchemaState


@command("status", "jobs per status (and per queue), queue depth, workers and their health")
async def cmd_status(args: argparse.Namespace) -> int:
    from .. import stats
    from ..schema import read_state
    from ..urls import redact_url

    async with opened(args, check_schema=False) as runner:
        s = runner.settings
        state = await read_state(runner.engine)
        if state.status != "current":
            return _schema_status(args, redact_url(runner.engine.url), state,
                                  runner.backend)
        async with runner.sessions() as db:
            counts = await stats.jobs_per_status(db)
            per_queue = await stats.jobs_per_queue(db)
            depth = await stats.queue_depth(db)
            workers = await stats.workers(db, s.dead_after)
            alive = await stats.workers_alive(db, s.dead_after)
            states = await stats.worker_states(db)
            hist = await stats.processing_histogram(db)
            await db.commit()
        url = redact_url(runner.engine.url)
    crashed = states.get("dead", 0) + sum(1 for w in workers if w.state == "running"
                                          and not w.alive)
    verdict = stats.health(alive=alive, needed=s.health_min_workers, window=s.dead_after,
                           workers_expected=bool(crashed or states.get("running", 0)))
    problems, note, health = list(verdict.problems), verdict.note, verdict.verdict
    avg = hist.sum / hist.count if hist.count else None
    data = status_dict(database_url=url, counts=counts, per_queue=per_queue, depth=depth,
                       avg_processing_s=avg, alive=alive, workers_by_state=states,
                       workers=[w.as_dict() for w in workers], health=health,
                       problems=problems, note=note, schema=state.as_dict())

    def human() -> str:
        lines = [f"database  {url}", f"schema    revision {state.revision} (current)",
                 "jobs      " + "  ".join(f"{k} {v}" for k, v in counts.items())
                 + f"  (total {data['total']})",
                 f"queue     {depth['eligible']} eligible now, {depth['scheduled']} scheduled later"]
        if len(per_queue) > 1 or (per_queue and "default" not in per_queue):
            for name, n in per_queue.items():
                lines.append(f"  queue {name}: " + "  ".join(f"{k} {v}" for k, v in n.items()))
        if avg is not None:
            lines.append(f"timing    {avg:.3f} s average over {hist.count} completed job(s)")
        by_state = ", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "none yet"
        lines.append(f"workers   {alive} alive ({by_state})")
        for w in workers:
            if w.state == "running":
                lines.append(f"  {w.id}  {'alive' if w.alive else 'SILENT'}  heartbeat "
                             f"{ago(w.last_heartbeat_at)}  {w.jobs_done} job(s) done  "
                             f"concurrency {w.concurrency}")
        if problems:
            lines.append("health    UNHEALTHY: " + "; ".join(problems))
        elif note:
            lines.append(f"health    idle: {note}")
        else:
            lines.append("health    ok")
        return "\n".join(lines)

    out(args, data, human)
    return EXIT_OK


def _schema_status(args: argparse.Namespace, url: str, state: SchemaState,
                   backend: str) -> int:
    """``jobkit status`` of a database whose schema this jobkit cannot use as it is."""
    if state.status == "empty":
        raise DatabaseUnavailable(f"{url} has no jobkit tables; create them with `jobkit init`")
    if state.status == "newer":
        line = (f"revision {state.revision}, newer than this jobkit's newest ({state.head}): "
                "upgrade jobkit on this host")
    elif backend_of(backend).MIGRATES_ON_OPEN:
        line = (f"revision {state.revision}, older than this jobkit's {state.head}: opening "
                "it with jobkit upgrades it (or run `jobkit migrate`)")
    else:
        line = (f"revision {state.revision}, older than this jobkit's {state.head}: "
                "run `jobkit migrate`")
    data = {"database_url": url, "schema": state.as_dict(), "health": "unhealthy",
            "problems": [f"schema {line}"]}
    out(args, data, f"database  {url}\nschema    {line}\nhealth    UNHEALTHY: the schema "
                    "is not this jobkit's; job counts need a current schema")
    return EXIT_OK
