"""A stand-in for the INT8 quantiser whose graph fails the INT8 gate for certain: it negates the FP32 logits.

Every two-class answer flips, so agreement with FP32 is 0 on every split, on every CPU (real INT8 flips depend
on the kernels of the machine). The sentence embedding is left as FP32 computes it.
"""

from __future__ import annotations

from pathlib import Path


def flipping_quantiser(fp32_path: Path, int8_path: Path) -> Path:
    import onnx

    model = onnx.load(str(fp32_path))
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == "logits":
                node.output[i] = "logits_before_flip"
    model.graph.node.append(onnx.helper.make_node("Neg", ["logits_before_flip"], ["logits"], name="flip_logits"))
    onnx.save(model, str(int8_path))
    return int8_path
