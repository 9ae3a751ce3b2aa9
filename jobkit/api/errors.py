"""The API's error responses: one ``detail`` line saying what was wrong (and, for a 422,
the per-field ``errors``)."""

from __future__ import annotations

import logging
import math
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..database import DB_ERRORS, describe_error
from ..errors import JobNotFound

log = logging.getLogger("jobkit")


def install_error_handlers(app: FastAPI) -> None:
    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = _json_safe(jsonable_encoder(exc.errors(), custom_encoder={Exception: str}))
        return JSONResponse({"detail": _messages(errors), "errors": errors}, status_code=422)

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, JobNotFound)
        return JSONResponse({"detail": f"no job with id {safe_text(str(exc.job_id))}; list "
                                       "jobs with GET /jobs"}, status_code=404)

    async def db_down(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s: database error: %s", request.method, request.url.path, describe_error(exc))
        return JSONResponse({"detail": f"database unavailable: {describe_error(exc)}"}, status_code=503)

    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(JobNotFound, not_found)
    for exc_type in DB_ERRORS:
        app.add_exception_handler(cast(type[Exception], exc_type), db_down)


def safe_text(text: str, limit: int = 200) -> str:
    """Text that can be encoded (no lone surrogates) and is not huge."""
    clean = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return clean if len(clean) <= limit else clean[:limit - 1] + "…"


def _json_safe(value: Any) -> Any:
    """Validation errors as strict JSON: a rejected NaN/Infinity or a lone surrogate in the
    echoed input would otherwise make the error response itself fail (a 500)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 60:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _messages(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        msg = str(e.get("msg", "invalid"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"
