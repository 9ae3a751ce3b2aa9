"""``make demo`` / ``python -m jobkit.demo``: upload videos, drain the queue, show the outcome."""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from typing import Any

from . import stats as jobstats
from .runner import open as open_runner

VIDEOS = [("intro.mp4", 15_000), ("match_highlights.mp4", 60_000),
          ("interview.mp4", 95_500), ("trailer.mp4", 41_000), ("full_match.mp4", 200_000)]

#: Synthetic videos with known cuts, made with PyAV (the ``video`` extra) and analysed
#: frame by frame: (file name, shots as seconds or (seconds, style), flashes in seconds).
REAL_VIDEOS: list[tuple[str, list[Any], list[float]]] = [
    ("synthetic_highlights.mp4", [3.0, 2.0, 4.0, 1.5, 3.5, 2.5], [1.2, 9.8]),
    ("synthetic_studio.mp4", [(4.0, "flat"), 3.0, (5.0, "flat"), 2.0, (3.0, "flat")], []),
    ("synthetic_long_take.mp4", [26.0, 4.0], [12.0]),
]


def make_demo_videos(folder: str) -> list[Any]:
    """Encode :data:`REAL_VIDEOS` into ``folder`` (empty when the video extra is missing)."""
    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    try:
        from .video import make_test_video
    except ImportError:  # pragma: no cover - depends on the installation
        return []
    try:
        return [make_test_video(os.path.join(folder, name), shots, flashes=flashes)
                for name, shots, flashes in REAL_VIDEOS]
    except ImportError:
        return []


async def run_demo(url: str | None = None, *, concurrency: int = 5,
                   plot_path: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run the demo on ``url`` (default: a fresh SQLite file in a temporary folder)."""
    tmp = None
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="jobkit-demo-")
        url = f"sqlite+aiosqlite:///{os.path.join(tmp.name, 'demo.db')}"
    out: dict[str, Any] = {}
    runner = await open_runner(url)
    try:
        say = (lambda *a: None) if quiet else print
        from .urls import redact_url

        say(f"jobkit demo on {redact_url(url)}" + (
            "\n  (a temporary database, removed at the end; pass --database-url to keep one)"
            if tmp else ""))
        assets = []
        for name, ms in VIDEOS:
            asset, job = await runner.upload_video(name, duration_ms=ms)
            assets.append(asset)
            say(f"  uploaded {name:<26} {ms / 1000:>6.1f} s  -> job {job.id} pending "
                "(name only: simulated analysis)")
        folder = tmp.name if tmp is not None else "jobkit-demo-videos"
        made = await asyncio.to_thread(make_demo_videos, folder)
        if not made:
            say("  (install the video extra, pip install -e '.[video]', to analyse real files)")
        real_jobs = []
        for v in made:
            asset, job = await runner.upload_video(v.path)  # duration probed from the file
            assets.append(asset)
            real_jobs.append((v, job))
            say(f"  uploaded {asset.filename:<26} {asset.duration_ms / 1000:>6.1f} s  -> job "
                f"{job.id} pending (a file: decoded, {len(v.cut_frames)} known cuts)")
        started = time.perf_counter()
        stats = await runner.drain(concurrency=concurrency, progress=False)
        elapsed = time.perf_counter() - started
        say(f"\ndrained {stats.processed} jobs in {elapsed:.2f} s with concurrency {concurrency}")
        async with runner.sessions() as db:
            counts = await jobstats.jobs_per_status(db)
        say("\njobs per status:")
        for status, n in counts.items():
            say(f"  {status:<11} {n}")
        say("\nclips per video (visual_score, best marked *):")
        clips_out = {}
        cuts_out = {}
        for asset in assets:
            clips = await runner.clips_of(asset.id)
            best = max((c.visual_score for c in clips), default=None)
            scores = "  ".join(f"{c.visual_score:.2f}{'*' if c.visual_score == best else ''}"
                               for c in clips)
            say(f"  {asset.filename:<26} {len(clips):>2} clips  {scores}")
            clips_out[asset.filename] = [c.visual_score for c in clips]
        for v, job in real_jobs:
            found = ((await runner.get_job(job.id)).result or {}).get("scene_cuts_ms", [])
            cuts_out[os.path.basename(v.path)] = found
            say(f"  {os.path.basename(v.path):<26} cuts found at {found} ms "
                f"(known: {v.cuts_ms})")
        out = {"database_url": None if tmp else redact_url(url), "counts": counts,
               "clips": clips_out, "cuts": cuts_out, "elapsed_s": round(elapsed, 3),
               "processed": stats.processed}
        if plot_path:
            try:
                from .notebook.frames import clips_frame
                from .notebook.plots import plot_visual_scores
            except ImportError:
                say("(install the notebook extra, pip install -e '.[notebook]', to get the plot)")
            else:
                async with runner.sessions() as db:
                    frame = await clips_frame(db)
                fig = plot_visual_scores(frame).figure
                fig.savefig(plot_path, dpi=100, bbox_inches="tight")
                say(f"\nplot of the clip scores written to {plot_path}")
    finally:
        await runner.close()
        if tmp is not None:
            tmp.cleanup()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobkit.demo", description=__doc__)
    parser.add_argument("--database-url", default=None,
                        help="default: a fresh SQLite file in a temporary folder")
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--plot", default=None, help="write a PNG of the clip scores here")
    args = parser.parse_args(argv)
    asyncio.run(run_demo(args.database_url, concurrency=args.concurrency, plot_path=args.plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
