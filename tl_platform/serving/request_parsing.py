"""Turning request bytes and headers into typed bodies, or into an ``ApiError`` that names the field and rule.

Strict UTF-8, strict JSON (no NaN or Infinity, bounded nesting), then the pydantic schema. Every refusal is an
``ApiError`` carrying at most ``MAX_REPORTED_ERRORS`` problems and the count of the rest, so the answer to a
hostile body stays small and quick to build. The body's size is bounded before any of this, while it is read
(``body_limits``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import NoReturn, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from tl_platform.serving.schemas import MAX_REPORTED_ERRORS, SIZE_RULES, ErrorDetail

Body = TypeVar("Body", bound=BaseModel)
EVENT_TIME_HEADER = "X-Event-Time"
MAX_EVENT_TIME_CHARS = 64  # the longest ISO 8601 time with microseconds and an offset is 32
EVENT_TIME_FORMAT = "an ISO 8601 time with a time zone, e.g. 2025-03-01T12:00:00Z or 2025-03-01T14:00:00+02:00"


class ApiError(Exception):
    """A refused request: HTTP status, the field at fault, the rule, and a message naming both; ``details`` lists
    every problem reported (the first is the one named), ``omitted`` counts those left out, ``headers`` go on the
    response (``Retry-After``)."""

    def __init__(self, status: int, field: str, rule: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = [ErrorDetail(field=field, rule=rule, message=message)]
        self.omitted = 0
        self.headers = headers


def field_name(loc: tuple[int | str, ...]) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def validation_error(err: ValidationError) -> ApiError:
    """The schema's refusal: 413 when a size rule was broken (too many texts, a text too long), else 422; the
    first ``MAX_REPORTED_ERRORS`` problems listed, a size problem first."""
    problems = err.errors(include_url=False)
    details = []
    for problem in problems:
        name = field_name(tuple(problem["loc"]))
        message = str(problem["msg"]).removeprefix("Value error, ")
        details.append(ErrorDetail(field=name, rule=str(problem["type"]), message=f"{name}: {message}"))
    details.sort(key=lambda d: d.rule not in SIZE_RULES)  # stable: otherwise in the body's order
    status = 413 if details[0].rule in SIZE_RULES else 422
    error = ApiError(status, details[0].field, details[0].rule, details[0].message)
    error.details = details[:MAX_REPORTED_ERRORS]
    error.omitted = len(details) - len(error.details)
    return error


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


async def parse_body(request: Request, model: type[Body]) -> Body:
    """Strict UTF-8, strict JSON (no NaN or Infinity), then the schema; ApiError names the field and rule."""
    body = await request.body()
    if not body.strip():
        raise ApiError(400, "body", "json", "body: must be a JSON object, got an empty body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(
            400, "body", "utf8", f"body: must be UTF-8 encoded (invalid byte 0x{body[err.start]:02x} at offset {err.start})"
        ) from err
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise ApiError(400, "body", "json", f"body: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from err
    except ValueError as err:  # NaN or Infinity; an integer of more than 4300 digits
        raise ApiError(400, "body", "json", f"body: {err}") from err
    except RecursionError as err:  # the C parser stops at the interpreter's depth limit, quickly
        raise ApiError(400, "body", "json_depth", "body: JSON nested too deeply (the schema needs 3 levels)") from err
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise validation_error(err) from err


def event_time(request: Request, accept: bool) -> datetime | None:
    """The request's ``X-Event-Time`` in UTC, None without the header; ApiError (400) when the server does not
    accept event times, or the value is not one ISO 8601 time with a time zone."""
    values = request.headers.getlist(EVENT_TIME_HEADER)
    if not values:
        return None
    header = EVENT_TIME_HEADER
    if not accept:
        raise ApiError(400, header, "event_time_disabled",
                       f"{header}: this server logs its own clock's time; start it with --accept-event-time "
                       "(ServingConfig.accept_event_time) to let simulators and replays set the time")
    if len(values) > 1:
        raise ApiError(400, header, "event_time_once", f"{header}: give it once, got {len(values)} values")
    raw = values[0].strip()
    if len(raw) > MAX_EVENT_TIME_CHARS:
        raise ApiError(400, header, "event_time_format",
                       f"{header}: must be {EVENT_TIME_FORMAT}, at most {MAX_EVENT_TIME_CHARS} characters; got {len(raw)}")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as err:
        raise ApiError(400, header, "event_time_format", f"{header}: must be {EVENT_TIME_FORMAT}, got {raw!r}") from err
    if moment.utcoffset() is None:  # a naive time names no instant: the log and its windows are UTC
        raise ApiError(400, header, "event_time_timezone",
                       f"{header}: must carry a time zone (Z or +HH:MM); {raw!r} has none")
    try:
        return moment.astimezone(UTC)
    except OverflowError as err:  # 0001-01-01T00:00+01:00 has no UTC instant in datetime's range
        raise ApiError(400, header, "event_time_range", f"{header}: {raw!r} is outside the years 1 to 9999 in UTC") from err
