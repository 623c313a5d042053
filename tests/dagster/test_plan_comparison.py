"""The plan_comparison asset on the tiny BERT: both candidates of the materialised plan, tracked as nested runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from assets import COMPARISON_ASSETS, labelled_data
from assets.foundation import foundation_model
from assets.planning import transfer_plan
from tests.dagster.conftest import Stages, make_stage_resources
from tests.unit.test_plan_comparison import small_reviews_csv
from tl_platform.economics.comparison import ComparisonError
from tl_platform.tracking.mlflow_tracker import search_runs

# a far threshold nothing reaches and two tasks on the backbone: LoRA, with full fine-tuning as the runner-up
PLAN = {"far_threshold": 100.0, "tasks_sharing_backbone": 2, "max_texts_per_domain": 60}
COMPARE = {"epochs": 1, "latency_requests": 3}


def plan_op(**plan: object) -> dict[str, object]:
    return {"transfer_plan": {"config": {**PLAN, **plan}}}


@pytest.fixture(scope="module")
def stages(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Stages:
    root = tmp_path_factory.mktemp("comparison")
    resources = make_stage_resources(root)
    data = {"path": str(small_reviews_csv(root / "reviews.csv")), "labels": ["neg", "pos"]}
    assert resources.materialize([labelled_data, foundation_model, transfer_plan], run_config={"ops": {
        "labelled_data": {"config": data}, "foundation_model": {"config": {"source": str(tiny_bert_dir)}}, **plan_op()}}).success
    return resources


def test_the_asset_compares_the_plans_two_recipes_in_nested_mlflow_runs(stages: Stages) -> None:
    result = stages.materialize(COMPARISON_ASSETS, run_config={"ops": {"plan_comparison": {"config": COMPARE}}})
    (event,) = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert (meta["recommended"], meta["runner_up"]) == ("LoRA fine-tuning", "full fine-tuning")
    assert str(meta["comparison"]).startswith("### Plan comparison: the recommended recipe against the runner-up")
    assert 0.0 <= meta["mcnemar_p_value"] <= 1.0  # type: ignore[operator]
    assert ("No significant difference" in str(meta["verdict"])) == (meta["mcnemar_p_value"] >= 0.05)  # type: ignore[operator]
    runs = search_runs(stages["mlflow"].settings())
    (parent,) = [run for run in runs if run["name"] == "plan comparison"]
    assert meta["mlflow_run_id"] == parent["run_id"]
    assert parent["tags"]["dagster.asset_key"] == "plan_comparison"  # type: ignore[index]
    assert parent["metrics"]["mcnemar_b"] == meta["mcnemar_b"]  # type: ignore[index]
    children = [run for run in runs if run["tags"].get("mlflow.parentRunId") == parent["run_id"]]  # type: ignore[attr-defined]
    assert sorted(str(run["params"]["recipe"]) for run in children) == ["full_fine_tune", "lora"]  # type: ignore[index]
    assert all(run["tags"]["dagster.run_id"] == result.run_id for run in children)  # type: ignore[index]


def test_a_plan_whose_runner_up_is_prompting_is_refused(stages: Stages) -> None:
    # an API fast enough for the SLA, on one task: prompting becomes the runner-up to LoRA
    replanned = {"ops": plan_op(tasks_sharing_backbone=1, api_latency_ms=100.0)}
    assert stages.materialize([transfer_plan], run_config=replanned).success
    with pytest.raises(ComparisonError, match=r"the runner-up recipe is prompting a frontier model \(prompting\), which "
                                               r"cannot be trained here"):
        stages.materialize(COMPARISON_ASSETS, run_config={"ops": {"plan_comparison": {"config": COMPARE}}})
