"""``POST /upload``: a video by name (JSON) or as a file (multipart), and its analysis job."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from starlette.datastructures import UploadFile

from ..checks import INT32_MAX
from ..config import Settings
from ..errors import InvalidTransition
from ..runner import Runner
from ..shapes import upload_dict
from .bodies import TooLarge, limited, read_json, too_large, validated
from .models import UploadIn, UploadOut, check_filename, error_responses
from .state import State

#: Bytes a multipart body may carry beyond the file itself (boundaries, headers, fields).
MULTIPART_SLACK = 64 * 1024
#: A JSON body to /upload is a few fields; this is plenty.
JSON_BODY_LIMIT = 64 * 1024
#: Extensions an uploaded file keeps: video containers only (anything else is stored
#: without an extension, so a client cannot plant ``x.php`` or ``x.html`` in the media folder).
VIDEO_EXTENSIONS = frozenset({
    ".3g2", ".3gp", ".asf", ".avi", ".f4v", ".flv", ".m2ts", ".m2v", ".m4v", ".mkv", ".mov",
    ".mp4", ".mpeg", ".mpg", ".mts", ".mxf", ".ogv", ".ts", ".vob", ".webm", ".wmv"})

router = APIRouter()

_UPLOAD_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": UploadIn.model_json_schema()},
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "the video; stored under a generated name"},
                "duration_ms": {"type": "integer", "minimum": 1,
                                "description": "probed from the file when not given"},
                "filename": {"type": "string",
                             "description": "display name (default: the file's name)"},
                "priority": {"type": "integer"},
            }}},
    },
}


@router.post("/upload", status_code=201, response_model=UploadOut, tags=["videos"],
             summary="Upload a video: creates a VideoAsset and a pending cut_analysis job",
             responses=error_responses(413, 415, 422, 503),
             openapi_extra={"requestBody": _UPLOAD_BODY})
async def upload(request: Request, state: State) -> UploadOut:
    return await _upload(request, state.get_runner(), state.settings)


def _uploaded(asset: Any, job: Any) -> UploadOut:
    """The response: the shape ``jobkit upload --json`` prints, less what a client has no use
    for (the server's path of the file), plus whether a file was stored."""
    return UploadOut.model_validate({**upload_dict(asset, job),
                                     "stored": asset.stored_path is not None})


def _int_field(name: str, raw: Any, *, minimum: int) -> int:
    if not isinstance(raw, str) or not re.fullmatch(r"[+-]?\d{1,12}", raw.strip()):
        raise HTTPException(422, f"{name}: must be a whole number, got {raw!r}")
    value = int(raw)
    if not minimum <= value <= INT32_MAX:
        raise HTTPException(422, f"{name}: must be between {minimum} and {INT32_MAX}, "
                                 f"got {value}")
    return value


async def _upload(request: Request, runner: Runner, settings: Settings) -> UploadOut:
    limit = settings.max_upload_bytes
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype not in ("application/json", "multipart/form-data"):
        raise HTTPException(415, "send application/json {filename, duration_ms} or "
                                 "multipart/form-data with a file and duration_ms")
    body_limit = min(limit, JSON_BODY_LIMIT) if ctype == "application/json" \
        else limit + MULTIPART_SLACK
    declared = request.headers.get("content-length")
    is_json = ctype == "application/json"
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise too_large(body_limit if is_json else limit, is_json)

    if is_json:
        item = validated(UploadIn, await read_json(request, body_limit))
        try:
            asset, job = await runner.upload_video(item.filename, item.duration_ms,
                                                   priority=item.priority)
        except InvalidTransition as exc:
            raise HTTPException(422, str(exc)) from None
        return _uploaded(asset, job)

    try:
        form = await limited(request, body_limit).form(max_files=1, max_fields=10)
    except TooLarge:
        raise too_large(limit) from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, "file: a multipart upload needs a 'file' part")
        raw_duration = form.get("duration_ms", form.get("duration"))
        duration_ms = None if raw_duration is None else \
            _int_field("duration_ms", raw_duration, minimum=1)
        raw_priority = form.get("priority")
        priority = 0 if raw_priority is None else _int_field("priority", raw_priority,
                                                              minimum=-INT32_MAX)
        given = form.get("filename")
        name = given if isinstance(given, str) and given else (upload.filename or "")
        try:
            check_filename(name)
        except ValueError as exc:
            raise HTTPException(422, f"filename: {exc}") from None
        if upload.size is not None and upload.size > limit:
            raise too_large(limit)
        path, size = await _store(upload, name, settings.media_dir, limit)
    finally:
        await form.close()
    try:
        if duration_ms is None:
            duration_ms = await _probed_duration(runner, path)
        asset, job = await runner.upload_video(name, duration_ms, priority=priority,
                                               stored_path=path, size_bytes=size)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return _uploaded(asset, job)


async def _probed_duration(runner: Runner, path: str) -> int:
    """The stored file's duration, probed; 422 (the caller removes the file) when it is not a
    video jobkit can analyse."""
    try:
        from ..video import VideoError
    except ImportError:  # pragma: no cover - depends on the installation
        raise HTTPException(422, "duration_ms: field required (this server cannot probe "
                                 "videos: install the 'video' extra)") from None
    try:
        info = await runner.probe_video(path)
    except ImportError:  # pragma: no cover - av missing while numpy is present
        raise HTTPException(422, "duration_ms: field required (this server cannot probe "
                                 "videos: install the 'video' extra)") from None
    except VideoError as exc:
        raise HTTPException(422, f"file: {exc}") from None
    return int(info.duration_ms)


async def _store(upload: UploadFile, name: str, media_dir: str, limit: int) -> tuple[str, int]:
    """Copy the upload into ``media_dir`` under a generated name; returns (path, bytes)."""
    ext = os.path.splitext(name)[1].lower()
    ext = ext if ext in VIDEO_EXTENSIONS else ""
    stem = uuid.uuid4().hex

    def copy() -> tuple[str, int]:
        folder = os.path.abspath(media_dir)
        final = os.path.join(folder, stem + ext)
        partial = os.path.join(folder, f".{stem}.part")
        os.makedirs(folder, exist_ok=True)
        size = 0
        try:
            with open(partial, "xb") as out:
                upload.file.seek(0)
                while chunk := upload.file.read(1024 * 1024):
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge()
                    out.write(chunk)
            os.replace(partial, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        return final, size

    try:
        return await asyncio.to_thread(copy)
    except TooLarge:
        raise too_large(limit) from None
