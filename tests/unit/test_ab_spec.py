"""The pre-registered experiment spec: validation messages, the power calculation against statsmodels, the
canonical JSON and digest, the routing salt, and refusing changes after the start."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest
from statsmodels.stats.power import NormalIndPower, zt_ind_solve_power
from statsmodels.stats.proportion import proportion_effectsize

from tl_platform.experiments.ab_spec import (
    ExperimentSpec,
    Guardrail,
    PrimaryMetric,
    SpecChange,
    SpecChangedError,
    compare_specs,
    spec_changes,
)

ACCURACY = PrimaryMetric("accuracy", "proportion", "higher", baseline=0.85)
REVENUE = PrimaryMetric("revenue", "mean", "higher", baseline=12.0, baseline_std=4.0)
GUARDRAILS = (
    Guardrail("p99", "p99_latency_ms", 250.0, "lower"),
    Guardrail("errors", "error_rate", 0.01, "lower"),
    Guardrail("yelp_accuracy", "accuracy", -0.02, "higher", "vs_champion", {"domain": "yelp"}),
)


def spec(**changes: Any) -> ExperimentSpec:
    fields: dict[str, Any] = {"experiment_id": "exp-1", "primary": ACCURACY, "mde": 0.02, "guardrails": GUARDRAILS,
                              "slices": ("domain", "device"), "routing_salt": "f" * 32}
    return ExperimentSpec(**{**fields, **changes})


# -- the power calculation --------------------------------------------------------------------------------------


def test_proportion_sample_size_matches_statsmodels_and_the_textbook_number() -> None:
    size = spec().sample_size()
    effect = proportion_effectsize(0.87, 0.85)
    expected = NormalIndPower().solve_power(effect_size=effect, alpha=0.05, power=0.8, ratio=1.0)
    assert size.effect_size == pytest.approx(abs(effect), rel=1e-12)
    assert size.champion == size.challenger == math.ceil(expected) == 4720  # 2 (1.96 + 0.8416)^2 / h^2
    assert size.total == 9440


def test_mean_sample_size_uses_the_baseline_std_and_an_unequal_split() -> None:
    size = spec(primary=REVENUE, mde=0.5, challenger_share=0.2, alpha=0.01, power=0.9).sample_size()
    expected = zt_ind_solve_power(effect_size=0.5 / 4.0, alpha=0.01, power=0.9, ratio=0.25)
    assert size.champion == math.ceil(expected)
    assert size.challenger == math.ceil(expected * 0.25)
    assert size.champion > 4 * size.challenger - 4  # four champion units per challenger unit


def test_lower_is_better_moves_the_target_down() -> None:
    lower = spec(primary=PrimaryMetric("error", "proportion", "lower", baseline=0.1), mde=0.02)
    assert lower.effect_size() == pytest.approx(abs(proportion_effectsize(0.08, 0.1)), rel=1e-12)
    assert "0.1 -> 0.08" in lower.power_summary()


def test_power_summary_states_the_inputs_and_the_sizes() -> None:
    summary = spec().power_summary()
    for part in ("accuracy (proportion, higher is better)", "baseline 0.85", "+0.02 absolute", "0.85 -> 0.87",
                 "Cohen's h 0.0577", "alpha 0.05", "power 80%", "50%/50%", "4,720 champion units",
                 "4,720 challenger units", "9,440 in all", "7 days", "unit id"):
        assert part in summary, part
    assert "Cohen's d 0.1250" in spec(primary=REVENUE, mde=0.5).power_summary()


# -- validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("build", "message"), [
    (lambda: spec(mde=0), "mde: the minimum detectable effect must be a positive"),
    (lambda: spec(mde=0.2), r"mde: baseline 0.85 moved by 0.2 in the higher direction leaves \(0, 1\)"),
    (lambda: spec(alpha=0.5), r"alpha: must be in \(0, 0.5\), got 0.5"),
    (lambda: spec(power=1.0), r"power: must be in \[0.5, 1\), got 1.0"),
    (lambda: spec(challenger_share=0.0), r"challenger_share: must be in \(0, 1\), got 0.0"),
    (lambda: spec(holdout_share=0.6), r"holdout_share: must be in \[0, 0.5\], got 0.6"),
    (lambda: spec(min_duration_days=0), r"min_duration_days: an integer in \[1, 365\], got 0"),
    (lambda: spec(max_duration_days=3), r"max_duration_days: an integer in \[min_duration_days=7, 365\], got 3"),
    (lambda: spec(experiment_id="a b"), "experiment_id: 1-64 characters of letters, digits"),
    (lambda: spec(slices=("domain", "domain")), "slices: keys must be distinct"),
    (lambda: spec(guardrails=(GUARDRAILS[0], GUARDRAILS[0])), "guardrails: names must be distinct"),
    (lambda: spec(routing_salt="s" * 129), "routing_salt: at most 128 characters, got 129"),
    (lambda: PrimaryMetric("accuracy", "ratio"), r"primary.kind: must be one of \['proportion', 'mean'\], got 'ratio'"),  # type: ignore[arg-type]
    (lambda: PrimaryMetric("accuracy", "proportion", "up", baseline=0.5), r"primary.direction: must be one of \['higher', 'lower'\]"),  # type: ignore[arg-type]
    (lambda: PrimaryMetric("accuracy", "proportion"), r"primary.baseline: a proportion metric needs the baseline rate in \(0, 1\)"),
    (lambda: PrimaryMetric("revenue", "mean", baseline_std=0.0), "primary.baseline_std: a mean metric needs the per-unit standard deviation > 0"),
    (lambda: Guardrail("p99", "p99_latency_ms", math.inf, "lower"), r"guardrails\['p99'\].limit: must be a finite number"),
    (lambda: Guardrail("p99", "p99_latency_ms", 1.0, "lower", "relative"), r"guardrails\['p99'\].comparison: must be one of \['absolute', 'vs_champion'\]"),  # type: ignore[arg-type]
    (lambda: Guardrail("acc", "accuracy", 0.0, "higher", "vs_champion", {"domain": ""}), r"guardrails\['acc'\].slice\['domain'\]"),
])
def test_bad_values_are_refused_naming_the_field_and_the_allowed_values(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_guardrail_breach_follows_its_direction() -> None:
    latency, yelp = GUARDRAILS[0], GUARDRAILS[2]
    assert latency.breached(251.0) and not latency.breached(250.0)
    assert yelp.breached(-0.03) and not yelp.breached(-0.01)


# -- salt, storage, immutability --------------------------------------------------------------------------------


def test_a_fresh_salt_per_experiment_unless_given() -> None:
    first, second = spec(routing_salt=""), spec(routing_salt="")
    assert re.fullmatch(r"[0-9a-f]{32}", first.routing_salt) and first.routing_salt != second.routing_salt
    assert first.salt_generated and not spec().salt_generated and spec().routing_salt == "f" * 32


def test_canonical_json_round_trips_and_pins_its_digest() -> None:
    stored = spec()
    text = stored.canonical_json()
    assert ": " not in text and ", " not in text and text.startswith('{"alpha":0.05,"challenger_share":0.5')
    again = ExperimentSpec.from_json(text)
    assert again == stored and again.digest() == stored.digest()
    # the stored format is a contract: a change here makes every stored spec read as changed
    assert stored.digest() == "71437dfa0a5f23ada80a505912a4711c0076aba687082ed2b549fb399cacb96f"
    assert spec(alpha=0.04).digest() != stored.digest()
    with pytest.raises(ValueError, match="spec_version: this code reads version 1, got 2"):
        ExperimentSpec.from_json({**stored.to_json(), "spec_version": 2})


def test_an_unchanged_spec_passes_even_when_its_config_left_the_salt_to_be_generated() -> None:
    compare_specs(spec(), spec())
    compare_specs(spec(), spec(routing_salt=""))  # a fresh salt on each run is not a change
    assert spec_changes(spec(), spec(routing_salt="0" * 32)) == (SpecChange("routing_salt", "f" * 32, "0" * 32),)


def test_a_change_after_the_start_is_refused_listing_exactly_what_changed() -> None:
    stored = spec()
    proposed = dataclasses.replace(
        stored, alpha=0.1, slices=("domain",),
        guardrails=(Guardrail("p99", "p99_latency_ms", 300.0, "lower"), GUARDRAILS[2]))
    with pytest.raises(SpecChangedError) as raised:
        compare_specs(stored, proposed)
    assert raised.value.changes == (
        SpecChange("alpha", 0.05, 0.1),
        SpecChange("guardrails[errors]", GUARDRAILS[1].to_json(), None),
        SpecChange("guardrails[p99].limit", 250.0, 300.0),
        SpecChange("slices", ["domain", "device"], ["domain"]),
    )
    message = str(raised.value)
    assert "experiment 'exp-1' has started" in message and "changes 4 field(s)" in message
    assert 'alpha: 0.05 -> 0.1' in message and 'guardrails[p99].limit: 250.0 -> 300.0' in message
    assert 'slices: ["domain", "device"] -> ["domain"]' in message and "new experiment_id" in message
    assert 'guardrails[errors]: {"comparison": "absolute", "direction": "lower", "limit": 0.01' in message
