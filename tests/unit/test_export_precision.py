"""Precision that degrades gracefully: INT8 chosen on validation and judged on test, else FP32 serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.flipping_quantiser import flipping_quantiser
from tests.tiny_bundles import build_tiny_exported_bundle, build_tiny_task_bundle
from tl_platform.export.exported_bundle import ExportConfig
from tl_platform.export.gates import QuantisationReport, check_quantisation
from tl_platform.export.precision import choose_precision, recorded_precision, resolve_precision, shortfall


def report(flips: int, examples: int = 100) -> QuantisationReport:
    """INT8 against FP32 on ``examples`` texts FP32 gets right, ``flips`` of them flipped (made wrong)."""
    fp32 = np.array([[2.0, 0.0]] * examples)
    int8 = fp32.copy()
    int8[:flips] = [0.0, 2.0]
    return check_quantisation(fp32, int8, [0] * examples, min_agreement=0.99, max_accuracy_drop_points=1.0)


def test_int8_serves_when_it_passes_on_validation_and_test() -> None:
    choice = choose_precision(report(1), report(0), require_int8=False)
    assert (choice.precision, choice.int8_passed, choice.blocking) == ("int8", True, False)
    assert choice.reason == "INT8 serves: it passed its gate on validation (100 texts) and test (100)"


def test_a_validation_failure_falls_back_to_fp32_and_says_why() -> None:
    choice = choose_precision(report(2), report(0), require_int8=False)
    assert (choice.precision, choice.int8_passed, choice.blocking) == ("fp32", False, False)
    assert choice.reason == (
        "INT8 failed its gate on the validation split (label agreement 0.9800 < 0.99, accuracy drop 2.00 > 1.0 "
        "points, 100 texts); FP32 serves (it passed parity with PyTorch)"
    )


def test_test_can_veto_int8_but_never_choose_it() -> None:
    vetoed = choose_precision(report(0), report(2), require_int8=False)
    assert vetoed.precision == "fp32" and vetoed.reason.startswith(
        "INT8 passed on validation but failed its gate on the test split (label agreement 0.9800 < 0.99"
    )
    assert choose_precision(report(2), report(0), require_int8=False).precision == "fp32"


def test_require_int8_makes_a_failure_blocking() -> None:
    choice = choose_precision(report(2), report(0), require_int8=True)
    assert (choice.precision, choice.int8_passed, choice.blocking) == ("int8", False, True)
    assert choice.reason.endswith("; require_int8 is set, so the export fails")


def test_shortfall_names_only_the_broken_rules() -> None:
    assert shortfall(report(0)) == ""
    assert shortfall(report(1)) == ""  # 0.99 agreement and a 1.0-point drop are both within their limits
    assert shortfall(report(2)) == "label agreement 0.9800 < 0.99, accuracy drop 2.00 > 1.0 points"


def write_serving(directory: Path, **fields: object) -> Path:
    directory.mkdir(parents=True)
    (directory / "serving.json").write_text(json.dumps({"max_length": 8, "fp32": "f", "int8": "i", **fields}))
    return directory


def test_deployment_precision_follows_the_export_and_int8_is_forced_only_where_it_passed(tmp_path: Path) -> None:
    fallback = write_serving(tmp_path / "fp32", precision="fp32", int8_gate={"passed": False, "reason": "too many flips"})
    passing = write_serving(tmp_path / "int8", precision="int8", int8_gate={"passed": True, "reason": "ok"})
    legacy = write_serving(tmp_path / "legacy")  # exported before the choice: its INT8 passed a blocking gate
    assert [recorded_precision(b) for b in (fallback, passing, legacy)] == ["fp32", "int8", "int8"]
    assert resolve_precision("auto", fallback, "m v1") == "fp32"
    assert resolve_precision("auto", passing, "m v2") == "int8"
    assert resolve_precision("fp32", passing, "m v2") == "fp32"
    assert resolve_precision("int8", passing, "m v2") == "int8"
    with pytest.raises(ValueError, match=r"m v1: precision int8 was asked for, but its export serves fp32 \(too many flips\); use precision 'auto' or 'fp32'"):
        resolve_precision("int8", fallback, "m v1")
    with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'int8', 'fp32'\], got 'int4'"):
        resolve_precision("int4", passing, "m v2")
    broken = write_serving(tmp_path / "broken", precision="torch")
    with pytest.raises(ValueError, match=r"serving.json: precision must be one of \['int8', 'fp32'\], got 'torch'"):
        recorded_precision(broken)


@pytest.fixture(scope="module")
def task_bundle(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_task_bundle(tiny_bert_dir, tmp_path_factory.mktemp("precision") / "task")


def test_an_export_whose_int8_fails_serves_fp32(task_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tl_platform.export.exported_bundle.quantize_int8", flipping_quantiser)
    exported = build_tiny_exported_bundle(task_bundle, tmp_path / "exported")
    serving = json.loads((exported / "serving.json").read_text())
    assert serving["precision"] == "fp32" and not serving["int8_gate"]["passed"]
    assert serving["int8_gate"]["reason"].startswith("INT8 failed its gate on the validation split (label agreement 0.0000 < 0.99")
    gates = json.loads((exported / "reports" / "gates.json").read_text())
    assert gates["parity"]["passed"]
    assert (gates["quantisation_validation"]["label_agreement"], gates["quantisation"]["label_agreement"]) == (0.0, 0.0)
    assert gates["latency"]["precision"] == "fp32"  # the latency gate timed the graph that serves
    assert recorded_precision(exported) == "fp32"


def test_require_int8_marks_the_failure_blocking(task_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tl_platform.export.exported_bundle.quantize_int8", flipping_quantiser)
    settings = ExportConfig(latency_requests=20, latency_budget_p99_ms=1000.0, require_int8=True)
    exported = build_tiny_exported_bundle(task_bundle, tmp_path / "exported", settings)
    choice = json.loads((exported / "reports" / "gates.json").read_text())["precision"]
    assert (choice["blocking"], choice["int8_passed"]) == (True, False)
