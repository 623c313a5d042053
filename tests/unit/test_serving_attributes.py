"""Slice attributes and event times through the HTTP API: stored on served and shadow rows, read back by the
labelled window; bad attributes and bad, unwanted or duplicated X-Event-Time headers refused with a 4xx naming
field and rule, without echoing a huge input."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.serving_fixtures import ServingBundles, serving_bundles, write_record
from tl_platform.serving.app import create_app
from tl_platform.serving.config import ServingConfig
from tl_platform.serving.log_readers import as_utc
from tl_platform.serving.prediction_log import SERVED, SHADOW, PredictionLog

__all__ = ["serving_bundles"]  # the fixture, imported for pytest
SLICES = {"domain": "yelp", "device": "ios", "tenant": "acme"}


def _client(tmp_path: Path, bundles: ServingBundles, accept_event_time: bool = False, **record: object) -> TestClient:
    deployment = write_record(tmp_path / "d.json", bundles.exported, **record)  # type: ignore[arg-type]
    config = ServingConfig(deployment=deployment, log_url=f"sqlite:///{tmp_path / 'log.db'}", reload_interval_s=3600,
                           accept_event_time=accept_event_time)
    return TestClient(create_app(config))


def _log(client: TestClient) -> PredictionLog:
    return client.app.state.runtime.log  # type: ignore[attr-defined]


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture
def client(tmp_path: Path, serving_bundles: ServingBundles) -> Iterator[TestClient]:
    with _client(tmp_path, serving_bundles) as test_client:
        yield test_client


@pytest.fixture
def replay_client(tmp_path: Path, serving_bundles: ServingBundles) -> Iterator[TestClient]:
    with _client(tmp_path, serving_bundles, accept_event_time=True, challenger_version="2", shadow=True) as test_client:
        yield test_client


def test_attributes_are_logged_on_served_and_shadow_rows_and_read_back(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    with _client(tmp_path, serving_bundles, challenger_version="2", shadow=True) as test_client:
        body = test_client.post("/predict", json={"texts": ["good", "bad"], "attributes": SLICES}).json()
        plain = test_client.post("/predict", json={"text": "no slices"}).json()
        log = _log(test_client)
        _wait_for(lambda: len(log.rows(SHADOW)) == 3)
        assert test_client.post("/feedback", json={"request_id": body["request_id"], "item_index": 1, "label": "0"}).status_code == 200
        rows = log.rows()
        window = log.labelled_window(datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1))
    mine = [r for r in rows if r["request_id"] == body["request_id"]]
    assert sorted((r["role"], r["item_index"]) for r in mine) == [(SERVED, 0), (SERVED, 1), (SHADOW, 0), (SHADOW, 1)]
    assert all(r["attributes"] == SLICES for r in mine)
    assert [r["attributes"] for r in rows if r["request_id"] == plain["request_id"]] == [None, None]
    assert list(window["request_id"]) == [body["request_id"]] and window["attributes"].iloc[0] == SLICES
    assert (window["predicted"].iloc[0], window["true_label"].iloc[0]) == (body["predictions"][1]["label"], "0")


SEVENTEEN = {f"k{i}": "v" for i in range(17)}
BAD_ATTRIBUTES: list[tuple[str, bytes, int, str, str, str]] = [
    # (name, body, status, field, rule, message fragment)
    ("17 keys", b'{"text": "a", "attributes": %s}' % str(SEVENTEEN).replace("'", '"').encode(), 422, "attributes",
     "max_attributes", "attributes: at most 16 attributes, got 17"),
    ("10,000-char value", b'{"text": "a", "attributes": {"k": "' + b"v" * 10_000 + b'"}}', 422, "attributes",
     "attribute_value", "attributes: value of 'k' must be 1 to 256 characters, got 10000"),
    ("10,000-char key", b'{"text": "a", "attributes": {"' + b"k" * 10_000 + b'": "v"}}', 422, "attributes",
     "attribute_key", "attributes: key '" + "k" * 40 + "'... (10000 characters) must be 1 to 64 characters of letters, "
     "digits, '_', '.' or '-'"),
    ("empty value", b'{"text": "a", "attributes": {"k": ""}}', 422, "attributes", "attribute_value",
     "value of 'k' must be 1 to 256 characters, got 0"),
    ("empty key", b'{"text": "a", "attributes": {"": "v"}}', 422, "attributes", "attribute_key", "key '' must be 1 to 64"),
    ("key with a space", b'{"text": "a", "attributes": {"my key": "v"}}', 422, "attributes", "attribute_key",
     "key 'my key' must be 1 to 64 characters of letters, digits"),
    ("number value", b'{"text": "a", "attributes": {"k": 1.5}}', 422, "attributes", "attribute_value",
     "value of 'k' must be a string, got float"),
    ("null value", b'{"text": "a", "attributes": {"k": null}}', 422, "attributes", "attribute_value",
     "value of 'k' must be a string, got NoneType"),
    ("nested value", b'{"text": "a", "attributes": {"k": {"x": "y"}}}', 422, "attributes", "attribute_value",
     "value of 'k' must be a string, got dict"),
    ("NaN value", b'{"text": "a", "attributes": {"k": NaN}}', 400, "body", "json", "body: NaN is not valid JSON"),
    ("NUL in value", b'{"text": "a", "attributes": {"k": "a\\u0000b"}}', 422, "attributes", "no_nul",
     "value of 'k' must not contain NUL characters"),
    ("lone surrogate", b'{"text": "a", "attributes": {"k": "a\\ud800"}}', 422, "attributes", "unicode",
     "value of 'k' must be valid Unicode text"),
    ("a list", b'{"text": "a", "attributes": ["domain", "yelp"]}', 422, "attributes", "dict_type",
     "attributes: Input should be a valid dictionary"),
    ("a string", b'{"text": "a", "attributes": "domain=yelp"}', 422, "attributes", "dict_type",
     "attributes: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(("name", "body", "status", "field", "rule", "message"), BAD_ATTRIBUTES,
                         ids=[c[0] for c in BAD_ATTRIBUTES])
def test_bad_attributes_get_a_4xx_naming_field_and_rule(
    client: TestClient, name: str, body: bytes, status: int, field: str, rule: str, message: str
) -> None:
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()
    assert (error["errors"][0]["field"], error["errors"][0]["rule"]) == (field, rule)
    assert message in error["error"], error["error"]
    assert len(response.content) < 1000  # a 10,000-character input is named, not echoed
    assert _log(client).rows() == []


def test_sixteen_attributes_at_their_limits_are_accepted(client: TestClient) -> None:
    attributes = {f"{i:02d}" + "k" * 62: "v" * 256 for i in range(16)}
    response = client.post("/predict", json={"text": "a", "attributes": attributes})
    assert response.status_code == 200, response.text
    assert _log(client).rows()[0]["attributes"] == attributes


def test_event_times_are_refused_unless_the_server_accepts_them(client: TestClient) -> None:
    rid = client.post("/predict", json={"text": "a"}).json()["request_id"]
    for path, body in (("/predict", {"text": "a"}), ("/feedback", {"request_id": rid, "label": "1"})):
        response = client.post(path, json=body, headers={"X-Event-Time": "2025-03-01T12:00:00Z"})
        assert response.status_code == 400, response.text
        error = response.json()
        assert (error["errors"][0]["field"], error["errors"][0]["rule"]) == ("X-Event-Time", "event_time_disabled")
        assert error["error"] == (
            "X-Event-Time: this server logs its own clock's time; start it with --accept-event-time "
            "(ServingConfig.accept_event_time) to let simulators and replays set the time")
    assert len(_log(client).rows()) == 1 and _log(client).joined_feedback() == []


def test_event_times_time_the_served_and_shadow_rows_and_the_feedback(replay_client: TestClient) -> None:
    log = _log(replay_client)
    first = replay_client.post("/predict", json={"texts": ["a", "b"], "attributes": {"day": "1"}},
                               headers={"X-Event-Time": "2025-03-01T14:00:00+02:00"}).json()
    second = replay_client.post("/predict", json={"text": "c"}, headers={"X-Event-Time": "2025-03-02T08:30:00.25Z"}).json()
    _wait_for(lambda: len(log.rows(SHADOW)) == 3)
    times = {(r["request_id"], r["role"], r["item_index"]): as_utc(r["ts"]) for r in log.rows()}
    noon = datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert {k: v for k, v in times.items() if k[0] == first["request_id"]} == {
        (first["request_id"], role, i): noon for role in (SERVED, SHADOW) for i in (0, 1)}
    assert times[(second["request_id"], SERVED, 0)] == datetime(2025, 3, 2, 8, 30, 0, 250_000, tzinfo=UTC)

    late = replay_client.post("/feedback", json={"request_id": first["request_id"], "label": "1"},
                              headers={"X-Event-Time": "2025-03-03T12:00:00Z"})
    assert late.status_code == 200, late.text
    early = replay_client.post("/feedback", json={"request_id": first["request_id"], "item_index": 1, "label": "1"},
                               headers={"X-Event-Time": "2025-03-01T11:59:59Z"})
    assert early.status_code == 422
    assert (early.json()["errors"][0]["field"], early.json()["errors"][0]["rule"]) == ("X-Event-Time", "feedback_after_prediction")
    assert early.json()["error"] == ("X-Event-Time: feedback at 2025-03-01T11:59:59+00:00 precedes its prediction, "
                                     "served at 2025-03-01T12:00:00+00:00")
    assert replay_client.post("/feedback", json={"request_id": second["request_id"], "label": "0"}).status_code == 200

    day = datetime(2025, 3, 1, tzinfo=UTC)
    assert log.served_counts(day, day + timedelta(days=1)) == {("1", "champion"): 2}  # in the window of its own day
    window = log.labelled_window(noon - timedelta(hours=12), noon + timedelta(hours=12))
    assert list(window["feedback_ts"]) == [datetime(2025, 3, 3, 12, tzinfo=UTC)] and window["attributes"].iloc[0] == {"day": "1"}
    scored_on_time = log.labelled_window(noon - timedelta(hours=12), noon + timedelta(hours=12),
                                         feedback_before=datetime(2025, 3, 3, tzinfo=UTC))
    assert len(scored_on_time) == 0  # the label arrived after that
    no_header = log.labelled_window(datetime(2025, 3, 2, tzinfo=UTC), datetime(2025, 3, 3, tzinfo=UTC))
    assert abs(no_header["feedback_ts"].iloc[0] - datetime.now(UTC)) < timedelta(minutes=1)  # the server's clock


BAD_EVENT_TIMES: list[tuple[str, list[tuple[str, str]], str, str]] = [
    # (name, headers, rule, message)
    ("naive", [("X-Event-Time", "2025-03-01T12:00:00")], "event_time_timezone",
     "X-Event-Time: must carry a time zone (Z or +HH:MM); '2025-03-01T12:00:00' has none"),
    ("a date", [("X-Event-Time", "2025-03-01")], "event_time_timezone", "'2025-03-01' has none"),
    ("not a time", [("X-Event-Time", "yesterday")], "event_time_format",
     ("X-Event-Time: must be an ISO 8601 time with a time zone, e.g. 2025-03-01T12:00:00Z or 2025-03-01T14:00:00+02:00, "
     "got 'yesterday'")),
    ("NaN", [("X-Event-Time", "NaN")], "event_time_format", "got 'NaN'"),
    ("epoch seconds", [("X-Event-Time", "1740830400")], "event_time_format", "got '1740830400'"),
    ("month 13", [("X-Event-Time", "2025-13-01T00:00:00Z")], "event_time_format", "got '2025-13-01T00:00:00Z'"),
    ("empty", [("X-Event-Time", "")], "event_time_format", "got ''"),
    ("huge", [("X-Event-Time", "2025-03-01T12:00:00Z" + "0" * 10_000)], "event_time_format",
     "at most 64 characters; got 10020"),
    ("twice", [("X-Event-Time", "2025-03-01T12:00:00Z"), ("X-Event-Time", "2025-03-02T12:00:00Z")], "event_time_once",
     "X-Event-Time: give it once, got 2 values"),
    ("before year 1 in UTC", [("X-Event-Time", "0001-01-01T00:00:00+01:00")], "event_time_range",
     "X-Event-Time: '0001-01-01T00:00:00+01:00' is outside the years 1 to 9999 in UTC"),
]


@pytest.mark.parametrize(("name", "headers", "rule", "message"), BAD_EVENT_TIMES, ids=[c[0] for c in BAD_EVENT_TIMES])
def test_bad_event_times_get_a_400_naming_the_header_and_format(
    replay_client: TestClient, name: str, headers: list[tuple[str, str]], rule: str, message: str
) -> None:
    rid = replay_client.post("/predict", json={"text": "a"}).json()["request_id"]
    for path, body in (("/predict", {"text": "a"}), ("/feedback", {"request_id": rid, "label": "1"})):
        response = replay_client.post(path, json=body, headers=headers)
        assert response.status_code == 400, response.text
        error = response.json()
        assert (error["errors"][0]["field"], error["errors"][0]["rule"]) == ("X-Event-Time", rule)
        assert message in error["error"], error["error"]
        assert len(response.content) < 1000
    assert len(_log(replay_client).rows(SERVED)) == 1 and _log(replay_client).joined_feedback() == []


def test_openapi_documents_attributes_and_the_event_time_header(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/predict", "/feedback"):
        parameters = schema["paths"][path]["post"]["parameters"]
        assert [(p["name"], p["in"], p["required"]) for p in parameters] == [("X-Event-Time", "header", False)]
        assert "--accept-event-time" in parameters[0]["description"]
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    attributes = body["properties"]["attributes"]["anyOf"][0]
    assert (attributes["maxProperties"], attributes["patternProperties"]) == (
        16, {"^[A-Za-z0-9_.-]{1,64}$": {"maxLength": 256, "minLength": 1, "type": "string"}})
