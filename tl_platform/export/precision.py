"""Which precision an exported bundle serves in: INT8 when it passes its gates, else FP32, which passed parity.

The choice is made on the validation split and judged on the test split. Test can only veto INT8 (a recipe
that passed on validation but not on test falls back to FP32); it never chooses INT8, so the test figures
stay an honest estimate of what serves. INT8 must also answer each text alike alone and in any batch (the
batch-independence gate): an INT8 graph whose answers depend on the batch is not chosen either. The export records the choice in the bundle's ``serving.json``; the
deployment reads it from there, so a bundle is never served in a precision whose gate it failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, cast

from tl_platform.export.gates import BatchIndependenceReport, QuantisationReport

ServingPrecision = Literal["int8", "fp32"]
SERVING_PRECISIONS: tuple[ServingPrecision, ...] = ("int8", "fp32")
REQUESTABLE_PRECISIONS = ("auto", *SERVING_PRECISIONS)


@dataclass(frozen=True)
class PrecisionChoice:
    """The serving precision of an export and why.

    Attributes:
        precision: ``int8`` when INT8 passed its gate on validation and on test and its answers do not depend on
            the batch, else ``fp32``.
        int8_passed: whether INT8 passed (both splits, and batch independence).
        blocking: INT8 failed and the export demands it (``ExportConfig.require_int8``): the export must fail.
        reason: one sentence for the check's metadata, the run's log and the bundle.
    """

    precision: ServingPrecision
    int8_passed: bool
    blocking: bool
    reason: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def shortfall(report: QuantisationReport) -> str:
    """The rules of the INT8 gate a report broke, with the figures; empty when it passed."""
    broken = []
    if report.label_agreement < report.min_agreement:
        broken.append(f"label agreement {report.label_agreement:.4f} < {report.min_agreement}")
    if report.accuracy_drop_points > report.max_accuracy_drop_points:
        broken.append(f"accuracy drop {report.accuracy_drop_points:.2f} > {report.max_accuracy_drop_points} points")
    return ", ".join(broken)


def choose_precision(
    validation: QuantisationReport,
    test: QuantisationReport,
    require_int8: bool,
    batch_independence: BatchIndependenceReport | None = None,
) -> PrecisionChoice:
    """INT8 if it passes on validation (the choice) and on test (the judgement) and its answers do not depend on
    the batch (``batch_independence``, INT8's report; None: not judged); otherwise FP32."""
    independent = batch_independence is None or batch_independence.passed
    if validation.passed and test.passed and independent:
        alike = "" if batch_independence is None else (
            f", and answers {batch_independence.examples} texts alike alone and in batches"
        )
        return PrecisionChoice(
            "int8", True, False,
            f"INT8 serves: it passed its gate on validation ({validation.examples} texts) and test "
            f"({test.examples}){alike}",
        )
    reasons = []
    if not validation.passed:
        reasons.append(
            f"INT8 failed its gate on the validation split ({shortfall(validation)}, {validation.examples} texts)"
        )
    elif not test.passed:
        reasons.append(
            f"INT8 passed on validation but failed its gate on the test split ({shortfall(test)}, "
            f"{test.examples} texts)"
        )
    if batch_independence is not None and not batch_independence.passed:
        reasons.append(batch_independence.shortfall())
    why = "; ".join(reasons)
    if require_int8:
        return PrecisionChoice("int8", False, True, f"{why}; require_int8 is set, so the export fails")
    return PrecisionChoice("fp32", False, False, f"{why}; FP32 serves (it passed parity with PyTorch)")


def recorded_precision(bundle: Path) -> ServingPrecision:
    """The precision the export chose for ``bundle``, from its ``serving.json``.

    Bundles exported before the choice existed carry no ``precision``: they passed a blocking INT8 gate, so
    INT8 is theirs.
    """
    serving = json.loads((Path(bundle) / "serving.json").read_text())
    precision = serving.get("precision", "int8")
    if precision not in SERVING_PRECISIONS:
        raise ValueError(
            f"{bundle / 'serving.json'}: precision must be one of {list(SERVING_PRECISIONS)}, got {precision!r}"
        )
    return cast(ServingPrecision, precision)


def resolve_precision(requested: str, bundle: Path, name: str) -> ServingPrecision:
    """The precision ``bundle`` (called ``name`` in messages) serves in when ``requested``.

    ``auto`` follows the export's choice; ``fp32`` is always allowed (it passed parity); ``int8`` only where the
    export chose INT8, as serving a graph that failed its gate is what the gate exists to prevent.
    """
    if requested not in REQUESTABLE_PRECISIONS:
        raise ValueError(f"precision must be one of {list(REQUESTABLE_PRECISIONS)}, got {requested!r}")
    recorded = recorded_precision(bundle)
    if requested == "auto":
        return recorded
    if requested == "int8" and recorded != "int8":
        reason = json.loads((Path(bundle) / "serving.json").read_text()).get("int8_gate", {}).get("reason", "")
        raise ValueError(
            f"{name}: precision int8 was asked for, but its export serves fp32 ({reason}); use precision "
            "'auto' or 'fp32' for it"
        )
    return cast(ServingPrecision, requested)
