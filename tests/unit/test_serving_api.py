"""The serving API on a tiny exported bundle: predictions, precisions, bad input, shadow, A/B, reload."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving_fixtures import ServingBundles, serving_bundles, write_record
from tl_platform.serving.app import create_app
from tl_platform.serving.config import ServingConfig
from tl_platform.serving.deployment import VariantSpec
from tl_platform.serving.model import ServingModel, TokenizedText, load_variant
from tl_platform.serving.prediction_log import SERVED, SHADOW

__all__ = ["serving_bundles"]  # the fixture, imported for pytest

TEXTS = ["Great phone, works well.", "the battery died after a day", "zxqv unknownish wordz", "ok"]


def make_client(tmp_path: Path, bundles: ServingBundles, loader: Callable[[VariantSpec, int], ServingModel] = load_variant,
                **record: object) -> tuple[TestClient, Path]:
    deployment = write_record(tmp_path / "deployment.json", bundles.exported, **record)  # type: ignore[arg-type]
    config = ServingConfig(deployment=deployment, log_url=f"sqlite:///{tmp_path / 'log.db'}", max_texts_per_request=4,
                           max_text_chars=200, reload_interval_s=3600)
    return TestClient(create_app(config, loader)), deployment


@pytest.fixture
def client(tmp_path: Path, serving_bundles: ServingBundles) -> Iterator[TestClient]:
    test_client, _ = make_client(tmp_path, serving_bundles)
    with test_client:
        yield test_client


def test_torch_precision_matches_onnx_fp32(serving_bundles: ServingBundles) -> None:
    spec = VariantSpec("1", serving_bundles.exported, "torch", serving_bundles.task)
    torch_model = load_variant(spec)
    onnx_model = load_variant(VariantSpec("1", serving_bundles.exported, "fp32"))
    ids = [t.input_ids for t in onnx_model.tokenize(TEXTS)]
    torch_logits, torch_embeddings = torch_model.infer(ids)
    onnx_logits, onnx_embeddings = onnx_model.infer(ids)
    np.testing.assert_allclose(torch_logits, onnx_logits, atol=1e-4)
    np.testing.assert_allclose(torch_embeddings, onnx_embeddings, atol=1e-4)


def test_torch_bundle_must_be_the_exported_models_task_bundle(serving_bundles: ServingBundles, tmp_path: Path) -> None:
    from tl_platform.checkpoints.bundle import BundleError

    with pytest.raises(BundleError, match="expected a task bundle, found a exported bundle"):
        load_variant(VariantSpec("1", serving_bundles.exported, "torch", serving_bundles.exported))


def test_tampered_bundle_is_refused_before_loading(serving_bundles: ServingBundles, tmp_path: Path) -> None:
    import shutil

    from tl_platform.checkpoints.bundle import BundleError

    copy = tmp_path / "copy"
    shutil.copytree(serving_bundles.exported, copy)
    (copy / "projection.json").write_text("{}")
    with pytest.raises(BundleError, match=r"projection.json has SHA-256 .* \(tampered\)"):
        load_variant(VariantSpec("1", copy, "int8"))


def test_predict_answers_and_logs_features(client: TestClient) -> None:
    response = client.post("/predict", json={"texts": TEXTS[:3], "unit_id": "user-1"})
    assert response.status_code == 200
    body = response.json()
    assert body["variant"] == "champion" and body["model_version"] == "1" and len(body["request_id"]) == 32
    assert len(body["predictions"]) == 3
    for prediction in body["predictions"]:
        assert prediction["label"] in ("0", "1")
        assert prediction["confidence"] == pytest.approx(max(prediction["probabilities"].values()))
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)
    log = client.app.state.runtime.log  # type: ignore[attr-defined]
    rows = [r for r in log.rows(SERVED) if r["request_id"] == body["request_id"]]
    assert [r["item_index"] for r in rows] == [0, 1, 2]
    assert [r["label"] for r in rows] == [p["label"] for p in body["predictions"]]
    assert rows[0]["unit_id"] == "user-1" and rows[0]["model_version"] == "1"
    assert rows[0]["text_chars"] == len(TEXTS[0]) and rows[0]["token_count"] > 2
    assert rows[2]["unknown_share"] > 0
    projection = [rows[0][f"projection_{i}"] for i in range(8)]  # the exported projection's 4 components, then NULL
    assert all(isinstance(v, float) for v in projection[:4]) and projection[4:] == [None] * 4
    assert [r["text"] for r in rows] == TEXTS[:3]  # captured by default
    assert (rows[0]["routing_salt"], rows[0]["experiment_id"], rows[0]["challenger_share"]) == ("tlp-ab", None, 0.0)
    single = client.post("/predict", json={"text": "fine"}).json()
    assert len(single["predictions"]) == 1
    feedback = client.post("/feedback", json={"request_id": body["request_id"], "item_index": 2, "label": "0"})
    assert feedback.status_code == 200 and feedback.json()["status"] == "recorded"
    assert [(j["item_index"], j["true_label"]) for j in log.joined_feedback()] == [(2, "0")]


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready == {"status": "ready", "champion_version": "1", "challenger_version": None, "challenger_share": 0.0,
                     "shadow": False, "deployment_problem": None}
    for _ in range(3):
        client.post("/predict", json={"text": "works"})
    client.post("/predict", json={"text": ""})
    text = client.get("/metrics").text
    assert 'tlp_request_latency_seconds_count{variant="champion"} 3.0' in text
    assert 'tlp_requests_total{endpoint="/predict",status="200"} 3.0' in text
    assert 'tlp_requests_total{endpoint="/predict",status="422"} 1.0' in text  # refusals are counted too
    client.get("/nowhere")
    assert 'tlp_requests_total{endpoint="other",status="404"} 1.0' in client.get("/metrics").text
    assert 'tlp_errors_total{endpoint="/predict",rule="non_blank"} 1.0' in text
    assert "tlp_batch_size_count 3.0" in text and "tlp_queue_depth 0.0" in text
    assert 'tlp_model_info{precision="int8",variant="champion",version="1"} 1.0' in text


RID = "0" * 32
BAD_INPUTS: list[tuple[str, str, bytes, int, str, str]] = [
    # (name, path, body, status, field, message fragment)
    ("invalid json", "/predict", b'{"text": "a"', 400, "body", "body: not valid JSON (Expecting ',' delimiter"),
    ("empty body", "/predict", b"", 400, "body", "body: must be a JSON object, got an empty body"),
    ("non-utf8", "/predict", b'{"text": "caf\xe9"}', 400, "body", "body: must be UTF-8 encoded (invalid byte 0xe9 at offset 13)"),
    ("NaN", "/feedback", b'{"request_id": "' + RID.encode() + b'", "outcome": NaN}', 400, "body", "NaN is not valid JSON"),
    ("not an object", "/predict", b"[1, 2]", 422, "body", "body: Input should be a valid dictionary"),
    ("missing text", "/predict", b'{"unit_id": "u"}', 422, "body", "exactly one of 'text' or 'texts' must be given"),
    ("both text and texts", "/predict", b'{"text": "a", "texts": ["b"]}', 422, "body", "exactly one of 'text' or 'texts'"),
    ("extra field", "/predict", b'{"text": "a", "lang": "en"}', 422, "lang", "lang: Extra inputs are not permitted"),
    ("wrong type", "/predict", b'{"text": 5}', 422, "text", "text: Input should be a valid string"),
    ("wrong item type", "/predict", b'{"texts": ["a", null]}', 422, "texts[1]", "texts[1]: Input should be a valid string"),
    ("empty text", "/predict", b'{"text": ""}', 422, "text", "text: must contain at least one non-whitespace character"),
    ("whitespace text", "/predict", b'{"texts": ["ok", " \\t\\n"]}', 422, "texts[1]", "texts[1]: must contain at least one non-whitespace"),
    ("empty batch", "/predict", b'{"texts": []}', 422, "texts", "texts: List should have at least 1 item"),
    ("lone surrogate", "/predict", b'{"text": "a\\ud800"}', 422, "text", "text: must be valid Unicode text"),
    ("long unit id", "/predict", b'{"text": "a", "unit_id": "' + b"u" * 257 + b'"}', 422, "unit_id", "unit_id: String should have at most 256"),
    ("text too long", "/predict", b'{"texts": ["ok", "' + b"a" * 201 + b'"]}', 413, "texts[1]", "texts[1]: at most 200 characters, got 201"),
    ("batch too big", "/predict", b'{"texts": ["a", "b", "c", "d", "e"]}', 413, "texts", "texts: at most 4 texts per request, got 5"),
    ("feedback bad id", "/feedback", b'{"request_id": "abc", "label": "1"}', 422, "request_id", "request_id: String should match pattern"),
    ("feedback no label", "/feedback", b'{"request_id": "' + RID.encode() + b'"}', 422, "body", "at least one of 'label' or 'outcome'"),
    ("feedback unknown id", "/feedback", b'{"request_id": "' + RID.encode() + b'", "label": "1"}', 404, "request_id", "no served prediction with request_id"),
    ("feedback negative index", "/feedback", b'{"request_id": "' + RID.encode() + b'", "item_index": -1, "label": "1"}', 422, "item_index", "item_index: Input should be greater than or equal to 0"),
    ("unknown path", "/predictions", b"{}", 404, "path", "path: Not Found (POST /predictions)"),
]


@pytest.mark.parametrize(("name", "path", "body", "status", "field", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_4xx_naming_field_and_rule(
    client: TestClient, name: str, path: str, body: bytes, status: int, field: str, message: str
) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()
    assert error["errors"][0]["field"] == field
    assert message in error["error"]
    assert error["errors"][0]["rule"]
    assert client.post("/predict", json={"text": "still serving"}).status_code == 200


def test_duplicate_feedback_is_409_and_wrong_label_is_422(client: TestClient) -> None:
    rid = client.post("/predict", json={"text": "nice"}).json()["request_id"]
    assert client.post("/feedback", json={"request_id": rid, "outcome": 3}).status_code == 200
    duplicate = client.post("/feedback", json={"request_id": rid, "label": "1"})
    assert duplicate.status_code == 409 and duplicate.json()["errors"][0]["rule"] == "one_feedback_per_prediction"
    other = client.post("/predict", json={"text": "nice"}).json()["request_id"]
    wrong = client.post("/feedback", json={"request_id": other, "label": "2"})
    assert wrong.status_code == 422 and "label: must be one of the model's labels ['0', '1'], got '2'" in wrong.json()["error"]


def test_overlong_text_is_truncated_when_configured(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    deployment = write_record(tmp_path / "d.json", serving_bundles.exported)
    config = ServingConfig(deployment=deployment, log_url=f"sqlite:///{tmp_path / 'l.db'}", max_text_chars=10, on_overlong="truncate")
    with TestClient(create_app(config)) as test_client:
        body = test_client.post("/predict", json={"texts": ["short", "a much longer text than ten"]}).json()
        assert [p["truncated"] for p in body["predictions"]] == [False, True]
        rows = test_client.app.state.runtime.log.rows(SERVED)  # type: ignore[attr-defined]
        assert [(r["text_chars"], r["truncated"]) for r in rows] == [(5, False), (10, True)]


def test_openapi_documents_every_endpoint_and_error_shape(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/predict", "/feedback", "/healthz", "/readyz", "/metrics"}
    predict = schema["paths"]["/predict"]["post"]
    body_schema = predict["requestBody"]["content"]["application/json"]["schema"]
    assert set(body_schema["properties"]) == {"text", "texts", "unit_id", "attributes"}
    assert body_schema["additionalProperties"] is False
    assert set(predict["responses"]) == {"200", "400", "413", "422", "429", "500", "503"}
    assert set(schema["paths"]["/feedback"]["post"]["responses"]) == {"200", "400", "404", "409", "413", "422", "503"}
    assert set(schema["components"]["schemas"]["ErrorResponse"]["properties"]) == {"error", "errors", "errors_omitted"}
    statuses_seen = {(path, status) for _, path, _, status, _, _ in BAD_INPUTS if path in schema["paths"]}
    for path, status in statuses_seen:  # every status the table provokes is documented for its path
        assert str(status) in schema["paths"][path]["post"]["responses"], (path, status)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
BODIES = st.one_of(
    st.binary(max_size=200),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={"text": JSON_VALUES | st.text(), "texts": st.lists(st.text(max_size=50), max_size=6) | JSON_VALUES,
                                        "unit_id": JSON_VALUES | st.text(max_size=300), "extra": JSON_VALUES,
                                        "attributes": JSON_VALUES | st.dictionaries(st.text(max_size=70), st.text(max_size=300), max_size=20)}
                          ).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={"request_id": st.text(max_size=40) | st.just(RID), "item_index": JSON_VALUES,
                                        "label": JSON_VALUES | st.text(), "outcome": JSON_VALUES}).map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(["/predict", "/feedback"]), body=BODIES)
def test_arbitrary_bodies_never_get_a_5xx(client: TestClient, path: str, body: bytes) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()
        assert isinstance(error["error"], str) and error["error"]
        assert error["errors"][0]["field"] and error["errors"][0]["rule"]
    else:
        assert response.status_code == 200


class Slow:
    """A challenger that sleeps before every model call."""

    def __init__(self, inner: ServingModel, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds
        self.version, self.precision, self.max_length = inner.version, inner.precision, inner.max_length
        self.labels, self.label_names = inner.labels, inner.label_names

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        return self.inner.tokenize(texts)

    def infer(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(self.seconds)
        return self.inner.infer(token_ids)

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        return self.inner.project(embeddings)


class Failing(Slow):
    def infer(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("challenger exploded")


def _loader(wrapper: Callable[[ServingModel], ServingModel]) -> Callable[[VariantSpec, int], ServingModel]:
    def load(spec: VariantSpec, threads: int) -> ServingModel:
        model = load_variant(spec, threads)
        return wrapper(model) if spec.version == "2" else model

    return load


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
    return time.perf_counter() - started


def test_slow_shadow_challenger_does_not_delay_the_reply(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    test_client, _ = make_client(tmp_path, serving_bundles, _loader(lambda m: Slow(m, 1.0)), challenger_version="2", shadow=True)
    with test_client:
        started = time.perf_counter()
        response = test_client.post("/predict", json={"text": "good sound", "unit_id": "u7"})
        elapsed = time.perf_counter() - started
        assert response.status_code == 200 and response.json()["variant"] == "champion"
        assert response.json()["model_version"] == "1"
        assert elapsed < 0.5  # the challenger sleeps 1 s per call
        log = test_client.app.state.runtime.log  # type: ignore[attr-defined]
        assert log.rows(SHADOW) == []  # not yet: the challenger is still sleeping
        waited = _wait_for(lambda: len(log.rows(SHADOW)) == 1)
        assert waited + elapsed > 0.3  # it landed later, after the reply
        shadow = log.rows(SHADOW)[0]
        assert shadow["request_id"] == response.json()["request_id"] and shadow["model_version"] == "2"
        assert shadow["variant"] == "challenger" and shadow["latency_ms"] >= 1000 and shadow["error"] is None
        assert shadow["label"] in ("0", "1") and shadow["unit_id"] == "u7"
        assert 'tlp_shadow_total{outcome="ok"} 1.0' in test_client.get("/metrics").text


def test_failing_shadow_challenger_is_counted_and_logged_not_hidden(
    tmp_path: Path, serving_bundles: ServingBundles, caplog: pytest.LogCaptureFixture
) -> None:
    test_client, _ = make_client(tmp_path, serving_bundles, _loader(lambda m: Failing(m, 0)), challenger_version="2", shadow=True)
    with test_client:
        responses = [test_client.post("/predict", json={"text": f"text {i}"}) for i in range(3)]
        assert [r.status_code for r in responses] == [200, 200, 200]
        log = test_client.app.state.runtime.log  # type: ignore[attr-defined]
        _wait_for(lambda: len(log.rows(SHADOW)) == 3)
        assert {r["error"] for r in log.rows(SHADOW)} == {"RuntimeError: challenger exploded"}
        _wait_for(lambda: test_client.app.state.runtime.service.shadow.counts().failed == 3)  # type: ignore[attr-defined]
        assert 'tlp_shadow_total{outcome="failed"} 3.0' in test_client.get("/metrics").text
    assert "shadow scoring of request" in caplog.text and "challenger exploded" in caplog.text


def test_full_shadow_queue_drops_and_counts(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    deployment = write_record(tmp_path / "d.json", serving_bundles.exported, challenger_version="2", shadow=True)
    config = ServingConfig(deployment=deployment, log_url=f"sqlite:///{tmp_path / 'l.db'}", shadow_queue_size=1)
    with TestClient(create_app(config, _loader(lambda m: Slow(m, 0.5)))) as test_client:
        statuses = [test_client.post("/predict", json={"text": f"t {i}"}).status_code for i in range(5)]
        assert statuses == [200] * 5
        counts = test_client.app.state.runtime.service.shadow.counts()  # type: ignore[attr-defined]
        assert counts.dropped >= 3  # one running, one queued, the rest dropped
        assert f'tlp_shadow_total{{outcome="dropped"}} {float(counts.dropped)}' in test_client.get("/metrics").text


def test_ab_split_routes_units_deterministically(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    from tl_platform.serving.routing import assign_variant

    test_client, _ = make_client(tmp_path, serving_bundles, challenger_version="2", share=0.5)
    with test_client:
        seen = {}
        for i in range(40):
            unit = f"user-{i % 10}"
            body = test_client.post("/predict", json={"text": "fine", "unit_id": unit}).json()
            assert seen.setdefault(unit, body["variant"]) == body["variant"]  # a unit always sees one variant
            assert body["variant"] == assign_variant("tlp-ab", unit, 0.5)
            assert body["model_version"] == ("2" if body["variant"] == "challenger" else "1")
        assert set(seen.values()) == {"champion", "challenger"}


def test_a_request_without_a_unit_is_answered_by_the_champion_or_refused_by_config(
    tmp_path: Path, serving_bundles: ServingBundles
) -> None:
    test_client, deployment = make_client(tmp_path, serving_bundles, challenger_version="2", share=0.9)
    with test_client:
        variants = {test_client.post("/predict", json={"text": "fine"}).json()["variant"] for _ in range(20)}
        assert variants == {"champion"}  # never randomised per request
    config = ServingConfig(deployment=deployment, log_url=f"sqlite:///{tmp_path / 'log2.db'}", require_unit_id=True)
    with TestClient(create_app(config)) as strict:
        refused = strict.post("/predict", json={"text": "fine"})
        assert refused.status_code == 422
        error = refused.json()["errors"][0]
        assert (error["field"], error["rule"]) == ("unit_id", "required_in_experiment")
        assert "required while experiment" in error["message"]
        assert strict.post("/predict", json={"text": "fine", "unit_id": "u1"}).status_code == 200
        write_record(deployment, serving_bundles.exported)  # the split ends: no unit needed
        strict.app.state.runtime.watcher.check()  # type: ignore[attr-defined]
        assert strict.post("/predict", json={"text": "fine"}).status_code == 200


def test_record_change_swaps_models_and_a_bad_record_keeps_the_old(tmp_path: Path, serving_bundles: ServingBundles) -> None:
    test_client, deployment = make_client(tmp_path, serving_bundles)
    with test_client:
        watcher = test_client.app.state.runtime.watcher  # type: ignore[attr-defined]
        assert test_client.post("/predict", json={"text": "a"}).json()["model_version"] == "1"
        write_record(deployment, serving_bundles.exported, version="7")
        assert watcher.check().changed
        assert test_client.post("/predict", json={"text": "a"}).json()["model_version"] == "7"
        deployment.write_text('{"champion": {"version": "8", "bundle": "/no/such/bundle"}}')
        outcome = watcher.check()
        assert not outcome.changed and "no manifest.json" in (outcome.error or "")
        assert test_client.post("/predict", json={"text": "a"}).json()["model_version"] == "7"
        metrics = test_client.get("/metrics").text
        assert 'tlp_deployment_reloads_total{outcome="failed"} 1.0' in metrics
        assert 'tlp_deployment_reloads_total{outcome="ok"} 2.0' in metrics
