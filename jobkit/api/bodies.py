"""Reading request bodies: size limits (counted as the stream is read) and strict JSON."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..jsonutil import loads_strict
from .errors import safe_text

M = TypeVar("M", bound=BaseModel)


class TooLarge(Exception):
    """A body went past its limit while being read."""


class BodyLimit:
    """ASGI middleware: a request body (other than a multipart upload, which has its own
    limit) larger than ``limit`` bytes gets 413, whether or not it declares a
    Content-Length: the stream is counted as it is read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", ())}
        if headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data"):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise TooLarge()
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting, sending)
        except TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body larger than {self.limit} bytes "
                                     "(JOBKIT_MAX_BODY_BYTES)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def limited(request: Request, limit: int) -> Request:
    """The same request, whose body raises :class:`TooLarge` past ``limit`` bytes."""
    seen = 0
    receive = request.receive

    async def counting() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge()
        return message

    return Request(request.scope, counting)


def too_large(limit: int, json_body: bool = False) -> HTTPException:
    if json_body:
        return HTTPException(413, f"JSON body larger than {limit} bytes; send the video "
                                  "itself as multipart/form-data")
    return HTTPException(413, f"upload larger than the limit of {limit} bytes "
                              "(JOBKIT_MAX_UPLOAD_BYTES)")


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body, read strictly: one message for every JSON route when it is
    not JSON (no NaN/Infinity, no 10,000-deep nesting, no 5,000-digit number)."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise HTTPException(415, "send a JSON body with content-type: application/json")
    try:
        raw = await limited(request, limit).body()
    except TooLarge:
        raise too_large(limit, True) from None
    try:
        return loads_strict(raw)
    except ValueError as exc:
        raise HTTPException(422, f"body is not valid JSON: {safe_text(str(exc))}") from None


def validated(model: type[M], data: Any) -> M:
    """``model`` validated from parsed JSON, or the same 422 FastAPI gives."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = jsonable_encoder(exc.errors(include_url=False), custom_encoder={Exception: str})
        raise RequestValidationError(
            [{**e, "loc": ("body", *e.get("loc", ()))} for e in errors]) from None
