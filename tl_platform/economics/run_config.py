"""The main job's run config that carries out a transfer plan."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tl_platform.economics.decision import Recipe, TransferPlan


def configured_recipe(plan: TransferPlan) -> Recipe | None:
    """The recipe the main job runs for this plan: the recommended one when the main job can train it, else the
    runner-up (the benchmark for a prompting recommendation); None when neither is a fine-tuning recipe."""
    for recipe in (plan.recommended, plan.runner_up):
        if recipe.trainable_by_main_job:
            return recipe
    return None


def run_config_for(plan: TransferPlan) -> dict[str, Any] | None:
    """Dagster run config of the main job for ``configured_recipe``: whether domain adaptation runs, how the task
    model is fine-tuned, and the chosen ``max_length`` and long-text strategy of both (export and serving read
    them from the task bundle)."""
    recipe = configured_recipe(plan)
    if recipe is None:
        return None
    adaptation: dict[str, Any] = {}
    fine_tuning: dict[str, Any] = {}
    if plan.length:
        adaptation = {"max_length": plan.length.max_length, "truncation": plan.length.mlm_texts}
        fine_tuning = {"max_length": plan.length.max_length, "truncation": plan.length.truncation}
    return {
        "ops": {
            "domain_adapted_model": {"config": {"enabled": recipe.domain_adaptation, **adaptation}},
            "task_model": {"config": {"method": recipe.fine_tune_method, **fine_tuning}},
        }
    }
