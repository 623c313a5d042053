"""Per-token INT8: the quantised graph an export ships, whose answer to a text never depends on its batch.

ONNX Runtime's dynamic quantisation (``quantize_dynamic``) scales a MatMul's activations by the range of the whole
batch tensor, padding included, so one text's answer can change with the texts that share its batch. Here every
row of a MatMul's input (one token of one text) gets its own scale, computed at run time from that row alone: no
row's arithmetic reads another row, so a text gets the same logits alone, in any batch and under any padding.
Static quantisation (scales calibrated ahead of time) is batch-independent too, but lost more accuracy on the
fine-tuned MiniLM (label agreement with FP32 0.987 against 0.997 here, bench/int8_batch_independence.py).

For each MatMul of an activation ``X (..., K)`` by a constant weight ``W (K, N)``::

    amax  = max(ReduceMax(X, -1), -ReduceMin(X, -1), eps)          per token
    scale = amax / 127
    Xq    = QuantizeLinear(X, scale, 128, axis=-1, block_size=K)    uint8, symmetric about 128, one block a row
    Y     = MatMulIntegerToFloat(Xq, Wq, scale, w_scale, 128)       each output row times its token's scale,
                                                                    each column times its weight channel's

Weights are quantised per output channel to 7 bits ([-63, 63], as the dynamic graph's ``reduce_range``: the u8s8
kernels of CPUs without VNNI saturate 8-bit products). A MatMul's bias stays a separate Add (the kernel adds its
own bias before the per-row scale). Inputs shared by several MatMuls (query, key, value) are quantised once.
Embedding tables are stored as INT8 with one scale per row (weights only; the lookup is exact per token). The
exporter's GELU (``x * 0.5 * (1 + erf(x / sqrt 2))`` after a bias Add) becomes ONNX Runtime's fused ``BiasGelu``:
per-token scaling costs about a tenth of the dynamic graph's throughput on 2 CPU cores, and the fusion wins it back.

Blocked QuantizeLinear needs opset 21: an older graph is converted, or where that fails its rows are divided by
their scales before a per-tensor QuantizeLinear (the same numbers, one more pass).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

ACTIVATION_LEVELS = 127  # symmetric activations: [-127, 127] around the zero point 128
WEIGHT_LEVELS = 63  # 7-bit weights: [-63, 63]
EMBEDDING_LEVELS = 127
ZERO_POINT = 128
MIN_RANGE = 1e-12  # a row of zeros quantises to the zero point instead of dividing by zero
BLOCKED_OPSET = 21  # QuantizeLinear with block_size
MS_DOMAIN = "com.microsoft"


def quantize_per_token(fp32_path: Path, int8_path: Path, fuse_gelu: bool = True) -> Path:
    """Write the per-token INT8 graph of the FP32 graph at ``fp32_path`` to ``int8_path``."""
    import onnx

    model = onnx.load(str(fp32_path))
    blocked = _ensure_blocked_opset(model)
    _Rewriter(model, blocked).rewrite()
    if fuse_gelu:
        fuse_bias_gelu(model.graph)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    onnx.checker.check_model(model)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(int8_path))
    return int8_path


def quantise_weight(weight: np.ndarray, levels: int = WEIGHT_LEVELS, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 of ``weight`` with one scale per slice along the other axis: (int8 values, float32 scales)."""
    amax = np.abs(weight).max(axis=axis, keepdims=True)
    scale = np.where(amax > 0, amax / levels, 1.0).astype(np.float32)
    quantised = np.clip(np.rint(weight / scale), -levels, levels).astype(np.int8)
    return quantised, scale


def _ensure_blocked_opset(model: onnx.ModelProto) -> bool:
    """Whether ``model`` (converted in place if need be) may use blocked QuantizeLinear."""
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= BLOCKED_OPSET:
        return True
    try:
        converted = version_converter.convert_version(model, BLOCKED_OPSET)
    except Exception:  # the converter lacks an adapter for some operator: keep the opset, divide explicitly
        return False
    model.CopyFrom(converted)
    return True


class _Rewriter:
    """Replaces constant-weight MatMuls and embedding Gathers of one graph, node by node, in order."""

    def __init__(self, model: onnx.ModelProto, blocked: bool) -> None:
        from onnx import numpy_helper

        self.graph = model.graph
        self.blocked = blocked
        self.initializers = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.new_initializers: list[onnx.TensorProto] = []
        self.quantised_inputs: dict[str, tuple[str, str]] = {}  # activation -> (uint8 tensor, per-row scale)
        self.constants: set[str] = set()

    def rewrite(self) -> None:
        nodes: list[onnx.NodeProto] = []
        for node in self.graph.node:
            if self._is_weight_matmul(node):
                nodes.extend(self._matmul(node))
            elif self._is_embedding_gather(node):
                nodes.extend(self._gather(node))
            else:
                nodes.append(node)
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        used = {name for node in nodes for name in node.input}
        kept = [i for i in self.graph.initializer if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept + self.new_initializers)

    def _is_weight_matmul(self, node: onnx.NodeProto) -> bool:
        if node.op_type != "MatMul" or node.input[0] in self.initializers:
            return False
        weight = self.initializers.get(node.input[1])
        return weight is not None and weight.ndim == 2 and weight.dtype == np.float32

    def _is_embedding_gather(self, node: onnx.NodeProto) -> bool:
        if node.op_type != "Gather" or any(a.name == "axis" and a.i != 0 for a in node.attribute):
            return False
        table = self.initializers.get(node.input[0])
        return table is not None and table.ndim == 2 and table.dtype == np.float32 and node.input[1] not in self.initializers

    def _constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        if name not in self.constants:
            self.constants.add(name)
            self.new_initializers.append(numpy_helper.from_array(value, name))
        return name

    def _matmul(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        from onnx import helper

        activation, weight_name = node.input[0], node.input[1]
        weight = self.initializers[weight_name]
        emitted = []
        if activation not in self.quantised_inputs:
            emitted = self._quantise_rows(activation, weight.shape[0])
        quantised, scale = self.quantised_inputs[activation]
        values, weight_scale = quantise_weight(weight)
        q_weight = self._constant(f"{weight_name}_int8", values)
        q_weight_scale = self._constant(f"{weight_name}_int8_scale", weight_scale.reshape(-1))
        zero_point = self._constant("tq_zero_point", np.array(ZERO_POINT, np.uint8))
        emitted.append(helper.make_node(
            "MatMulIntegerToFloat", [quantised, q_weight, scale, q_weight_scale, zero_point], list(node.output),
            name=f"{node.name or weight_name}_per_token", domain=MS_DOMAIN,
        ))
        return emitted

    def _quantise_rows(self, activation: str, width: int) -> list[onnx.NodeProto]:
        from onnx import helper

        p = f"tq{len(self.quantised_inputs)}"
        axes = self._constant("tq_last_axis", np.array([-1], np.int64))
        eps = self._constant("tq_min_range", np.array(MIN_RANGE, np.float32))
        per_level = self._constant("tq_per_level", np.array(1.0 / ACTIVATION_LEVELS, np.float32))
        zero_point = self._constant("tq_zero_point", np.array(ZERO_POINT, np.uint8))
        nodes = [
            helper.make_node("ReduceMax", [activation, axes], [f"{p}_max"], keepdims=1, name=f"{p}_max"),
            helper.make_node("ReduceMin", [activation, axes], [f"{p}_min"], keepdims=1, name=f"{p}_min"),
            helper.make_node("Neg", [f"{p}_min"], [f"{p}_neg_min"], name=f"{p}_neg_min"),
            helper.make_node("Max", [f"{p}_max", f"{p}_neg_min", eps], [f"{p}_amax"], name=f"{p}_amax"),
            helper.make_node("Mul", [f"{p}_amax", per_level], [f"{p}_scale"], name=f"{p}_scale"),
        ]
        if self.blocked:  # one QuantizeLinear block per row: the row's own scale and the shared zero point
            nodes += [
                helper.make_node("Shape", [f"{p}_scale"], [f"{p}_scale_shape"], name=f"{p}_scale_shape"),
                helper.make_node("Expand", [zero_point, f"{p}_scale_shape"], [f"{p}_zero_points"], name=f"{p}_zp"),
                helper.make_node("QuantizeLinear", [activation, f"{p}_scale", f"{p}_zero_points"], [f"{p}_uint8"],
                                 axis=-1, block_size=width, name=f"{p}_quantise"),
            ]
        else:  # the same numbers with opset < 21: divide each row by its scale, then quantise with scale 1
            one = self._constant("tq_one", np.array(1.0, np.float32))
            nodes += [
                helper.make_node("Div", [activation, f"{p}_scale"], [f"{p}_scaled"], name=f"{p}_divide"),
                helper.make_node("QuantizeLinear", [f"{p}_scaled", one, zero_point], [f"{p}_uint8"], name=f"{p}_quantise"),
            ]
        self.quantised_inputs[activation] = (f"{p}_uint8", f"{p}_scale")
        return nodes

    def _gather(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        from onnx import TensorProto, helper

        table_name, ids = node.input[0], node.input[1]
        values, scales = quantise_weight(self.initializers[table_name], EMBEDDING_LEVELS, axis=1)
        q_table = self._constant(f"{table_name}_int8", values)
        q_scales = self._constant(f"{table_name}_int8_scale", scales)  # (rows, 1): gathered beside the rows
        p = f"{node.name or table_name}_int8"
        return [
            helper.make_node("Gather", [q_table, ids], [f"{p}_rows"], axis=0, name=f"{p}_rows"),
            helper.make_node("Gather", [q_scales, ids], [f"{p}_scales"], axis=0, name=f"{p}_scales"),
            helper.make_node("Cast", [f"{p}_rows"], [f"{p}_float"], to=TensorProto.FLOAT, name=f"{p}_float"),
            helper.make_node("Mul", [f"{p}_float", f"{p}_scales"], list(node.output), name=f"{p}_dequantise"),
        ]


def fuse_bias_gelu(graph: onnx.GraphProto) -> int:
    """Fuse ``Add(x, bias) -> x * (0.5 * (1 + erf(x / sqrt 2)))`` into BiasGelu in place; return how many."""
    from onnx import helper, numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def scalar(name: str, value: float) -> bool:
        array = constants.get(name)
        return array is not None and array.size == 1 and abs(float(array.reshape(-1)[0]) - value) < 1e-6

    def only_consumer(name: str, op_type: str) -> onnx.NodeProto | None:
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    def other(node: onnx.NodeProto, name: str) -> str:
        rest = [i for i in node.input if i != name]
        return rest[0] if len(rest) == 1 else ""

    replaced: dict[int, onnx.NodeProto] = {}
    removed: set[int] = set()
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        divide = producer.get(erf.input[0])
        if divide is None or divide.op_type != "Div" or not scalar(divide.input[1], float(np.sqrt(2.0))):
            continue
        x = divide.input[0]
        bias_add = producer.get(x)
        plus_one = only_consumer(erf.output[0], "Add")
        half = only_consumer(plus_one.output[0], "Mul") if plus_one else None
        times_x = only_consumer(half.output[0], "Mul") if half else None
        if bias_add is None or bias_add.op_type != "Add" or plus_one is None or half is None or times_x is None:
            continue
        bias = [i for i in bias_add.input if i in constants and constants[i].ndim == 1]
        if (len(bias) != 1 or not scalar(other(plus_one, erf.output[0]), 1.0) or not scalar(other(half, plus_one.output[0]), 0.5)
                or other(times_x, half.output[0]) != x or {id(n) for n in consumers[x]} != {id(divide), id(times_x)}):
            continue
        source = other(bias_add, bias[0])
        replaced[id(bias_add)] = helper.make_node(
            "BiasGelu", [source, bias[0]], list(times_x.output), name=f"{bias_add.name or x}_bias_gelu", domain=MS_DOMAIN
        )
        removed.update(id(n) for n in (divide, erf, plus_one, half, times_x))
    nodes = _replace(graph.node, replaced, removed)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(replaced)


def _replace(nodes: Iterable[onnx.NodeProto], replaced: dict[int, onnx.NodeProto], removed: set[int]) -> list[onnx.NodeProto]:
    return [replaced.get(id(n), n) for n in nodes if id(n) not in removed]
