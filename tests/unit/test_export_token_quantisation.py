"""Per-token INT8 against a NumPy reference of the same arithmetic, on a small graph built here.

The graph: token ids -> embedding Gather -> MatMul + bias -> GELU (as torch exports it) -> MatMul + bias, and a
second MatMul reading the same embeddings (its input is quantised once for both).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tl_platform.export.token_quantisation import ACTIVATION_LEVELS, quantise_weight, quantize_per_token

RNG = np.random.default_rng(7)
VOCAB, WIDTH, HIDDEN, OUT = 50, 16, 24, 8
TABLE = RNG.normal(size=(VOCAB, WIDTH)).astype(np.float32)
W1, B1 = RNG.normal(size=(WIDTH, HIDDEN)).astype(np.float32), RNG.normal(size=HIDDEN).astype(np.float32)
W2, B2 = RNG.normal(size=(HIDDEN, OUT)).astype(np.float32), RNG.normal(size=OUT).astype(np.float32)
W3 = RNG.normal(size=(WIDTH, OUT)).astype(np.float32)
IDS = np.array([[3, 17, 42, 8, 0, 0], [11, 2, 0, 0, 0, 0], [5, 9, 30, 31, 44, 12]], np.int64)  # 0: padding


def small_graph(path: Path, half: float = 0.5) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    constants = {"table": TABLE, "w1": W1, "b1": B1, "w2": W2, "b2": B2, "w3": W3,
                 "sqrt2": np.array(np.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
                 "half": np.array(half, np.float32)}
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"], axis=0),
        helper.make_node("MatMul", ["embedded", "w1"], ["projected"]),
        helper.make_node("Add", ["projected", "b1"], ["hidden"]),
        helper.make_node("Div", ["hidden", "sqrt2"], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["erf_plus_one"]),
        helper.make_node("Mul", ["half", "erf_plus_one"], ["gate"]),
        helper.make_node("Mul", ["hidden", "gate"], ["gelu"]),
        helper.make_node("MatMul", ["gelu", "w2"], ["y_no_bias"]),
        helper.make_node("Add", ["y_no_bias", "b2"], ["y"]),
        helper.make_node("MatMul", ["embedded", "w3"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "sequence", OUT]) for name in ("y", "z")],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


def run(path: Path, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y, z = session.run(["y", "z"], {"ids": ids})
    return np.asarray(y), np.asarray(z)


def per_token_matmul(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Each row quantised by its own absolute maximum to [-127, 127]; weights per column to [-63, 63]."""
    scale = np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-12) / ACTIVATION_LEVELS
    rows = np.clip(np.rint(x / scale), -ACTIVATION_LEVELS, ACTIVATION_LEVELS)
    values, weight_scale = quantise_weight(weight)
    return np.asarray((rows @ values.astype(np.float64)) * scale * weight_scale)


def reference(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import erf

    values, scales = quantise_weight(TABLE, 127, axis=1)
    embedded = values[ids].astype(np.float32) * scales[ids][..., 0:1]
    hidden = per_token_matmul(embedded, W1) + B1
    gelu = hidden * 0.5 * (1 + erf(hidden / np.sqrt(2.0)))
    return per_token_matmul(gelu, W2) + B2, per_token_matmul(embedded, W3)


@pytest.mark.parametrize("blocked", [True, False], ids=["opset 21 blocked QuantizeLinear", "opset 18 divide"])
def test_per_token_int8_matches_the_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocked: bool) -> None:
    import onnx

    if not blocked:  # as when the version converter cannot take a graph to opset 21
        monkeypatch.setattr("tl_platform.export.token_quantisation._ensure_blocked_opset", lambda model: False)
    int8 = quantize_per_token(small_graph(tmp_path / "fp32.onnx"), tmp_path / "int8.onnx")
    model = onnx.load(str(int8))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 3 and "MatMul" not in ops
    assert ops.count("QuantizeLinear") == 2  # the embeddings are quantised once for both of their MatMuls
    assert ops.count("BiasGelu") == 1 and "Erf" not in ops
    assert {i.name for i in model.graph.initializer}.isdisjoint({"table", "w1", "w2", "w3"})  # no FP32 weights left
    assert next(o.version for o in model.opset_import if o.domain == "") == (21 if blocked else 18)

    y, z = run(int8, IDS)
    expected_y, expected_z = reference(IDS)
    np.testing.assert_allclose(z, expected_z, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y, expected_y, rtol=1e-4, atol=1e-4)
    exact_y, _ = run(small_graph(tmp_path / "again.onnx"), IDS)
    assert 0.001 < np.abs(y - exact_y).max() < 0.1 * np.abs(exact_y).max()  # quantised, and close to FP32


def test_each_row_gets_the_same_numbers_alone_and_in_any_batch(tmp_path: Path) -> None:
    int8 = quantize_per_token(small_graph(tmp_path / "fp32.onnx"), tmp_path / "int8.onnx")
    batched = run(int8, IDS)
    for row, ids in enumerate(IDS):
        length = int((ids != 0).sum())
        alone = run(int8, ids[None, :length])
        for together, by_itself in zip(batched, alone, strict=True):
            np.testing.assert_array_equal(together[row, :length], by_itself[0])  # bit for bit, padding or not
    dynamic = tmp_path / "dynamic.onnx"
    from tl_platform.export.onnx_export import quantize_int8_dynamic

    quantize_int8_dynamic(tmp_path / "fp32.onnx", dynamic)
    together_y, by_itself_y = run(dynamic, IDS)[0][1, :2], run(dynamic, IDS[1:2, :2])[0][0]
    assert np.abs(together_y - by_itself_y).max() > 1e-4  # what per-batch scales do to the same text


def test_a_near_miss_of_the_gelu_pattern_is_left_alone(tmp_path: Path) -> None:
    import onnx

    int8 = quantize_per_token(small_graph(tmp_path / "fp32.onnx", half=0.6), tmp_path / "int8.onnx")
    ops = [node.op_type for node in onnx.load(str(int8)).graph.node]
    assert "BiasGelu" not in ops and "Erf" in ops


def test_weights_are_quantised_per_channel_and_symmetrically() -> None:
    values, scales = quantise_weight(np.array([[63.0, -63.0, 0.0], [31.5, 126.0, 0.0]], np.float32))
    np.testing.assert_array_equal(scales, [[1.0, 2.0, 1.0]])  # a column's largest |weight| maps to 63
    # 31.5 and -63 / 2 = -31.5 round half to even; a column of zeros keeps scale 1
    np.testing.assert_array_equal(values, [[63, -32, 0], [32, 63, 0]])
    assert values.dtype == np.int8 and scales.dtype == np.float32
