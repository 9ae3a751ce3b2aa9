"""The original handler: cut a video into candidate clips and score each one.

A video uploaded with its file (``jobkit upload PATH``, a multipart ``POST /upload``,
``runner.upload_video(path)``) is decoded in a worker thread: clips follow its real shot
cuts, each with a ``visual_score`` from its frames and a JPEG thumbnail (see
:mod:`jobkit.video`). A name-only upload keeps the original simulation: one clip per
20 s, a score hashed from the name (``analysis: "simulated"``).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

from sqlalchemy import Table, Uuid, bindparam, delete, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from ..backends import backend_of
from ..backends.common import Prepared, lane_open
from ..database import session_used, settings_of
from ..errors import PermanentError
from ..models import Clip, Job, VideoAsset, new_id, new_ids, utcnow
from ..progress import current_tracker, report_progress

CLIP_MS = 20_000

_assets: Table = VideoAsset.__table__  # type: ignore[assignment]
_clips: Table = Clip.__table__  # type: ignore[assignment]
_HAS_CLIPS = exists().where(
    _clips.c.job_id == bindparam("job_id", type_=Uuid)).label("has_clips")
_ASSET_COLUMNS = (_assets.c.filename, _assets.c.duration_ms, _assets.c.stored_path, _HAS_CLIPS)
#: The asset's three columns the analysis needs, and whether the job already has clips, read
#: in the fast lane (see _read_asset).
_READ_ASSET = Prepared(select(*_ASSET_COLUMNS).where(_assets.c.id == bindparam("id", type_=Uuid)),
                       _ASSET_COLUMNS)
# Built once: building a statement (and its cache key) costs more than running it here.
_DELETE_CLIPS = delete(_clips).where(_clips.c.job_id == bindparam("job_id", type_=Uuid))
_INSERT_CLIPS = insert(_clips)


def visual_score(filename: str, duration_ms: int, index: int) -> float:
    """A deterministic score in [0, 1] for clip ``index`` of a video (same input, same score)."""
    digest = hashlib.sha256(f"{filename}|{duration_ms}|{index}".encode()).digest()
    return round(int.from_bytes(digest[:8], "big") / 2**64, 4)


def clip_bounds(duration_ms: int) -> list[tuple[int, int]]:
    """One clip per 20 s; the last one may be shorter."""
    return [(start, min(start + CLIP_MS, duration_ms)) for start in range(0, duration_ms, CLIP_MS)]


def check_cut_analysis_params(params: dict[str, Any]) -> None:
    """Refuse params without a valid ``video_asset_id`` at enqueue (not at run time)."""
    from ..errors import InvalidParams

    raw = params.get("video_asset_id")
    if raw is None:
        raise InvalidParams("['video_asset_id']", "is required: the id of a VideoAsset "
                            "(upload a video to get one)")
    if not isinstance(raw, str):
        raise InvalidParams("['video_asset_id']", "must be a UUID string")
    try:
        uuid.UUID(raw)
    except ValueError:
        raise InvalidParams("['video_asset_id']", f"{raw[:60]!r} is not a valid UUID") from None


async def run_cut_analysis(job: Job, db: AsyncSession) -> dict[str, Any]:
    """Analyse the job's video asset and store one scored ``Clip`` per 20 s of video."""
    raw = (job.params or {}).get("video_asset_id")
    if raw is None:
        raise PermanentError("cut_analysis needs params['video_asset_id'] (the id of a VideoAsset)")
    try:
        asset_id = raw if isinstance(raw, uuid.UUID) else uuid.UUID(str(raw))
    except ValueError:
        raise PermanentError(f"video_asset_id {raw!r} is not a valid UUID") from None
    filename, duration, stored_path, had_clips = await _read_asset(db, asset_id, job.id)
    if stored_path:
        return await _analyse_file(job, db, asset_id, stored_path)

    await asyncio.sleep(settings_of(db).cut_analysis_seconds)  # the simulated analysis

    # Clips of an earlier attempt that failed were rolled back with it; those of a
    # completed run of this job (run again: ``retry_job``) are replaced. Only then is there
    # anything to delete: no clip of this job can appear after the read but by another
    # attempt's completion, and then this attempt's fenced completion fails and rolls back.
    # Core statements, one INSERT for the clips: the result needs no ORM objects, and
    # making, flushing and tracking three of them per job cost more than the statements.
    if had_clips:
        await db.execute(_DELETE_CLIPS, {"job_id": job.id})
    bounds = clip_bounds(duration)
    clips = [(clip_id, start, end, visual_score(filename, duration, i))
             for i, (clip_id, (start, end)) in enumerate(zip(new_ids(len(bounds)), bounds,
                                                              strict=True))]
    now = utcnow()
    await db.execute(_INSERT_CLIPS, [
        {"id": clip_id, "video_asset_id": asset_id, "job_id": job.id, "start_ms": start,
         "end_ms": end, "visual_score": score, "created_at": now}
        for clip_id, start, end, score in clips])
    return {**_result(clips, duration), "analysis": "simulated"}


async def _read_asset(db: AsyncSession, asset_id: uuid.UUID,
                      job_id: uuid.UUID) -> tuple[str, int, str | None, bool]:
    """The asset's filename, duration and stored path, and whether job ``job_id`` has clips
    already (True when not known), read in its own transaction: no connection or snapshot
    is held while the video is analysed. Raises PermanentError when there is no such asset
    or it cannot be cut.

    In the fast lane (one autocommitted statement on the driver's connection, see
    ``fetch_alone``) when it is open and the session has no transaction of its own (whose
    uncommitted rows only the session sees); through the session otherwise.
    """
    bind = db.bind
    engine = bind if isinstance(bind, AsyncEngine) else None
    lane = engine is not None and lane_open(engine) and not (
        session_used(db) and db.in_transaction())
    found: tuple[str, int | None, str | None] | None = None
    had_clips = True
    if lane and engine is not None:
        rows = await backend_of(engine).fetch_alone(engine, _READ_ASSET,
                                                    {"id": asset_id, "job_id": job_id})
        if rows:
            found = rows[0]["filename"], rows[0]["duration_ms"], rows[0]["stored_path"]
            had_clips = bool(rows[0]["has_clips"])
    else:
        asset = await db.get(VideoAsset, asset_id)
        if asset is not None:
            found = asset.filename, asset.duration_ms, asset.stored_path
    if found is None:
        raise PermanentError(f"video asset {asset_id} not found; upload it before analysing it")
    filename, duration, stored_path = found
    if duration is None or duration <= 0:
        raise PermanentError(
            f"video asset {asset_id} ({filename!r}) has duration_ms={duration}; "
            "a video must last more than 0 ms to be cut")
    if not lane:
        await db.commit()  # end the read transaction
    return filename, duration, stored_path, had_clips


def _result(clips: list[tuple[uuid.UUID, int, int, float]], duration: int) -> dict[str, Any]:
    """The job's result from its clips' (id, start_ms, end_ms, visual_score)."""
    return {
        "clips_created": len(clips),
        "duration": duration,
        "variants": [
            {"clip_id": str(clip_id), "start_ms": start, "end_ms": end, "visual_score": score}
            for clip_id, start, end, score in clips
        ],
    }


async def _analyse_file(job: Job, db: AsyncSession, asset_id: uuid.UUID,
                        path: str) -> dict[str, Any]:
    """Decode the stored file in a thread, store one scored clip (with a thumbnail) per shot."""
    try:
        from .. import video
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise PermanentError(str(exc)) from None
    from ..blocking import run_blocking

    s = settings_of(db)
    limits = video.Limits(s.video_max_width, s.video_max_height, s.video_max_seconds)
    tracker = current_tracker()
    await report_progress(0.0, "opening the video")

    def on_progress(fraction: float, message: str) -> None:
        if tracker is not None and tracker.closed:  # the job ended (cancelled, timed out)
            raise video.VideoError("analysis abandoned: the job stopped while decoding")
        report_progress(fraction, message)

    try:
        found = await run_blocking(video.analyse, path, limits=limits, on_progress=on_progress)
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise PermanentError(str(exc)) from None
    bounds = found.clip_bounds()
    await report_progress(0.99, f"storing {len(bounds)} clips")
    await db.execute(delete(Clip).where(Clip.job_id == job.id))
    clips = [
        Clip(id=new_id(), video_asset_id=asset_id, job_id=job.id, start_ms=start, end_ms=end,
             visual_score=found.score(start, end), thumbnail=found.thumbnail(start, end))
        for start, end in bounds
    ]
    db.add_all(clips)
    await db.execute(update(VideoAsset).where(VideoAsset.id == asset_id).values(
        width=found.width, height=found.height, fps=round(found.fps, 3)))
    return {**_result([(c.id, c.start_ms, c.end_ms, c.visual_score) for c in clips],
                      found.duration_ms), "analysis": "frames",
            "scene_cuts_ms": found.cuts_ms, "fps": round(found.fps, 3), "width": found.width,
            "height": found.height, "frames_decoded": found.frames_decoded}


#: Checked by ``Runner.enqueue`` (and the CLI and HTTP faces) before a job is stored.
run_cut_analysis.check_params = check_cut_analysis_params  # type: ignore[attr-defined]
