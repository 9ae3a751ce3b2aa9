"""The original handler: cut a video into ~20 s candidate clips and score each one."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from ..config import Settings
from ..errors import PermanentError
from ..models import Clip, Job, VideoAsset, new_id

CLIP_MS = 20_000


def visual_score(filename: str, duration_ms: int, index: int) -> float:
    """A deterministic score in [0, 1] for clip ``index`` of a video (same input, same score)."""
    digest = hashlib.sha256(f"{filename}|{duration_ms}|{index}".encode()).digest()
    return round(int.from_bytes(digest[:8], "big") / 2**64, 4)


def clip_bounds(duration_ms: int) -> list[tuple[int, int]]:
    """One clip per 20 s; the last one may be shorter."""
    return [(start, min(start + CLIP_MS, duration_ms)) for start in range(0, duration_ms, CLIP_MS)]


def settings_of(db: AsyncSession) -> Settings:
    """The settings of the worker running this job (from the environment otherwise)."""
    found = db.info.get("jobkit.settings")
    return found if isinstance(found, Settings) else Settings.from_env()


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
    asset = await db.get(VideoAsset, asset_id)
    if asset is None:
        raise PermanentError(f"video asset {asset_id} not found; upload it before analysing it")
    filename, duration = asset.filename, asset.duration_ms
    if duration is None or duration <= 0:
        raise PermanentError(
            f"video asset {asset_id} ({filename!r}) has duration_ms={duration}; "
            "a video must last more than 0 ms to be cut")
    # End the read transaction: no connection or snapshot is held while we analyse.
    await db.commit()

    await asyncio.sleep(settings_of(db).cut_analysis_seconds)  # the simulated analysis

    # Clips of an earlier attempt of this job were rolled back with it; this delete only
    # guards against a handler of the past that committed early.
    await db.execute(delete(Clip).where(Clip.job_id == job.id))
    clips = [
        Clip(id=new_id(), video_asset_id=asset_id, job_id=job.id, start_ms=start, end_ms=end,
             visual_score=visual_score(filename, duration, i))
        for i, (start, end) in enumerate(clip_bounds(duration))
    ]
    db.add_all(clips)
    return {
        "clips_created": len(clips),
        "duration": duration,
        "variants": [
            {"clip_id": str(c.id), "start_ms": c.start_ms, "end_ms": c.end_ms,
             "visual_score": c.visual_score}
            for c in clips
        ],
    }


#: Checked by ``Runner.enqueue`` (and the CLI and HTTP faces) before a job is stored.
run_cut_analysis.check_params = check_cut_analysis_params  # type: ignore[attr-defined]
