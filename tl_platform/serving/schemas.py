"""Request and response bodies of the serving API, and the one error shape every 4xx/5xx uses."""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

REQUEST_ID_PATTERN = r"^[0-9a-f]{32}$"
# Slice attributes: bounded so a row's JSON stays under about 6 KB and slice keys stay usable as column names.
MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_KEY_CHARS = 64
MAX_ATTRIBUTE_VALUE_CHARS = 256
ATTRIBUTE_KEY_PATTERN = rf"^[A-Za-z0-9_.-]{{1,{MAX_ATTRIBUTE_KEY_CHARS}}}$"
_ATTRIBUTE_KEY = re.compile(ATTRIBUTE_KEY_PATTERN)
# An error response lists at most this many problems and counts the rest, so its size and the time to build it
# stay bounded whatever the body holds (100,000 wrong-typed items once made an 11 MB answer).
MAX_REPORTED_ERRORS = 10
# A business outcome's magnitude: within float's exact integers (2**53 is about 9.007e15), so the stored value
# is the one sent; larger integers (400 digits) would overflow float altogether.
OUTCOME_LIMIT = 1e15
OUTCOME_RANGE = "[-1e15, 1e15]"
# Rules that refuse a request for its size rather than its content: answered 413, not 422.
SIZE_RULES = frozenset({"max_texts_per_request", "max_text_chars"})


def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise PydanticCustomError("unicode", "must be valid Unicode text (no lone surrogate escapes)") from err
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("non_blank", "must contain at least one non-whitespace character")
    return _unicode(value)


def _storable(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("no_nul", "must not contain NUL characters")
    return _unicode(value)


def _preview(value: str, chars: int = 40) -> str:
    """The start of a value for a message: the caller sees which one, without a 10,000-character echo."""
    return repr(value) if len(value) <= chars else f"{value[:chars]!r}... ({len(value)} characters)"


def _attributes(value: object) -> object:
    """Every rule of ``attributes`` checked here, before the typed dict, so each refusal names the key at fault
    (by a bounded preview) and its rule, whatever the size of the input."""
    if not isinstance(value, dict):
        return value  # not an object: the typed dict below refuses it with pydantic's own message
    if len(value) > MAX_ATTRIBUTES:
        raise PydanticCustomError("max_attributes", "at most {limit} attributes, got {count}",
                                  {"limit": MAX_ATTRIBUTES, "count": len(value)})
    for key, item in value.items():
        if not _ATTRIBUTE_KEY.fullmatch(key):
            raise PydanticCustomError(
                "attribute_key",
                "key {key} must be 1 to {limit} characters of letters, digits, '_', '.' or '-'",
                {"key": _preview(key), "limit": MAX_ATTRIBUTE_KEY_CHARS},
            )
        if not isinstance(item, str):
            raise PydanticCustomError("attribute_value", "value of {key} must be a string, got {kind}",
                                      {"key": repr(key), "kind": type(item).__name__})
        if not 1 <= len(item) <= MAX_ATTRIBUTE_VALUE_CHARS:
            raise PydanticCustomError("attribute_value", "value of {key} must be 1 to {limit} characters, got {count}",
                                      {"key": repr(key), "limit": MAX_ATTRIBUTE_VALUE_CHARS, "count": len(item)})
        if "\x00" in item:
            raise PydanticCustomError("no_nul", "value of {key} must not contain NUL characters", {"key": repr(key)})
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as err:
            raise PydanticCustomError("unicode", "value of {key} must be valid Unicode text (no lone surrogate escapes)",
                                      {"key": repr(key)}) from err
    return value


def _few_unknown_fields(data: object, allowed: frozenset[str]) -> object:
    """Refuse a body with many unknown fields in one error: pydantic would report each, unbounded in number."""
    if isinstance(data, dict) and len(data) > len(allowed):
        unknown = [key for key in data if key not in allowed]
        if len(unknown) > MAX_REPORTED_ERRORS:
            raise PydanticCustomError(
                "extra_forbidden", "{count} unknown fields, e.g. {examples}; allowed: {allowed}",
                {"count": len(unknown), "examples": ", ".join(_preview(str(k), 20) for k in unknown[:3]),
                 "allowed": ", ".join(sorted(allowed))},
            )
    return data


def _outcome_in_range(value: float) -> float:
    # compared before any float(): a 400-digit integer compares exactly, where float() raises OverflowError
    if not -OUTCOME_LIMIT <= value <= OUTCOME_LIMIT:  # NaN and infinities fail this too
        shown = f"an integer of {len(str(abs(value)))} digits" if isinstance(value, int) else repr(value)
        raise PydanticCustomError("outcome_range", "must be a finite number in {range}, got {value}",
                                  {"range": OUTCOME_RANGE, "value": shown})
    return value


def _at_most_texts(limit: int) -> Any:
    def check(value: object) -> object:
        # before the items are validated: a list of 100,000 wrong-typed items is one error, not 100,000
        if isinstance(value, list) and len(value) > limit:
            raise PydanticCustomError("max_texts_per_request", "at most {limit} texts per request, got {count}",
                                      {"limit": limit, "count": len(value)})
        return value

    return BeforeValidator(check)


def _at_most_chars(limit: int) -> Any:
    def check(value: object) -> object:
        if isinstance(value, str) and len(value) > limit:
            raise PydanticCustomError("max_text_chars", "at most {limit} characters, got {count}",
                                      {"limit": limit, "count": len(value)})
        return value

    return BeforeValidator(check)


Text = Annotated[StrictStr, AfterValidator(_non_blank)]
StoredString = Annotated[StrictStr, Field(min_length=1, max_length=256), AfterValidator(_storable)]
# The typed dict documents the bounds in the OpenAPI schema; _attributes enforces them first, with its messages.
Attributes = Annotated[
    dict[
        Annotated[StrictStr, Field(pattern=ATTRIBUTE_KEY_PATTERN)],
        Annotated[StrictStr, Field(min_length=1, max_length=MAX_ATTRIBUTE_VALUE_CHARS)],
    ],
    Field(max_length=MAX_ATTRIBUTES),
    BeforeValidator(_attributes),
]


class PredictRequest(BaseModel):
    """One text (``text``) or a batch (``texts``); ``unit_id`` (user, session, tenant) pins the A/B variant;
    ``attributes`` name the slices the request belongs to, logged on each of its rows for per-slice monitoring."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: Text | None = Field(default=None, description="one text to classify")
    texts: list[Text] | None = Field(default=None, min_length=1, description="a batch of texts to classify")
    unit_id: StoredString | None = Field(
        default=None, description="user, session or tenant id; the same unit always sees the same variant"
    )
    attributes: Attributes | None = Field(
        default=None,
        description=(
            f"slices of this request, e.g. {{\"domain\": \"yelp\", \"device\": \"ios\"}}: at most {MAX_ATTRIBUTES} "
            f"keys of 1 to {MAX_ATTRIBUTE_KEY_CHARS} characters [A-Za-z0-9_.-], string values of 1 to "
            f"{MAX_ATTRIBUTE_VALUE_CHARS} characters; logged with every row of the request"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: object) -> object:
        return _few_unknown_fields(data, frozenset(cls.model_fields))

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise PydanticCustomError("text_xor_texts", "exactly one of 'text' or 'texts' must be given")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


@functools.cache
def bounded_predict_request(max_texts: int, max_text_chars: int | None) -> type[PredictRequest]:
    """``PredictRequest`` with a server's limits in its schema (and its OpenAPI document): at most ``max_texts``
    texts, each of at most ``max_text_chars`` characters (None: unbounded here, as with ``on_overlong="truncate"``,
    where the body limit bounds it and the server cuts the text). Both are checked before the items are, and
    refused with the rules ``max_texts_per_request`` and ``max_text_chars`` (answered 413)."""
    item: Any = Text
    if max_text_chars is not None:
        item = Annotated[Text, Field(max_length=max_text_chars), _at_most_chars(max_text_chars)]
    fields: dict[str, Any] = {
        "text": (item | None, Field(default=None, description="one text to classify")),
        "texts": (
            Annotated[list[item], Field(min_length=1, max_length=max_texts), _at_most_texts(max_texts)] | None,
            Field(default=None, description=f"a batch of 1 to {max_texts} texts to classify"),
        ),
    }
    return create_model("PredictRequest", __base__=PredictRequest, __doc__=PredictRequest.__doc__, **fields)


class Prediction(BaseModel):
    label: str = Field(description="the raw label value of the predicted class")
    label_name: str
    confidence: float = Field(description="probability of the predicted class")
    probabilities: dict[str, float] = Field(description="probability of every label")
    truncated: bool = Field(description="the text was cut to the configured max_text_chars")


class PredictResponse(BaseModel):
    request_id: str = Field(description="quote it in POST /feedback")
    variant: str = Field(description="champion or challenger")
    model_version: str
    latency_ms: float
    predictions: list[Prediction] = Field(description="one per text, in request order")


class FeedbackRequest(BaseModel):
    """The true label or a business outcome of an answered prediction, possibly days later."""

    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: Annotated[StrictStr, Field(pattern=REQUEST_ID_PATTERN)] = Field(
        description="the request_id a predict response returned (32 lowercase hex characters)"
    )
    item_index: StrictInt = Field(default=0, ge=0, le=9999, description="which text of a batch request")
    label: StoredString | None = Field(default=None, description="the true label (one of the model's labels)")
    outcome: Annotated[StrictFloat | StrictInt, AfterValidator(_outcome_in_range)] | None = Field(
        default=None, description=f"a business outcome: a finite number in {OUTCOME_RANGE}",
        json_schema_extra={"minimum": -OUTCOME_LIMIT, "maximum": OUTCOME_LIMIT},
    )

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: object) -> object:
        return _few_unknown_fields(data, frozenset(cls.model_fields))

    @model_validator(mode="after")
    def _something(self) -> FeedbackRequest:
        if self.label is None and self.outcome is None:
            raise PydanticCustomError("label_or_outcome", "at least one of 'label' or 'outcome' must be given")
        return self


class FeedbackResponse(BaseModel):
    request_id: str
    item_index: int
    status: str = "recorded"


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    status: str
    champion_version: str
    challenger_version: str | None
    challenger_share: float
    shadow: bool
    deployment_problem: str | None = Field(
        default=None,
        description="why the current record is not what serves (a failed reload, a dropped challenger, a champion "
        "alias that names another version than the record); the deployment above keeps serving meanwhile",
    )


class ErrorDetail(BaseModel):
    field: str = Field(description="the field at fault, e.g. texts[2], or body for the body as a whole")
    rule: str = Field(description="the rule it broke, e.g. string_too_long, json, utf8, max_texts")
    message: str


class ErrorResponse(BaseModel):
    error: str = Field(description="the first (often only) problem, as a sentence naming field and rule")
    errors: list[ErrorDetail] = Field(description=f"the problems found, at most {MAX_REPORTED_ERRORS}")
    errors_omitted: int = Field(default=0, description="how many further problems were found but not listed")
