"""Stand-ins for the INT8 quantiser whose graphs fail an export gate for certain, on every CPU.

``flipping_quantiser`` negates the FP32 logits: every two-class answer flips, so agreement with FP32 is 0 on
every split (real INT8 flips depend on the kernels of the machine). ``batch_dependent_quantiser`` leaves a
text's answer alone untouched but adds ``BATCH_PUSH * (batch size - 1)`` to the last class's logit, as a
quantiser whose scales span the whole batch would, only always: it agrees with FP32 one text at a time and
changes answers in batches. The sentence embedding is left as FP32 computes it in both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

BATCH_PUSH = 4.0  # logits of the last class rise by this per batch companion


def flipping_quantiser(fp32_path: Path, int8_path: Path) -> Path:
    import onnx

    model = onnx.load(str(fp32_path))
    _rename_logits(model, "logits_before_flip")
    model.graph.node.append(onnx.helper.make_node("Neg", ["logits_before_flip"], ["logits"], name="flip_logits"))
    onnx.save(model, str(int8_path))
    return int8_path


def batch_dependent_quantiser(fp32_path: Path, int8_path: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32_path))
    _rename_logits(model, "logits_alone")
    classes = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value or 2
    push = np.zeros(classes, np.float32)
    push[-1] = BATCH_PUSH
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array([0], np.int64), "batch_axis"),
        numpy_helper.from_array(np.array([1.0], np.float32), "one_text"),
        numpy_helper.from_array(push, "batch_push"),
    ])
    model.graph.node.extend([
        helper.make_node("Shape", ["logits_alone"], ["logits_shape"]),
        helper.make_node("Gather", ["logits_shape", "batch_axis"], ["batch_size"], axis=0),
        helper.make_node("Cast", ["batch_size"], ["batch_size_float"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Sub", ["batch_size_float", "one_text"], ["companions"]),
        helper.make_node("Mul", ["companions", "batch_push"], ["push"]),
        helper.make_node("Add", ["logits_alone", "push"], ["logits"]),
    ])
    onnx.save(model, str(int8_path))
    return int8_path


def _rename_logits(model: onnx.ModelProto, name: str) -> None:
    for node in model.graph.node:
        for i, output in enumerate(node.output):
            if output == "logits":
                node.output[i] = name
