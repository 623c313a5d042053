"""Hostile input against the app: bodies bounded while read (declared or chunked), counts and lengths bounded
by the schema, error lists capped, numbers range-checked, deep nesting refused quickly; each a 4xx naming the
field and the rule, in the one error shape."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.serving_fixtures import ServingBundles, serving_bundles, write_record
from tl_platform.serving.app import create_app
from tl_platform.serving.config import ServingConfig
from tl_platform.serving.schemas import MAX_REPORTED_ERRORS

__all__ = ["serving_bundles"]
RID = "0" * 32


@pytest.fixture
def client(tmp_path: Path, serving_bundles: ServingBundles) -> Iterator[TestClient]:
    """The default limits: 64 texts of 10,000 characters, so a body of up to 3,905,536 bytes."""
    deployment = write_record(tmp_path / "deployment.json", serving_bundles.exported)
    config = ServingConfig(deployment=deployment, log_url=f"sqlite:///{tmp_path / 'log.db'}", reload_interval_s=3600)
    with TestClient(create_app(config)) as test_client:
        yield test_client


def post(client: TestClient, path: str, body: bytes) -> Any:  # TestClient's response type differs from httpx's
    return client.post(path, content=body, headers={"content-type": "application/json"})


def assert_refused(response: Any, status: int, field: str, rule: str, message: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"error", "errors", "errors_omitted"}
    assert (error["errors"][0]["field"], error["errors"][0]["rule"]) == (field, rule)
    assert message in error["error"] and error["error"] == error["errors"][0]["message"]
    return error


def test_a_declared_oversized_body_is_refused_before_it_is_read(client: TestClient) -> None:
    app = client.app
    limit = 64 * 10_000 * 6 + 65_536
    reads = 0

    async def call() -> list[dict[str, object]]:
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            nonlocal reads
            reads += 1
            return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-length", str(limit + 1).encode())],
                 "query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("t", 80), "client": ("c", 1),
                 "root_path": "", "raw_path": b"/predict"}
        await app(scope, receive, send)  # type: ignore[arg-type]
        return sent

    sent = asyncio.run(call())
    assert reads == 0 and sent[0]["status"] == 413
    error = json.loads(sent[1]["body"])  # type: ignore[arg-type]
    assert error["error"] == f"body: must be at most {limit} bytes, got {limit + 1}"
    assert error["errors"][0]["rule"] == "max_body_bytes"
    assert (b"connection", b"close") in sent[0]["headers"]  # type: ignore[operator]


def test_a_chunked_body_without_length_is_cut_off_at_the_limit(client: TestClient) -> None:
    """100 MB offered in 64 KB chunks without Content-Length: refused after the limit plus one chunk was read."""
    consumed = 0
    chunk = b"a" * 65_536

    async def body() -> AsyncIterator[bytes]:
        nonlocal consumed
        yield b'{"text": "'
        for _ in range(1600):
            consumed += len(chunk)
            yield chunk

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=client.app)  # streams the body chunk by chunk (TestClient buffers it)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.post("/predict", content=body(), headers={"content-type": "application/json"})

    response = asyncio.run(call())
    assert "content-length" not in response.request.headers
    assert_refused(response, 413, "body", "max_body_bytes", "body: must be at most 3905536 bytes; refused after 3932170 bytes")
    assert consumed <= 3_905_536 + 2 * 65_536  # the rest was never pulled from the caller
    metrics = client.get("/metrics").text
    assert 'tlp_errors_total{endpoint="/predict",rule="max_body_bytes"} 1.0' in metrics
    assert 'tlp_requests_total{endpoint="/predict",status="413"} 1.0' in metrics


def test_feedback_and_other_paths_have_a_small_body_limit(client: TestClient) -> None:
    big = b'{"request_id": "' + RID.encode() + b'", "label": "' + b"1" * 70_000 + b'"}'
    assert_refused(post(client, "/feedback", big), 413, "body", "max_body_bytes", "body: must be at most 65536 bytes")
    assert_refused(post(client, "/nowhere", b"x" * 70_000), 413, "body", "max_body_bytes", "at most 65536 bytes")
    bad = client.post("/predict", content=b"{}", headers={"content-length": "12abc"})
    assert_refused(bad, 400, "Content-Length", "content_length", "Content-Length: must be one non-negative integer")


def test_100000_wrong_typed_items_get_one_small_quick_answer(client: TestClient) -> None:
    body = json.dumps({"texts": [1] * 100_000}).encode()  # 300 KB, within the body limit
    started = time.perf_counter()
    response = post(client, "/predict", body)
    elapsed = time.perf_counter() - started
    error = assert_refused(response, 413, "texts", "max_texts_per_request", "texts: at most 64 texts per request, got 100000")
    assert len(response.content) < 1000 and elapsed < 0.5 and error["errors_omitted"] == 0


def test_many_unknown_fields_are_one_error(client: TestClient) -> None:
    body = json.dumps({f"field{i}": 1 for i in range(100_000)}).encode()
    response = post(client, "/predict", body)
    assert_refused(response, 422, "body", "extra_forbidden",
                   "body: 100000 unknown fields, e.g. 'field0', 'field1', 'field2'; allowed: attributes, text, texts, unit_id")
    assert len(response.content) < 1000


def test_errors_are_capped_with_a_count_of_the_rest(client: TestClient) -> None:
    response = post(client, "/predict", json.dumps({"texts": [None] * 64}).encode())
    error = assert_refused(response, 422, "texts[0]", "string_type", "texts[0]: Input should be a valid string")
    assert len(error["errors"]) == MAX_REPORTED_ERRORS and error["errors_omitted"] == 64 - MAX_REPORTED_ERRORS  # type: ignore[arg-type]
    assert [e["field"] for e in error["errors"]] == [f"texts[{i}]" for i in range(MAX_REPORTED_ERRORS)]  # type: ignore[attr-defined]


def test_a_size_problem_leads_the_answer_and_makes_it_413(client: TestClient) -> None:
    body = json.dumps({"texts": [None, "a" * 10_001], "unit_id": 5}).encode()
    error = assert_refused(post(client, "/predict", body), 413, "texts[1]", "max_text_chars",
                           "texts[1]: at most 10000 characters, got 10001")
    assert {e["field"] for e in error["errors"]} == {"texts[0]", "texts[1]", "unit_id"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(("outcome", "shown"), [("1" + "0" * 399, "an integer of 400 digits"), ("-2e15", "-2000000000000000.0"),
                                                ("1e400", "inf")])
def test_an_out_of_range_outcome_is_422_naming_the_range(client: TestClient, outcome: str, shown: str) -> None:
    body = b'{"request_id": "' + RID.encode() + b'", "outcome": ' + outcome.encode() + b"}"
    assert_refused(post(client, "/feedback", body), 422, "outcome", "outcome_range",
                   f"outcome: must be a finite number in [-1e15, 1e15], got {shown}")


def test_an_outcome_in_range_is_recorded(client: TestClient) -> None:
    rid = client.post("/predict", json={"text": "fine"}).json()["request_id"]
    assert client.post("/feedback", json={"request_id": rid, "outcome": 10**15}).status_code == 200


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"texts": ' + b"[" * 100_000, b'{"attributes": ' + b'{"a":' * 50_000],
                         ids=["arrays", "in-a-field", "objects"])
def test_deep_nesting_is_refused_quickly(client: TestClient, body: bytes) -> None:
    started = time.perf_counter()
    assert_refused(post(client, "/predict", body), 400, "body", "json_depth", "body: JSON nested too deeply")
    assert time.perf_counter() - started < 0.5


def test_nesting_within_the_parser_limit_is_a_plain_422(client: TestClient) -> None:
    body = b'{"texts": [' + b"[" * 800 + b"]" * 800 + b"]}"
    assert_refused(post(client, "/predict", body), 422, "texts[0]", "string_type", "texts[0]: Input should be a valid string")


def test_openapi_documents_the_servers_limits(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    texts = body["properties"]["texts"]["anyOf"][0]
    assert (texts["maxItems"], texts["items"]["maxLength"]) == (64, 10_000)
    outcome = schema["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["outcome"]
    assert (outcome["minimum"], outcome["maximum"]) == (-1e15, 1e15)


def test_truncating_servers_bound_texts_by_the_body_only(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    deployment = write_record(tmp_path / "d.json", serving_bundles.exported)
    config = ServingConfig(deployment=deployment, log_url=f"sqlite:///{tmp_path / 'l.db'}", max_text_chars=10,
                           on_overlong="truncate", max_texts_per_request=2)
    app: FastAPI = create_app(config)
    with TestClient(app) as test_client:
        ok = test_client.post("/predict", json={"texts": ["short", "x" * 50_000]})
        assert ok.status_code == 200 and [p["truncated"] for p in ok.json()["predictions"]] == [False, True]
        assert_refused(test_client.post("/predict", json={"texts": ["a", "b", "c"]}), 413, "texts",
                       "max_texts_per_request", "texts: at most 2 texts per request, got 3")
