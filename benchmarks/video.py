"""The real-video scenario: cut_analysis throughput in CPU-seconds per minute of video.

Each repeat measures, on the same file in the same run:

* jobkit: one ``cut_analysis`` job (``runner.step()``: decode in a thread, cuts, scores,
  thumbnails, the clips written) — process CPU time, all threads;
* bare: a PyAV loop that only decodes every frame (``for f in c.decode(stream): pass``);
* bare + scale: the same loop scaling each frame to 160 px RGB (what any analysis needs).

Then several analyses at worker concurrency 2 with a short lease (3 s, heartbeat 1 s)
that each last longer than the lease: both cores should be busy (CPU time / wall time
near 2), every heartbeat on time (the largest gap between two heartbeats of the
worker's row is reported) and no lease lost.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import jobkit
from jobkit import video
from jobkit.models import workers_table

SIZES = {"320x180": (320, 180), "720p": (1280, 720)}


def make_files(folder: str, seconds: dict[str, float]) -> dict[str, video.TestVideo]:
    """One synthetic video per size: busy shots of 2-5 s with cuts, and a flash."""
    out = {}
    for label, size in SIZES.items():
        total = seconds[label]
        shots: list[Any] = []
        pattern = [4.0, 2.5, (3.0, "flat"), 5.0, 2.0, 3.5]
        while sum(s if isinstance(s, float) else s[0] for s in shots) < total:
            shots.append(pattern[len(shots) % len(pattern)])
        out[label] = video.make_test_video(os.path.join(folder, f"bench_{label}.mp4"), shots,
                                           flashes=[1.0], size=size)
    return out


def bare_decode(path: str, scale: bool) -> tuple[float, int]:
    """CPU seconds of a bare PyAV decode loop over ``path`` (optionally scaling to 160 px)."""
    import av
    from av.video.reformatter import VideoReformatter

    t0 = time.process_time()
    frames = 0
    with av.open(path) as c:
        stream = c.streams.video[0]
        scaler = VideoReformatter()
        height = max(2, round(160 * stream.codec_context.height / stream.codec_context.width
                              / 2) * 2)
        for frame in c.decode(stream):
            if scale:
                scaler.reformat(frame, width=160, height=height, format="rgb24").to_ndarray()
            frames += 1
    return time.process_time() - t0, frames


async def jk_analysis(url: str, path: str) -> tuple[float, dict[str, Any]]:
    """CPU seconds of one cut_analysis job of ``path`` run by ``runner.step()``."""
    async with await jobkit.open(url) as runner:
        await runner.upload_video(path)
        t0 = time.process_time()
        summary = await runner.step()
        cpu = time.process_time() - t0
    if summary["status"] != "completed":
        raise RuntimeError(f"cut_analysis of {path} ended {summary['status']}: "
                           f"{summary['error']}")
    return cpu, summary["result"]


async def concurrent(url: str, path: str, n: int) -> dict[str, float]:
    """``n`` analyses at worker concurrency 2, lease 3 s, heartbeat 1 s."""
    async with await jobkit.open(url, lease_seconds=3.0, heartbeat_seconds=1.0) as runner:
        for _ in range(n):
            await runner.upload_video(path)
        worker = runner.worker(concurrency=2, burst=True)
        beats: list[float] = []
        stop = asyncio.Event()

        async def watch_heartbeats() -> None:
            last = None
            while not stop.is_set():
                async with runner.sessions() as db:
                    from sqlalchemy import select

                    value = (await db.execute(select(workers_table.c.last_heartbeat_at).where(
                        workers_table.c.id == worker.id))).scalar_one_or_none()
                    await db.commit()
                if value is not None and value != last:
                    beats.append(time.monotonic())
                    last = value
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch_heartbeats())
        t0, c0 = time.monotonic(), time.process_time()
        stats = await worker.run()
        wall, cpu = time.monotonic() - t0, time.process_time() - c0
        stop.set()
        await watcher
    if stats.completed != n or stats.lost or stats.retried or stats.failed:
        raise RuntimeError(f"concurrent analyses: {stats!r}")
    gaps = [b - a for a, b in zip(beats, beats[1:], strict=False)]
    return {"wall_s": wall, "cpu_s": cpu, "cores_busy": cpu / wall,
            "max_heartbeat_gap_s": max(gaps) if gaps else float("nan"),
            "heartbeats": float(len(beats)), "jobs": float(n)}


def bare_concurrent(path: str, n: int) -> dict[str, float]:
    """The same-run baseline of :func:`concurrent`: ``n`` bare decode+scale loops, two
    threads at a time (what the machine gives two GIL-releasing PyAV loops right now)."""
    from concurrent.futures import ThreadPoolExecutor

    t0, c0 = time.monotonic(), time.process_time()
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda _: bare_decode(path, True), range(n)))
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "cores_busy": cpu / wall}
