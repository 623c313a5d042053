"""Request and response bodies of the serving API, and the one error shape every 4xx/5xx uses."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, model_validator
from pydantic_core import PydanticCustomError

REQUEST_ID_PATTERN = r"^[0-9a-f]{32}$"


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


Text = Annotated[StrictStr, AfterValidator(_non_blank)]
StoredString = Annotated[StrictStr, Field(min_length=1, max_length=256), AfterValidator(_storable)]


class PredictRequest(BaseModel):
    """One text (``text``) or a batch (``texts``); ``unit_id`` (user, session, tenant) pins the A/B variant."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: Text | None = Field(default=None, description="one text to classify")
    texts: list[Text] | None = Field(default=None, min_length=1, description="a batch of texts to classify")
    unit_id: StoredString | None = Field(
        default=None, description="user, session or tenant id; the same unit always sees the same variant"
    )

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise PydanticCustomError("text_xor_texts", "exactly one of 'text' or 'texts' must be given")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


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
    outcome: StrictFloat | StrictInt | None = Field(default=None, description="a business outcome (a finite number)")

    @model_validator(mode="after")
    def _something(self) -> FeedbackRequest:
        if self.label is None and self.outcome is None:
            raise PydanticCustomError("label_or_outcome", "at least one of 'label' or 'outcome' must be given")
        if self.outcome is not None and not math.isfinite(float(self.outcome)):
            raise PydanticCustomError("finite", "'outcome' must be a finite number")
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


class ErrorDetail(BaseModel):
    field: str = Field(description="the field at fault, e.g. texts[2], or body for the body as a whole")
    rule: str = Field(description="the rule it broke, e.g. string_too_long, json, utf8, max_texts")
    message: str


class ErrorResponse(BaseModel):
    error: str = Field(description="the first (often only) problem, as a sentence naming field and rule")
    errors: list[ErrorDetail]
