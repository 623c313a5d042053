"""The three model stages materialised on the tiny BERT with a temporary MLflow store."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from assets import TRANSFER_ASSETS
from tests.dagster.conftest import tiny_run_config
from tl_platform.checkpoints import verify_bundle
from tl_platform.tracking.mlflow_tracker import metric_history, registered_versions, search_runs


def materialisations(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, object]]:
    return {
        event.materialization.asset_key.to_user_string(): {k: v.value for k, v in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


@pytest.fixture(scope="module")
def pipeline_run(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dg.ExecuteInProcessResult, dict[str, object]]:
    from tests.dagster.conftest import make_stage_resources

    resources = make_stage_resources(tmp_path_factory.mktemp("stages"))
    result = resources.materialize(TRANSFER_ASSETS, run_config=tiny_run_config(tiny_bert_dir))
    return result, resources


def test_all_stages_materialise_with_metadata(pipeline_run: tuple[dg.ExecuteInProcessResult, dict[str, object]]) -> None:
    result, _ = pipeline_run
    assert result.success
    meta = materialisations(result)
    assert set(meta) == {"labelled_data", "foundation_model", "domain_adapted_model", "task_model"}
    assert meta["labelled_data"]["exact_duplicates_dropped"] == 10
    assert meta["labelled_data"]["split_sizes"] == {"train": 693, "validation": 99, "test": 198}
    assert meta["foundation_model"]["num_layers"] == 2
    assert meta["foundation_model"]["eval_suite"] == {"validation": 99, "test": 198}
    assert meta["foundation_model"]["parameter_count"] > 0
    da = meta["domain_adapted_model"]
    assert da["perplexity_after"] < da["perplexity_before"]  # type: ignore[operator]
    assert da["mlm_head_was_missing"] is True
    task = meta["task_model"]
    assert task["method"] == "full"
    assert 0.55 <= task["test_accuracy"] <= 1.0  # type: ignore[operator]
    assert set(task["learning_rates_by_depth"]) == {"head", "layer 1", "layer 0", "embeddings"}  # type: ignore[arg-type]
    assert str(task["confusion_matrix"]).startswith("![confusion matrix](data:image/png;base64,")
    for stage in ("foundation_model", "domain_adapted_model", "task_model"):
        assert str(meta[stage]["mlflow_run"]).startswith("http://mlflow.test/#/experiments/")
    # each stage's output sits under its asset key and run, and names the upstream versions it read
    assert str(meta["task_model"]["stage_output"]).endswith(f"/task_model/_unpartitioned/{result.run_id}")
    read = meta["task_model"]["upstream_versions"]
    assert set(read) == {"domain_adapted_model", "foundation_model", "labelled_data"}  # type: ignore[arg-type]
    assert {(v["run_id"], v["how"]) for v in read.values()} == {(result.run_id, "this run")}  # type: ignore[union-attr]
    tags = {e.materialization.asset_key.to_user_string(): e.materialization.tags for e in result.get_asset_materialization_events()}
    assert read["domain_adapted_model"]["data_version"] == tags["domain_adapted_model"]["dagster/data_version"]  # type: ignore[index]


def test_checks_pass_with_their_numbers(pipeline_run: tuple[dg.ExecuteInProcessResult, dict[str, object]]) -> None:
    result, _ = pipeline_run
    found = checks(result)
    assert set(found) == {"heldout_perplexity_fell", "eval_suite_accuracy"}
    assert found["heldout_perplexity_fell"].passed
    assert found["eval_suite_accuracy"].passed
    assert found["eval_suite_accuracy"].metadata["min_test_accuracy"].value == 0.55


def test_mlflow_holds_one_tagged_run_per_stage_with_versions(
    pipeline_run: tuple[dg.ExecuteInProcessResult, dict[str, object]],
) -> None:
    result, resources = pipeline_run
    settings = resources["mlflow"].settings()  # type: ignore[attr-defined]
    runs = {r["tags"]["dagster.asset_key"]: r for r in search_runs(settings)}  # type: ignore[index]
    assert set(runs) == {"foundation_model", "domain_adapted_model", "task_model"}
    for run in runs.values():
        assert run["tags"]["dagster.run_id"] == result.run_id  # type: ignore[index]
        assert run["status"] == "FINISHED"
    task_run = runs["task_model"]
    assert task_run["params"]["fine_tune.method"] == "full"  # type: ignore[index]
    history = metric_history(settings, str(task_run["run_id"]), "eval_loss")
    assert len(history) >= 1
    for name in ("tlp-foundation", "tlp-domain-adapted", "tlp-task"):
        (version,) = registered_versions(settings, name)
        assert version.source.startswith("runs:/")
    meta = materialisations(result)
    manifest = verify_bundle(Path(str(meta["task_model"]["bundle"])), expected_stage="task")
    assert manifest.provenance["parent_bundle"] == meta["domain_adapted_model"]["bundle_sha256"]
    assert {"adapter_config.json"}.isdisjoint(Path(f).name for f in manifest.files)  # full fine-tuning: no adapter


def test_skipped_domain_adaptation_passes_the_foundation_through(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from tests.dagster.conftest import make_stage_resources

    resources = make_stage_resources(tmp_path)
    config = tiny_run_config(
        tiny_bert_dir, domain_adapted_model={"enabled": False}, task_model={"method": "lora", "epochs": 1, "min_test_accuracy": 0.0}
    )
    result = resources.materialize(TRANSFER_ASSETS, run_config=config)
    meta = materialisations(result)
    assert meta["domain_adapted_model"]["skipped"] is True
    assert meta["domain_adapted_model"]["bundle_sha256"] == meta["foundation_model"]["bundle_sha256"]
    manifest = verify_bundle(Path(str(meta["task_model"]["bundle"])), expected_stage="task")
    assert manifest.provenance["extra"]["parent_stage"] == "foundation"
    assert any(f.startswith("adapter/") for f in manifest.files)


def test_a_rising_perplexity_fails_the_step_and_nothing_is_materialised(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from tests.dagster.conftest import make_stage_resources

    resources = make_stage_resources(tmp_path)
    # a fitted head first, then a learning rate high enough to wreck the encoder: held-out perplexity rises
    wreck = {
        "head_warmup_epochs": 3, "head_warmup_learning_rate": 5e-3, "learning_rate": 0.9, "epochs": 1,
        "warmup_ratio": 0.0, "weight_decay": 0.0,
    }
    config = tiny_run_config(tiny_bert_dir, domain_adapted_model=wreck)
    result = resources.materialize(TRANSFER_ASSETS, run_config=config, raise_on_error=False)
    assert not result.success
    check = resources.check_evaluation("domain_adapted_model", "heldout_perplexity_fell")
    assert not check.passed and check.target_materialization_data is None  # judged, and nothing was materialised
    assert check.metadata["perplexity_after"].value >= check.metadata["perplexity_before"].value
    assert set(materialisations(result)) == {"labelled_data", "foundation_model"}
    assert resources.latest_run_of("domain_adapted_model") is None and resources.latest_run_of("task_model") is None
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "domain_adapted_model"
    assert "failed its gate (heldout_perplexity_fell: held-out perplexity" in str(failure.step_failure_data.user_failure_data.description)  # type: ignore[union-attr]
    settings = resources["mlflow"].settings()
    assert registered_versions(settings, "tlp-domain-adapted") == []
    (tracked,) = [r for r in search_runs(settings) if r["tags"]["dagster.asset_key"] == "domain_adapted_model"]  # type: ignore[index]
    assert tracked["status"] == "FAILED" and "perplexity_after" in tracked["metrics"]  # type: ignore[operator]


def test_an_accuracy_below_the_floor_fails_the_task_step(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from tests.dagster.conftest import make_stage_resources

    resources = make_stage_resources(tmp_path)
    config = tiny_run_config(
        tiny_bert_dir, domain_adapted_model={"enabled": False}, task_model={"epochs": 1, "min_test_accuracy": 0.999}
    )
    result = resources.materialize(TRANSFER_ASSETS, run_config=config, raise_on_error=False)
    check = resources.check_evaluation("task_model", "eval_suite_accuracy")
    assert not check.passed
    assert check.metadata["test_accuracy"].value < 0.999
    assert "task_model" not in materialisations(result) and resources.latest_run_of("task_model") is None
    settings = resources["mlflow"].settings()
    assert registered_versions(settings, "tlp-task") == []


def test_data_versions_come_from_content_not_time(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """Materialising the same data and model twice gives the same data versions: Dagster sees nothing new."""
    from tests.dagster.conftest import make_stage_resources

    resources = make_stage_resources(tmp_path)
    assets = TRANSFER_ASSETS[:2]  # labelled_data, foundation_model
    config = {"ops": {"foundation_model": {"config": {"source": str(tiny_bert_dir)}}}}
    runs = [resources.materialize(assets, run_config=config) for _ in range(2)]
    versions = [
        {e.materialization.asset_key.to_user_string(): e.materialization.tags["dagster/data_version"]  # type: ignore[index]
         for e in run.get_asset_materialization_events()}
        for run in runs
    ]
    assert versions[0] == versions[1] and len(versions[0]) == 2
    # The data version hashes the content, not the manifest (which records when it was written, to the second).
    bundles = [materialisations(run)["foundation_model"]["bundle_sha256"] for run in runs]
    assert versions[0]["foundation_model"] not in bundles
    other = resources.materialize(assets, run_config={"ops": {**config["ops"], "labelled_data": {"config": {"split_seed": 7}}}})
    changed = {e.materialization.asset_key.to_user_string(): e.materialization.tags["dagster/data_version"]  # type: ignore[index]
               for e in other.get_asset_materialization_events()}
    assert changed["labelled_data"] != versions[0]["labelled_data"]


def test_bad_config_names_the_field(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from tests.dagster.conftest import make_stage_resources

    resources = make_stage_resources(tmp_path)
    config = tiny_run_config(tiny_bert_dir, task_model={"method": "adapter"})
    with pytest.raises(Exception, match=r"FineTuneConfig\.method must be 'lora' or 'full', got 'adapter'"):
        resources.materialize(TRANSFER_ASSETS, run_config=config)


def test_a_stage_without_its_upstream_says_what_to_materialise(tmp_path: Path) -> None:
    from assets import task_model
    from tests.dagster.conftest import make_stage_resources

    with pytest.raises(Exception, match=r"domain_adapted_model has never been materialised; materialise domain_adapted_model first"):
        make_stage_resources(tmp_path).materialize([task_model])


def test_a_disabled_domain_adaptation_leaves_its_check_unevaluated_not_passed(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """No judgement was made, so no result is emitted: Dagster shows the check as skipped, and, blocking as it
    is, a check without a result holds nothing back downstream."""
    import asyncio

    from dagster._core.loader import LoadingContextForTest
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionRecordStatus,
        AssetCheckExecutionResolvedStatus,
    )

    from tests.dagster.conftest import make_stage_resources

    resources = make_stage_resources(tmp_path)
    config = tiny_run_config(
        tiny_bert_dir, domain_adapted_model={"enabled": False}, task_model={"method": "lora", "epochs": 1, "min_test_accuracy": 0.0}
    )
    result = resources.materialize(TRANSFER_ASSETS, run_config=config)
    assert result.success
    assert "heldout_perplexity_fell" not in checks(result) and checks(result)["eval_suite_accuracy"].passed
    meta = materialisations(result)
    assert meta["domain_adapted_model"]["check_not_evaluated"] == "heldout_perplexity_fell: stage disabled by config, nothing was trained"
    assert "task_model" in meta  # the blocking check without a result did not hold fine-tuning back
    key = dg.AssetCheckKey(dg.AssetKey("domain_adapted_model"), "heldout_perplexity_fell")
    (record,) = resources.instance.event_log_storage.get_asset_check_execution_history(key, limit=5)
    assert record.status == AssetCheckExecutionRecordStatus.PLANNED  # planned, never evaluated
    resolved = asyncio.run(record.resolve_status(LoadingContextForTest(resources.instance)))
    assert resolved == AssetCheckExecutionResolvedStatus.SKIPPED


def test_a_missed_floor_fails_with_one_paragraph_that_says_what_to_try(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from tests.dagster.conftest import make_stage_resources

    resources = make_stage_resources(tmp_path)
    config = tiny_run_config(
        tiny_bert_dir, domain_adapted_model={"enabled": False},
        task_model={"method": "lora", "epochs": 1, "min_test_accuracy": 0.999, "max_length": 8},
    )
    result = resources.materialize(TRANSFER_ASSETS, run_config=config, raise_on_error=False)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "task_model"
    data = failure.step_failure_data.user_failure_data
    assert data is not None and data.description is not None
    message, figures = data.description, {k: v.value for k, v in data.metadata.items()}
    accuracy, share = figures["test_accuracy"], figures["test_texts_truncated_share"]
    assert figures["min_test_accuracy"] == 0.999 and figures["test_texts"] == 198
    assert figures["failed_checks"] == ["eval_suite_accuracy"]
    assert 0.5 < share <= 1.0  # the tiny tokenizer's sentences run past 8 tokens
    assert "\n" not in message  # one paragraph
    assert message.startswith(
        f"task_model missed its accuracy floor: {accuracy:.4f} ({round(accuracy * 198)} of 198 correct) on the frozen "
        "test split of 198 texts, against min_test_accuracy 0.999. It was trained with LoRA for 1 epoch(s) at "
        "max_length 8, from the foundation model (no domain adaptation). To try: "
    )
    for advice in (
        "more epochs (task_model epochs; all 1 ran without early stopping)",
        "full fine-tuning (task_model method: full)",
        "domain adaptation first (domain_adapted_model enabled: true)",
        f"a longer max_length ({share:.1%} of the test texts are longer than 8 tokens and lose their end;",
    ):
        assert advice in message
    assert message.endswith("Nothing was materialised: downstream keeps reading the last version that passed.")
    check = resources.check_evaluation("task_model", "eval_suite_accuracy")
    assert not check.passed and check.metadata["split"].value == "test"
    assert check.metadata["test_texts_truncated_share"].value == share


def test_the_floor_message_suggests_only_what_applies() -> None:
    from types import SimpleNamespace

    from assets.task_model import below_floor_message
    from tl_platform.training.config import FineTuneConfig

    stopped = SimpleNamespace(stopped_early=True, best_epoch=2, epochs=(1, 2, 3, 4))
    message = below_floor_message(0.8, 200, 0.85, FineTuneConfig(method="full", max_length=128), stopped,  # type: ignore[arg-type]
                                  "domain_adapted", 0.0)
    assert "(160 of 200 correct)" in message and "trained with full fine-tuning for 4 epoch(s) at max_length 128" in message
    assert "a different learning rate (now 0.0001): validation loss stopped improving at epoch 2" in message
    assert "more in-domain text for domain adaptation (domain_adapted_model corpus_path)" in message
    for absent in ("more epochs (", "full fine-tuning (task_model", "a longer max_length", "domain adaptation first"):
        assert absent not in message
