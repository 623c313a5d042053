"""Two candidates back to back: the plan's recommended recipe and its runner-up, trained and scored side by side."""

# No `from __future__ import annotations`: Dagster reads the config and resource annotations at runtime.

import json
import shutil
from contextlib import AbstractContextManager
from typing import Any

import dagster as dg
from pydantic import Field

from assets.stage_records import content_version, tracking_metadata
from resources.mlflow_tracking import MlflowTracking
from resources.stage_store import StageStore, lineage_metadata
from tl_platform.checkpoints import verify_bundle
from tl_platform.data.splits import read_splits
from tl_platform.economics.comparison import (
    ComparisonBudget,
    candidates_from_plan_json,
    compare_recipes,
    log_comparison,
)
from tl_platform.economics.documents import comparison_document
from tl_platform.economics.render import to_markdown
from tl_platform.economics.report import PLAN_RECORD, write_record
from tl_platform.models.foundation import load_tokenizer
from tl_platform.tracking.mlflow_tracker import start_tracked_run
from tl_platform.tracking.protocol import RunTracker

COMPARISON_RECORD = "plan_comparison.json"
PARENT_RUN_NAME = "plan comparison"


class PlanComparisonConfig(dg.Config):
    """The budget each candidate gets, identically (``ComparisonBudget``, validated there)."""

    epochs: int = Field(default=3, description="maximum fine-tuning epochs of each (early stopping may end sooner)")
    max_length: int | None = Field(default=None, description="tokens per text; the plan's max_length when unset")
    batch_size: int = 16
    learning_rate: float | None = Field(default=None, description="head rate; 1e-3 for LoRA, 1e-4 full when unset")
    seed: int = 42
    latency_requests: int = Field(default=100, description="single-text predictions timed per candidate")
    domain_adaptation_epochs: int = Field(default=1, description="MLM epochs of a domain-adaptation candidate")
    head_warmup_epochs: int = Field(default=1, description="MLM head warm-up epochs when the checkpoint has none")

    def to_library(self, plan_length: dict[str, Any] | None) -> ComparisonBudget:
        """The budget, with the plan's max_length and truncation (``LengthChoice.to_json``) unless set here."""
        fields: dict[str, Any] = self.model_dump(exclude={"max_length"})
        if plan_length is not None:
            fields.update({key: plan_length[key] for key in ("max_length", "truncation", "mlm_texts") if key in plan_length})
        if self.max_length is not None:
            fields["max_length"] = self.max_length
        return ComparisonBudget(**fields)


@dg.asset(
    group_name="economics",
    kinds={"pytorch", "mlflow"},
    deps=["transfer_plan", "labelled_data", "foundation_model"],
    code_version="1",
    pool="training",
)
def plan_comparison(
    context: dg.AssetExecutionContext, config: PlanComparisonConfig, stage_store: StageStore, mlflow: MlflowTracking
) -> dg.MaterializeResult:
    """The plan's recommended recipe and its runner-up, benchmarked instead of argued on paper.

    Both are trained from the foundation model with the same budget on the same train and validation splits and
    scored on the same test split: test accuracy, macro-F1, calibration (ECE), training time, model and adapter
    size, and single-request latency. A McNemar test on the test texts they classify differently says whether
    the accuracy gap is more than chance; the verdict names no winner when it is not. MLflow holds a parent run
    "plan comparison" with one child run per candidate, under the same metric names, for its compare view.
    Only fine-tuning recipes (with or without domain adaptation) can be trained; a plan whose recommendation or
    runner-up is prompting an API or training from scratch fails with a message saying so. Not part of the main
    job: materialise it when the choice is worth the training time.
    """
    upstreams = [stage_store.upstream(context, key) for key in ("transfer_plan", "labelled_data", "foundation_model")]
    plan = json.loads((upstreams[0].path / PLAN_RECORD).read_text())
    first, second = candidates_from_plan_json(plan)
    budget = config.to_library(plan.get("max_length"))
    splits = read_splits(upstreams[1].path)
    foundation = verify_bundle(upstreams[2].path / "bundle", expected_stage="foundation")
    tokenizer = load_tokenizer(str(foundation.path / "tokenizer"))
    directory = stage_store.output_dir(context)

    def child_run(name: str, tags: dict[str, str]) -> AbstractContextManager[RunTracker]:
        return start_tracked_run(mlflow.settings(), name, {"dagster.run_id": context.run_id, **tags}, nested=True)

    with mlflow.run_for_asset(context) as tracker:
        tracker.set_tags({"mlflow.runName": PARENT_RUN_NAME, "tlp.comparison": "parent"})
        comparison = compare_recipes(first, second, splits, foundation.path / "model", tokenizer, budget,
                                     directory / "work", child_run, context.log.info)
        log_comparison(tracker, comparison)
        tracked = tracking_metadata(tracker, None)
    shutil.rmtree(directory / "work", ignore_errors=True)  # both models: the comparison is the output
    payload = comparison.to_json()
    write_record(directory, COMPARISON_RECORD, payload)
    stored = stage_store.save(context, directory)
    one, two = comparison.candidates
    return dg.MaterializeResult(
        metadata={
            "comparison": dg.MetadataValue.md(to_markdown(comparison_document(payload))),
            "verdict": comparison.verdict,
            "recommended": one.recipe.label,
            "runner_up": two.recipe.label,
            "mcnemar_p_value": comparison.mcnemar.p_value,
            "mcnemar_b": comparison.mcnemar.b,
            "mcnemar_c": comparison.mcnemar.c,
            "test_accuracy": dg.MetadataValue.json({c.role: c.report.accuracy for c in comparison.candidates}),
            **tracked,
            **stored,
            **lineage_metadata(*upstreams),
        },
        data_version=content_version(json.dumps(payload, sort_keys=True)),
    )
