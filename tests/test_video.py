"""Real cut analysis on synthetic videos with known cuts (PyAV encodes them here)."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from helpers import count_clips, count_jobs
from sqlalchemy import select

import jobkit
from jobkit import video
from jobkit.handlers import cut_analysis
from jobkit.models import Clip, JobStatus
from jobkit.video import make_test_video

SHOTS: list[Any] = [2.0, 1.5, (2.0, "flat"), 2.5, 0.6, 2.0]
FLASHES = [0.8, 6.4]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, video.TestVideo]:
    d = tmp_path_factory.mktemp("videos")
    return {
        "shots": make_test_video(d / "shots.mp4", SHOTS, flashes=FLASHES),
        "busy": make_test_video(d / "busy.mp4", [3.0]),
        "flat": make_test_video(d / "flat.mp4", [3.0], style="flat"),
        "long": make_test_video(d / "long.mkv", [45.0, 3.0], size=(64, 36), fps=10),
        "mpeg4": make_test_video(d / "mpeg4.mkv", [1.2, 2.0, 1.0, 1.4], codec="mpeg4",
                                 fps=30, size=(320, 180), flashes=[2.0]),
    }


def within_one_frame(found: list[int], known: list[int]) -> bool:
    return len(found) == len(known) and all(abs(a - b) <= 1 for a, b in zip(found, known,
                                                                              strict=True))


# ------------------------------------------------------------------------------------
# The detector and the scores (no database)
# ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["shots", "mpeg4"])
def test_detected_cuts_equal_the_known_ones_and_flashes_are_not_cuts(
        videos: dict[str, video.TestVideo], name: str) -> None:
    v = videos[name]
    found = video.analyse(v.path)
    assert v.flash_frames, "the video has flashes"
    assert within_one_frame(found.cut_frames, v.cut_frames), (found.cut_frames, v.cut_frames)
    for flash in v.flash_frames:
        assert all(abs(c - flash) > 1 for c in found.cut_frames), f"flash {flash} taken as a cut"
    # The flash frames really do change a lot: the detector rejected them, not missed them.
    assert all(found.change[f] >= video.CUT_MIN_SCORE for f in v.flash_frames)
    assert found.frames_decoded == v.frames and found.fps == v.fps
    assert (found.width, found.height) == (v.width, v.height)
    assert abs(found.duration_ms - v.duration_ms) <= 1000 / v.fps


def test_clip_bounds_follow_the_rules(videos: dict[str, video.TestVideo]) -> None:
    # A 0.6 s shot joins its neighbour; every other cut is a clip bound.
    v = videos["shots"]
    found = video.analyse(v.path)
    bounds = found.clip_bounds()
    short_cut = v.cuts_ms[3]  # the cut that starts the 0.6 s shot
    assert [a for a, _ in bounds][1:] == [c for c in found.cuts_ms if c != short_cut]
    # A 45 s shot is split into equal clips of at most 20 s; the 3 s shot stays whole.
    long = video.analyse(videos["long"].path)
    assert long.cuts_ms == [45_000]
    assert long.clip_bounds() == [(0, 15_000), (15_000, 30_000), (30_000, 45_000),
                                  (45_000, 48_000)]
    # The rules on their own: contiguous, within [min, max], bounds only at cuts or splits.
    cases = [([], 5_000), ([300], 5_000), ([500, 900, 1200, 4000], 9_000),
             ([20_000, 20_400, 61_000], 61_500), ([1_000, 2_000, 3_000], 3_000)]
    for cuts, duration in cases:
        out = video.clip_bounds_from_cuts(cuts, duration)
        assert out[0][0] == 0 and out[-1][1] == duration
        assert all(a[1] == b[0] for a, b in zip(out, out[1:], strict=False))
        assert all(video.CLIP_MIN_MS <= e - s <= video.CLIP_MAX_MS for s, e in out), (cuts, out)
    assert video.clip_bounds_from_cuts([], 600) == [(0, 600)], "a short video is one clip"


def test_scores_rank_busy_above_flat(videos: dict[str, video.TestVideo]) -> None:
    busy = video.analyse(videos["busy"].path)
    flat = video.analyse(videos["flat"].path)
    b = busy.score(0, busy.duration_ms)
    f = flat.score(0, flat.duration_ms)
    assert f < 0.05 < 0.5 < b <= 1.0, (b, f)
    # Each term moves the score the right way.
    assert video.visual_score(0, 0, 0, 0) == 0.0
    assert video.visual_score(200, 0.25, 110, 0.02) == 0.75
    assert video.visual_score(1e9, 1, 1e9, 1e9) > 0.99


def test_the_same_file_gives_the_same_analysis(videos: dict[str, video.TestVideo]) -> None:
    a = video.analyse(videos["shots"].path)
    b = video.analyse(videos["shots"].path)
    assert a.cut_frames == b.cut_frames and a.clip_bounds() == b.clip_bounds()
    assert np.array_equal(a.change, b.change)
    assert [a.score(s, e) for s, e in a.clip_bounds()] == [b.score(s, e) for s, e in
                                                            b.clip_bounds()]
    assert a.thumbs == b.thumbs


def test_progress_is_reported_while_decoding(videos: dict[str, video.TestVideo]) -> None:
    seen: list[tuple[float, str]] = []
    video.analyse(videos["shots"].path, on_progress=lambda f, m: seen.append((f, m)),
                  progress_every=1.0)
    fractions = [f for f, _ in seen]
    assert len(seen) >= 10 and fractions == sorted(fractions)
    assert 0.0 <= fractions[0] < 0.1 and 0.85 < fractions[-1] < 1.0
    assert seen[-1][1].startswith("decoding ") and seen[-1][1].endswith(" s")


# ------------------------------------------------------------------------------------
# The cut_analysis job, on both backends
# ------------------------------------------------------------------------------------
async def test_cut_analysis_of_a_stored_file(runner: jobkit.Runner,
                                             videos: dict[str, video.TestVideo]) -> None:
    v = videos["shots"]
    asset, job = await runner.upload_video(v.path)  # probed: no duration given
    assert asset.stored_path == v.path and asset.size_bytes == Path(v.path).stat().st_size
    assert abs(asset.duration_ms - v.duration_ms) <= 40
    assert (asset.width, asset.height, asset.fps) == (160, 90, 25.0)
    summary = await runner.step()
    assert summary["status"] == "completed", summary["error"]
    result = summary["result"]
    assert result["analysis"] == "frames"
    assert within_one_frame([round(ms * v.fps / 1000) for ms in result["scene_cuts_ms"]],
                            v.cut_frames)
    assert result["scene_cuts_ms"] == sorted(result["scene_cuts_ms"])
    assert (result["fps"], result["width"], result["height"]) == (25.0, 160, 90)
    assert result["frames_decoded"] == v.frames
    variants = result["variants"]
    assert result["clips_created"] == len(variants) == 5  # 6 shots, the 0.6 s one merged
    assert variants[0]["start_ms"] == 0 and variants[-1]["end_ms"] == result["duration"]
    assert all(set(x) == {"clip_id", "start_ms", "end_ms", "visual_score"} for x in variants)
    flat = variants[2]  # the third shot is flat grey
    assert flat["visual_score"] < 0.05
    assert all(x["visual_score"] > 0.5 for i, x in enumerate(variants) if i != 2)
    job_after = await runner.get_job(job.id)
    assert job_after.progress == 1.0 and job_after.status is JobStatus.COMPLETED
    clips = await runner.clips_of(asset.id)
    assert [(c.start_ms, c.end_ms, c.visual_score) for c in clips] == [
        (x["start_ms"], x["end_ms"], x["visual_score"]) for x in variants]


async def test_thumbnails_are_stored_and_decode_as_images(
        runner: jobkit.Runner, videos: dict[str, video.TestVideo]) -> None:
    asset, _ = await runner.upload_video(videos["shots"].path)
    assert (await runner.step())["status"] == "completed"
    async with runner.sessions() as db:
        rows = (await db.execute(select(Clip.start_ms, Clip.thumbnail).where(
            Clip.video_asset_id == asset.id).order_by(Clip.start_ms))).all()
    assert len(rows) == 5
    means = []
    for _, jpeg in rows:
        assert jpeg is not None and jpeg[:2] == b"\xff\xd8" and len(jpeg) < 20_000
        with av.open(io.BytesIO(jpeg)) as c:
            frame = next(c.decode(video=0))
            assert (frame.width, frame.height) == (160, 90)
            means.append(frame.to_ndarray(format="rgb24").mean(axis=(0, 1)))
    # Each clip's thumbnail shows its own shot: the flat one is grey, the others coloured.
    grey = means[2]
    assert np.ptp(grey) < 8, grey
    assert all(np.ptp(m) > 30 for i, m in enumerate(means) if i != 2)


async def test_results_are_identical_on_a_second_run(
        runner: jobkit.Runner, videos: dict[str, video.TestVideo]) -> None:
    _, j1 = await runner.upload_video(videos["shots"].path)
    _, j2 = await runner.upload_video(videos["shots"].path)
    await runner.drain()
    r1, r2 = (await runner.get_job(j1.id)).result, (await runner.get_job(j2.id)).result

    def strip(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "variants": [{k: v for k, v in x.items() if k != "clip_id"}
                                  for x in r["variants"]]}

    assert strip(r1) == strip(r2)


async def test_a_retried_analysis_leaves_one_set_of_clips(
        runner: jobkit.Runner, videos: dict[str, video.TestVideo]) -> None:
    async def flaky(job: jobkit.Job, db: Any) -> Any:
        result = await cut_analysis.run_cut_analysis(job, db)  # clips added to the session
        if job.attempts == 1:
            raise RuntimeError("lost the network after storing the clips")
        return result

    runner.handlers["cut_analysis"] = flaky
    asset, job = await runner.upload_video(videos["shots"].path)
    first = await runner.step()
    assert first["status"] == "retry"
    assert await count_clips(runner, asset.id) == 0, "the failed attempt's clips rolled back"
    second = await runner.step()
    assert second["status"] == "completed"
    assert await count_clips(runner, asset.id) == second["result"]["clips_created"] == 5


async def test_another_job_completes_while_an_analysis_decodes(
        runner: jobkit.Runner, videos: dict[str, video.TestVideo],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode runs in a thread: while it is held mid-file, the same worker's event loop
    claims and completes another job."""
    release = threading.Event()
    decoding = asyncio.Event()
    loop = asyncio.get_running_loop()
    real = cut_analysis.report_progress

    def held(fraction: float, message: str | None = None) -> Any:
        if message and message.startswith("decoding") and fraction > 0.2:
            loop.call_soon_threadsafe(decoding.set)
            assert release.wait(30), "the quick job never completed"
        return real(fraction, message)

    monkeypatch.setattr(cut_analysis, "report_progress", held)
    done: dict[str, str] = {}

    @runner.handler("quick")
    async def quick(job: jobkit.Job, db: Any) -> dict[str, Any]:
        return {"ok": True}

    def on_done(summary: dict[str, Any]) -> None:
        done[summary["job_type"]] = summary["status"]
        if summary["job_type"] == "quick":
            release.set()

    _, analysis = await runner.upload_video(videos["shots"].path)
    worker = runner.worker(concurrency=2, burst=True, on_done=on_done)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(decoding.wait(), 30)
    quick_job = await runner.enqueue("quick")
    stats = await asyncio.wait_for(task, 60)
    assert stats.completed == 2 and list(done) == ["quick", "cut_analysis"]
    assert (await runner.get_job(quick_job.id)).status is JobStatus.COMPLETED
    assert (await runner.get_job(analysis.id)).result["analysis"] == "frames"


async def test_a_name_only_upload_keeps_the_simulated_analysis(runner: jobkit.Runner) -> None:
    asset, _ = await runner.upload_video("match.mp4", 60_000)
    summary = await runner.step()
    assert summary["result"]["analysis"] == "simulated"
    assert summary["result"]["clips_created"] == 3 and "scene_cuts_ms" not in summary["result"]
    async with runner.sessions() as db:
        thumbs = (await db.execute(select(Clip.thumbnail).where(
            Clip.video_asset_id == asset.id))).scalars().all()
    assert thumbs == [None, None, None]


# ------------------------------------------------------------------------------------
# Bad input: a clear permanent failure, nothing half-written (both backends)
# ------------------------------------------------------------------------------------
def _bad_file(kind: str, d: Path, good: video.TestVideo) -> Path:
    data = Path(good.path).read_bytes()
    if kind == "not_a_video":
        p = d / "notes.mp4"
        p.write_text("these are my notes, not a video\n" * 40)
    elif kind == "truncated_mp4":
        p = d / "cut_short.mp4"
        p.write_bytes(data[:len(data) // 2])
    elif kind == "truncated_mkv":
        mkv = make_test_video(d / "whole.mkv", [2.0, 2.0, 2.0])
        p = d / "cut_short.mkv"
        p.write_bytes(Path(mkv.path).read_bytes()[:Path(mkv.path).stat().st_size // 2])
    elif kind == "corrupt":
        mkv = make_test_video(d / "whole2.mkv", [2.0, 2.0, 2.0, 2.0])
        raw = bytearray(Path(mkv.path).read_bytes())
        start = len(raw) // 3
        raw[start:start + 4000] = bytes((i * 7) % 256 for i in range(4000))
        p = d / "damaged.mkv"
        p.write_bytes(bytes(raw))
    elif kind == "audio_only":
        p = d / "speech.wav"
        with av.open(str(p), "w") as out:
            stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16",
                                               layout="mono")
            frame.sample_rate, frame.pts = 8000, 0
            for packet in [*stream.encode(frame), *stream.encode()]:
                out.mux(packet)
    elif kind == "zero_duration":
        p = d / "empty.avi"
        out = av.open(str(p), "w")
        s = out.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 160, 90, "yuv420p"
        out.start_encoding()
        out.close()
    elif kind in ("too_large", "too_long"):
        p = Path(good.path)
    else:  # missing
        p = d / "gone.mp4"
        p.write_bytes(data)
        p.unlink()
    return p


BAD = {
    "not_a_video": "cannot be read as a video",
    "truncated_mp4": "truncated before its index",
    "truncated_mkv": "is truncated or corrupt: frames decode only up to",
    "corrupt": "is corrupt: only",
    "audio_only": "has no video stream (it has: audio)",
    "zero_duration": "has a zero duration",
    "too_large": "larger than the limit of 100x100",
    "too_long": "longer than the limit of 2 s",
    "missing": "is missing",
}


@pytest.mark.parametrize("kind", list(BAD))
async def test_bad_video_input_is_a_clear_permanent_failure(
        db_url: str, handlers: dict, tmp_path: Path, videos: dict[str, video.TestVideo],
        kind: str) -> None:
    limits: dict[str, Any] = {"too_large": {"video_max_width": 100, "video_max_height": 100},
                              "too_long": {"video_max_seconds": 2.0}}.get(kind, {})
    path = _bad_file(kind, tmp_path, videos["shots"])
    async with await jobkit.open(db_url, handlers=handlers, retry_backoff_base=0.0,
                                 **limits) as runner:
        if kind in ("truncated_mkv", "corrupt"):
            # Its header is sound, so the upload's probe accepts it; decoding finds the damage.
            asset, job = await runner.upload_video(str(path))
        else:
            # At upload: probing refuses it and stores nothing.
            with pytest.raises((video.VideoError, jobkit.InvalidTransition)) as refused:
                await runner.upload_video(str(path))
            assert BAD[kind] in str(refused.value) or (
                kind == "missing" and "no video file at" in str(refused.value))
            assert await count_jobs(runner) == 0
            # Recorded anyway (a duration given, or the file broke after the upload): the job
            # fails at once, naming what is wrong, and leaves no clip behind.
            asset, job = await runner.upload_video(path.name, 10_000, stored_path=str(path),
                                                   size_bytes=123)
        summary = await runner.step()
        assert summary["status"] == "failed", summary
        assert BAD[kind] in summary["error"], summary["error"]
        assert summary["error"].startswith("VideoError: ")
        failed = await runner.get_job(job.id)
        assert failed.attempts == 1 and failed.status is JobStatus.FAILED
        assert await count_clips(runner, asset.id) == 0
        stored = await runner.get_asset(asset.id)
        assert (stored.stored_path, stored.duration_ms) == (asset.stored_path, asset.duration_ms)


# ------------------------------------------------------------------------------------
# Uploads with a file: the CLI and the HTTP API probe it
# ------------------------------------------------------------------------------------
def test_cli_upload_probes_the_file_and_refuses_a_non_video(
        sqlite_url: str, tmp_path: Path, videos: dict[str, video.TestVideo]) -> None:
    from test_cli import jk, out_json

    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n" * 50)
    assert jk("init", url=sqlite_url).returncode == 0
    refused = jk("upload", str(notes), url=sqlite_url)
    assert refused.returncode == 1, refused.stderr
    assert "notes.mp4 cannot be read as a video" in refused.stderr
    assert "Traceback" not in refused.stderr
    listed = out_json(jk("jobs", "--json", url=sqlite_url))
    assert listed == [], "nothing was stored"
    up = out_json(jk("upload", videos["busy"].path, "--json", url=sqlite_url))
    assert up["duration_ms"] == 3000 and up["stored_path"] == videos["busy"].path


async def test_multipart_upload_without_a_duration_is_probed(
        runner: jobkit.Runner, tmp_path: Path, videos: dict[str, video.TestVideo]) -> None:
    from jobkit.api import create_app

    media = tmp_path / "media"
    app = create_app(runner.settings.replace(media_dir=str(media), dev_endpoints=True),
                     runner=runner)
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://jobkit.test") as client:
        data = Path(videos["shots"].path).read_bytes()
        r = await client.post("/upload", files={"file": ("Final Match.mp4", data)})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["stored"] and body["filename"] == "Final Match.mp4"
        assert abs(body["duration_ms"] - videos["shots"].duration_ms) <= 40
        processed = (await client.post("/jobs/process")).json()
        assert processed["status"] == "completed", processed
        assert processed["result"]["analysis"] == "frames"
        assert processed["result"]["clips_created"] == 5
        # Not a video: 422 naming the problem, and neither the file nor a row is kept.
        before = sorted(p.name for p in media.iterdir())
        bad = await client.post("/upload", files={"file": ("notes.mp4", b"hello " * 100)})
        assert bad.status_code == 422
        assert "file: notes.mp4 cannot be read as a video" in bad.json()["detail"] or \
            "cannot be read as a video" in bad.json()["detail"]
        assert sorted(p.name for p in media.iterdir()) == before
        assert await count_jobs(runner) == 1


async def test_thumbnail_strip_shows_each_clip_with_its_score(
        runner: jobkit.Runner, videos: dict[str, video.TestVideo]) -> None:
    import base64
    import re

    asset, _ = await runner.upload_video(videos["shots"].path)
    assert (await runner.step())["status"] == "completed"
    strip = await runner.thumbnails(asset.id)
    markup = strip._repr_html_()
    images = re.findall(r"src='data:image/jpeg;base64,([A-Za-z0-9+/=]+)'", markup)
    assert len(images) == 5 and all(base64.b64decode(i)[:2] == b"\xff\xd8" for i in images)
    clips = await runner.clips_of(asset.id)
    for c in clips:
        assert f"<b>{c.visual_score:.2f}</b>" in markup
    assert markup.count("3px solid #198754") == 1, "the best clip is outlined"
