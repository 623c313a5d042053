"""Two candidates back to back on the tiny BERT: same splits, real scores, McNemar on the disagreements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from tl_platform.data import SplitFractions, stratified_split
from tl_platform.data.bundled import bundled_source
from tl_platform.data.loading import load_labelled_text
from tl_platform.data.splits import DatasetSplits
from tl_platform.economics.comparison import (
    ComparisonBudget,
    ComparisonError,
    PlanComparison,
    candidates_from_plan_json,
    check_candidates,
    compare_recipes,
    mcnemar_test,
    texts_sha256,
    verdict_for,
)
from tl_platform.economics.decision import Recipe
from tl_platform.economics.documents import comparison_document
from tl_platform.economics.render import to_markdown
from tl_platform.models.foundation import load_tokenizer
from tl_platform.tracking.protocol import NullTracker

# the tiny BERT learns the bundled reviews in a few epochs at a high rate; both candidates get the same budget
BUDGET = ComparisonBudget(epochs=2, batch_size=32, learning_rate=5e-3, latency_requests=12, latency_warmup=2)


@pytest.fixture(scope="module")
def splits() -> DatasetSplits:
    return stratified_split(load_labelled_text(bundled_source("amazon")), SplitFractions(), 42)


def small_reviews_csv(path: Path) -> Path:
    """240 short reviews, 120 a class: a plan and a comparison in a few seconds on the tiny BERT."""
    rows = [(f"the blender {i} works and I love it", "pos") for i in range(120)]
    rows += [(f"the blender {i} broke and I want a refund", "neg") for i in range(120)]
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))
    return path


class Runs:
    """Child runs as a tracker would receive them: name, tags, and what was logged."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, dict[str, str], NullTracker]] = []

    @contextmanager
    def open(self, name: str, tags: dict[str, str]) -> Iterator[NullTracker]:
        tracker = NullTracker()
        self.opened.append((name, tags, tracker))
        yield tracker


@pytest.fixture(scope="module")
def compared(tiny_bert_dir: Path, splits: DatasetSplits, tmp_path_factory: pytest.TempPathFactory) -> tuple[PlanComparison, Runs]:
    runs, lines = Runs(), list[str]()
    comparison = compare_recipes(
        Recipe("lora"), Recipe("full_fine_tune"), splits, tiny_bert_dir, load_tokenizer(str(tiny_bert_dir)), BUDGET,
        tmp_path_factory.mktemp("compare"), runs.open, lines.append,
    )
    assert lines[:2] == ["training candidate 1 of 2: LoRA fine-tuning (recommended), up to 2 epoch(s)",
                         "training candidate 2 of 2: full fine-tuning (runner-up), up to 2 epoch(s)"]
    return comparison, runs


def test_both_candidates_are_scored_on_the_same_test_texts(compared, splits: DatasetSplits) -> None:
    comparison, _ = compared
    lora, full = comparison.candidates
    assert lora.test_sha256 == full.test_sha256 == texts_sha256(splits.test.texts)
    truth = np.asarray(splits.test.labels)
    for candidate in (lora, full):
        assert len(candidate.predictions) == candidate.report.n == len(splits.test) == 198
        assert candidate.report.accuracy == pytest.approx(float(np.mean(np.asarray(candidate.predictions) == truth)))
        assert 0.0 <= candidate.report.macro_f1 <= 1.0 and 0.0 <= candidate.report.ece <= 1.0
        assert candidate.epochs_run <= BUDGET.epochs and candidate.train_seconds > 0
        assert candidate.domain_adaptation_seconds == 0.0
        assert 0 < candidate.latency_p50_ms <= candidate.latency_p95_ms
    # the tiny model learns something under either recipe, and the two disagree on some texts
    assert max(lora.report.accuracy, full.report.accuracy) > 0.55


def test_mcnemar_counts_are_the_disagreements_of_the_predictions(compared, splits: DatasetSplits) -> None:
    comparison, _ = compared
    lora, full = comparison.candidates
    pairs = list(zip(splits.test.labels, lora.predictions, full.predictions, strict=True))
    only_lora = sum(1 for truth, a, b in pairs if a == truth != b)
    only_full = sum(1 for truth, a, b in pairs if b == truth != a)
    test = comparison.mcnemar
    assert (test.b, test.c) == (only_lora, only_full) and only_lora + only_full > 0
    assert only_lora - only_full == round((lora.report.accuracy - full.report.accuracy) * 198)
    assert 0.0 <= test.p_value <= 1.0 and test.exact == (only_lora + only_full < 25)
    assert ("No significant difference" in comparison.verdict) == (test.p_value >= 0.05)


def test_sizes_lora_ships_an_adapter_smaller_than_the_model(compared) -> None:
    comparison, _ = compared
    lora, full = comparison.candidates
    assert lora.model_bytes == full.model_bytes > 0  # merged, the same architecture
    assert full.adapter_bytes == full.model_bytes  # full fine-tuning ships the whole model
    assert 0 < lora.adapter_bytes < full.model_bytes
    assert 0 < lora.trainable_parameters < full.trainable_parameters


def test_each_candidate_run_logs_the_same_metric_names(compared) -> None:
    comparison, runs = compared
    assert [name for name, _, _ in runs.opened] == ["candidate 1: LoRA fine-tuning", "candidate 2: full fine-tuning"]
    assert [tags["tlp.comparison.recipe"] for _, tags, _ in runs.opened] == ["lora", "full_fine_tune"]
    finals = [tracker.metrics[-1][1] for _, _, tracker in runs.opened]
    assert finals == [candidate.metrics() for candidate in comparison.candidates]
    assert set(finals[0]) == set(finals[1]) >= {"test_accuracy", "test_macro_f1", "test_ece", "latency_p95_ms"}
    # the training curves recorded while each trained are in its run too
    assert any("eval_loss" in metrics for _, metrics in runs.opened[0][2].metrics)
    assert runs.opened[1][2].params["recipe"] == "full_fine_tune" and runs.opened[1][2].params["budget.epochs"] == 2


def test_the_document_shows_both_side_by_side(compared) -> None:
    comparison, _ = compared
    text = to_markdown(comparison_document(comparison.to_json()))
    assert "| | LoRA fine-tuning (recommended) | full fine-tuning (runner-up) |" in text.replace("|  |", "| |")
    assert f"b = {comparison.mcnemar.b} (only the recommended right)" in text
    assert comparison.verdict in text


def test_domain_adaptation_runs_when_a_candidate_asks_for_it(tiny_bert_dir: Path, splits: DatasetSplits, tmp_path: Path) -> None:
    small = DatasetSplits(splits.train.subset(range(0, len(splits.train), 10)), splits.validation.subset(range(0, 99, 3)),
                          splits.test.subset(range(0, 198, 3)), splits.seed)
    runs = Runs()
    comparison = compare_recipes(
        Recipe("dapt_then_fine_tune", "lora"), Recipe("lora"), small, tiny_bert_dir, load_tokenizer(str(tiny_bert_dir)),
        ComparisonBudget(epochs=1, latency_requests=3, latency_warmup=0), tmp_path, runs.open,
    )
    adapted, plain = comparison.candidates
    assert 0 < adapted.domain_adaptation_seconds < adapted.train_seconds and plain.domain_adaptation_seconds == 0
    assert adapted.adapter_bytes == plain.adapter_bytes  # the same LoRA adapter shape on either encoder
    logged = {key for _, metrics in runs.opened[0][2].metrics for key in metrics}
    assert {"perplexity_before", "perplexity_after"} <= logged


def test_mcnemar_golden_numbers() -> None:
    truth = [1] * 40
    # b = 2, c = 8: exact, two-sided binomial on 10 discordant pairs
    first, second = [1] * 2 + [0] * 8 + [1] * 30, [0] * 2 + [1] * 8 + [1] * 30
    exact = mcnemar_test(truth, first, second)
    assert (exact.b, exact.c, exact.exact) == (2, 8, True)
    assert exact.p_value == pytest.approx(2 * (1 + 10 + 45) / 1024, abs=1e-12)
    assert exact.p_value == pytest.approx(stats.binomtest(2, 10, 0.5).pvalue)
    # b = 10, c = 30: chi-squared with continuity correction
    truth = [0] * 50
    first, second = [0] * 10 + [1] * 30 + [0] * 10, [1] * 10 + [0] * 30 + [0] * 10
    large = mcnemar_test(truth, first, second)
    assert (large.b, large.c, large.exact) == (10, 30, False)
    assert large.statistic == pytest.approx(361 / 40)
    assert large.p_value == pytest.approx(0.00266312, rel=1e-5)
    assert large.p_value == pytest.approx(stats.chi2.sf(361 / 40, df=1))
    # no disagreement at all: nothing to test, p = 1
    assert mcnemar_test([0, 1], [0, 1], [0, 1]).p_value == 1.0


def test_the_verdict_names_a_winner_only_when_significant(compared) -> None:
    comparison, _ = compared
    lora, full = comparison.candidates
    unclear = verdict_for(lora, full, mcnemar_test([1] * 40, [1] * 2 + [0] * 8 + [1] * 30, [0] * 2 + [1] * 8 + [1] * 30))
    assert unclear.startswith("No significant difference in accuracy") and "McNemar exact p = 0.109" in unclear
    clear = verdict_for(lora, full, mcnemar_test([0] * 50, [0] * 10 + [1] * 30 + [0] * 10, [1] * 10 + [0] * 30 + [0] * 10))
    assert clear.startswith("full fine-tuning (runner-up) is more accurate than LoRA fine-tuning")


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (Recipe("lora"), Recipe("prompting"),
         (r"the runner-up recipe is prompting a frontier model \(prompting\), which cannot be trained here: a comparison "
          r"trains two of \['lora', 'full_fine_tune', 'dapt_then_fine_tune'\]")),
        (Recipe("from_scratch"), Recipe("prompting"), r"the recommended recipe is training from scratch \(from_scratch\)"),
        (Recipe("lora"), Recipe("lora"), r"both candidates are LoRA fine-tuning: a comparison needs two different recipes"),
    ],
)
def test_pairs_that_cannot_be_compared_are_refused(first: Recipe, second: Recipe, message: str) -> None:
    with pytest.raises(ComparisonError, match=message):
        check_candidates(first, second)


def test_bad_plans_and_budgets_name_the_problem() -> None:
    with pytest.raises(ComparisonError, match=r"the plan has no runner-up recipe to compare"):
        candidates_from_plan_json({"recommended": {"name": "lora", "fine_tune_method": "lora"}})
    assert candidates_from_plan_json({"recommended": {"name": "dapt_then_fine_tune", "fine_tune_method": "full"},
                                      "runner_up": {"name": "full_fine_tune"}}) == (
        Recipe("dapt_then_fine_tune", "full"), Recipe("full_fine_tune"))
    with pytest.raises(ValueError, match=r"ComparisonBudget.epochs must be in \[1, 1000\], got 0"):
        ComparisonBudget(epochs=0)
    with pytest.raises(ValueError, match=r"FineTuneConfig.batch_size must be in \[1, 4096\], got 0"):
        ComparisonBudget(batch_size=0)
    with pytest.raises(ValueError, match=r"McNemar needs paired predictions: 2 labels, 2 and 1 predictions"):
        mcnemar_test([0, 1], [0, 1], [0])


def test_tlp_plan_compare_trains_both_prints_them_and_tracks_them_in_mlflow(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tl_platform.cli import main
    from tl_platform.tracking.mlflow_tracker import MlflowSettings, search_runs

    monkeypatch.setenv("TLP_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # a far threshold nothing reaches and two tasks on the backbone: LoRA, with full fine-tuning as the runner-up
    data = small_reviews_csv(tmp_path / "reviews.csv")
    plan = ["plan", "--data", str(data), "--labels", "neg,pos", "--foundation", str(tiny_bert_dir), "--max-texts", "60",
            "--far-threshold", "100", "--tasks", "2"]
    assert main([*plan, "--compare", "--compare-epochs", "1", "--compare-latency-requests", "3"]) == 0
    out = capsys.readouterr().out
    assert "tlp: comparing LoRA fine-tuning with full fine-tuning on 168 training, 24 validation and 48 test texts" in out
    progress = out.split("training candidate 1 of 2: LoRA fine-tuning (recommended), up to 1 epoch(s)\n", 1)[1]
    assert progress.startswith("  fine-tuning (lora): epoch 1/1\ntraining candidate 2 of 2: full fine-tuning (runner-up)")
    assert "{'loss': " not in out  # the Trainer's printed log dicts are left out
    assert "| test accuracy | " in out and "| adapter size (what a task adds) | " in out
    runs = search_runs(MlflowSettings(f"sqlite:///{tmp_path / 'mlflow.db'}", "tl_platform"))
    (parent,) = [run for run in runs if run["name"] == "plan comparison"]
    assert f"tlp: MLflow run 'plan comparison' {parent['run_id']} " in out
    children = sorted((run for run in runs if run is not parent), key=lambda run: str(run["name"]))
    assert [run["name"] for run in children] == ["candidate 1: LoRA fine-tuning", "candidate 2: full fine-tuning"]
    assert all(run["tags"]["mlflow.parentRunId"] == parent["run_id"] for run in children)  # type: ignore[index]
    assert children[0]["metrics"].keys() == children[1]["metrics"].keys()  # type: ignore[attr-defined]
    metrics: dict[str, float] = parent["metrics"]  # type: ignore[assignment]
    assert metrics["test_examples"] == 48 and {"mcnemar_b", "mcnemar_c", "mcnemar_p_value"} <= metrics.keys()


def test_tlp_plan_compare_refuses_a_runner_up_it_cannot_train(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tl_platform.cli import main

    monkeypatch.setenv("TLP_HOME", str(tmp_path))
    # an API fast enough for the SLA makes prompting the runner-up to LoRA
    plan = ["plan", "--foundation", str(tiny_bert_dir), "--max-texts", "60", "--far-threshold", "100"]
    assert main([*plan, "--api-latency-ms", "100", "--compare"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("### Recommended: LoRA fine-tuning")  # the plan is still printed
    assert ("tlp: cannot compare: the runner-up recipe is prompting a frontier model (prompting), which cannot be "
            "trained here") in captured.err
    assert not (tmp_path / "mlflow.db").exists()
