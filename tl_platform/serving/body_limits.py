"""Request bodies bounded while they are read: a 413 before an oversized body is held in memory.

A plain ASGI middleware in front of the routes. A ``Content-Length`` over the path's limit is refused before any
of the body is read; a body without one (``Transfer-Encoding: chunked``) is counted as its chunks arrive and
refused the moment the count passes the limit, so the server never holds more than the limit plus one chunk,
whatever the caller sends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tl_platform.serving.schemas import ErrorDetail, ErrorResponse

DEFAULT_BODY_LIMIT = 65_536  # any path without a limit of its own (feedback, the GET endpoints, unknown paths)


class BodyTooLarge(Exception):
    """Raised from ``receive`` inside the app once the body read so far passes the limit."""

    def __init__(self, limit: int, received: int) -> None:
        super().__init__(
            f"body: must be at most {limit} bytes; refused after {received} bytes had arrived (no Content-Length)"
        )
        self.limit = limit
        self.received = received


@dataclass(frozen=True)
class BodyLimits:
    """Largest accepted body per path in bytes, and the limit of every other path."""

    per_path: Mapping[str, int] = field(default_factory=dict)
    default: int = DEFAULT_BODY_LIMIT

    def __post_init__(self) -> None:
        for path, limit in {**self.per_path, "(default)": self.default}.items():
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"BodyLimits: the limit of {path} must be a positive integer of bytes, got {limit!r}")

    def limit(self, path: str) -> int:
        return self.per_path.get(path, self.default)


def error_body(field_name: str, rule: str, message: str) -> bytes:
    """The API's one error shape (``ErrorResponse``) as JSON bytes."""
    detail = ErrorDetail(field=field_name, rule=rule, message=message)
    return ErrorResponse(error=message, errors=[detail]).model_dump_json().encode()


class BodyLimitMiddleware:
    """Refuses bodies over the path's limit with 413 (a malformed ``Content-Length`` with 400), in the API's
    error shape; ``on_refused(path, rule)`` counts each refusal."""

    def __init__(self, app: ASGIApp, limits: BodyLimits, on_refused: Callable[[str, str], None] | None = None) -> None:
        self.app = app
        self.limits = limits
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.limits.limit(path)
        declared = [value for name, value in scope["headers"] if name == b"content-length"]
        if declared:
            raw = declared[0].strip()
            if len(declared) > 1 or not raw.isdigit() or len(raw) > 20:
                await self._refuse(send, path, 400, "content_length",
                                   "Content-Length: must be one non-negative integer of bytes")
                return
            length = int(raw)
            if length > limit:
                await self._refuse(send, path, 413, "max_body_bytes", f"body: must be at most {limit} bytes, got {length}")
                return
        received = 0
        response_started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # before the app sees the chunk, so it never buffers past the limit
                    raise BodyTooLarge(limit, received)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except BodyTooLarge as err:
            if response_started:  # nothing sensible can follow a started response; let the server close it
                raise
            await self._refuse(send, path, 413, "max_body_bytes", str(err))

    async def _refuse(self, send: Send, path: str, status: int, rule: str, message: str) -> None:
        if self.on_refused is not None:
            self.on_refused(path, rule)
        field_name = "Content-Length" if rule == "content_length" else "body"
        body = error_body(field_name, rule, message)
        # Connection: close, as the unread rest of the body must not be taken for the next request
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
