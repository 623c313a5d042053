"""What the plan assumes about text length: how max_length was chosen, and how texts beyond it are cut."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tl_platform.training.long_text import MIN_HEAD_TAIL_LENGTH, LengthChoice

if TYPE_CHECKING:
    from tl_platform.economics.decision import PlanSettings


def length_assumptions(settings: PlanSettings, length: LengthChoice) -> tuple[str, ...]:
    return (
        (f"max_length: the p{settings.length_percentile:g} token length (the foundation's tokenizer, special tokens "
         f"included) rounded up to a multiple of {settings.length_multiple}, at least {settings.min_max_length}, "
         "capped by the model's limit and the latency SLA (config)"),
        (f"latency at a length: {settings.serving_latency_ms:g} ms at {settings.serving_latency_tokens} tokens "
         "(MiniLM-L6, the README serving bench: INT8 ONNX, p99 at concurrency 8, 2-core CPU) scaled by forward "
         "FLOPs (linear plus the quadratic attention term): a documented model, not measured at plan time; it "
         "ignores the fixed cost of a request, so it overstates the growth and the cap errs short"),
        truncation_assumption(length),
    )


def truncation_assumption(length: LengthChoice) -> str:
    """Which strategy cuts the texts beyond max_length, and why: head+tail when the percentile exceeds the cap."""
    over = (f"p{length.percentile:g} is {length.percentile_tokens} tokens, over the {length.max_length}-token cap "
            f"({length.bound_by}): {length.truncated_share:.1%} of the texts are longer")
    if length.truncation == "head_tail":
        return (f"long texts: {over}, so fine-tuning, export and serving keep each one's head (a quarter of the "
                "window) and tail (truncation: head_tail; bench/long_documents.py: as accurate as plain truncation "
                "where the whole text carries the label, about 40 points better where only its end does), and "
                "domain adaptation trains on all of their tokens in windows (truncation: chunks)")
    if length.bound_by in ("model limit", "latency SLA"):
        return (f"long texts: {over}, but a {length.max_length}-token window is too short for head+tail (it needs "
                f"{MIN_HEAD_TAIL_LENGTH}): they are cut to their first tokens (truncation: head)")
    return (f"long texts: the p{length.percentile:g} length fits the window, so the {length.truncated_share:.1%} "
            "longer texts are cut to their first tokens (truncation: head); head+tail is chosen when the "
            "percentile exceeds the model's or the latency SLA's cap")
