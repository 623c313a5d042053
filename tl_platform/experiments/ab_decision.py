"""The daily A/B decision: ship, roll back, keep running, or invalid, with every reason that led there.

The order is the order of trust. A sample-ratio mismatch (or units seen in both arms) means the randomisation
broke, so no effect can be believed: invalid. Harm stops early: the sequential test crossing on the worse side,
a guardrail breached, or a slice where the challenger is significantly worse after the multiple-comparison
correction, each rolls back on any day. Otherwise nothing is decided before the pre-registered minimum
duration (one business cycle). After it, the challenger ships when it is better (the sequential test stopped
for benefit, or the fixed-horizon test is significant once the planned sample is reached) with every
guardrail measured and within its limit; it is rolled back when the planned sample was reached (or the
maximum duration passed) without a significant gain. The decision is a pure function of the spec and the
aggregates, so re-deciding a day gives the same answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from tl_platform.experiments.ab_aggregate import ExperimentAggregates
from tl_platform.experiments.ab_sequential import SequentialLook, sequential_looks, spec_mixing_variance
from tl_platform.experiments.ab_slices import SliceReport, slice_report
from tl_platform.experiments.ab_spec import ExperimentSpec, Guardrail
from tl_platform.experiments.ab_stats import EffectResult, SRMResult, compare_arms, srm_check

Verdict = Literal["ship", "roll_back", "keep_running", "invalid"]
# A unit served by both arms means the salt or the split changed mid-experiment; a few can come from a unit id
# shared by two clients, more than this share of units cannot.
MAX_CROSSOVER_SHARE = 0.01
CPU_CORE_HOUR_USD = 0.04  # economics.costs.PriceTable's default; compute cost of 1,000 requests at mean latency


@dataclass(frozen=True)
class GuardrailOutcome:
    """A guardrail's measured value (the challenger's, or its difference from the champion) against its limit."""

    guardrail: Guardrail
    champion: float | None
    challenger: float | None
    compared: float | None
    breached: bool
    note: str

    def to_json(self) -> dict[str, Any]:
        return {**self.guardrail.to_json(), "champion_value": self.champion, "challenger_value": self.challenger,
                "compared_value": self.compared, "breached": self.breached, "note": self.note}


@dataclass(frozen=True)
class DailyEffect:
    """One day's own effect (that day's rows only), with its confidence interval, for the daily band plot."""

    day: date
    result: EffectResult


@dataclass(frozen=True)
class ExperimentDecision:
    experiment_id: str
    day: date
    days_run: int
    verdict: Verdict
    reasons: tuple[str, ...]
    primary: EffectResult
    srm: SRMResult
    sequential: tuple[SequentialLook, ...]
    slices: SliceReport
    guardrails: tuple[GuardrailOutcome, ...]
    required_units: dict[str, int]
    observed_units: dict[str, int]
    daily: tuple[DailyEffect, ...] = field(default=())
    rows_without_unit: int = 0

    @property
    def sample_reached(self) -> bool:
        return all(self.observed_units[arm] >= need for arm, need in self.required_units.items())

    def summary(self) -> str:
        return f"{self.experiment_id} on {self.day.isoformat()} (day {self.days_run}): {self.verdict}: " + "; ".join(self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id, "day": self.day.isoformat(), "days_run": self.days_run,
            "verdict": self.verdict, "reasons": list(self.reasons), "primary": self.primary.to_json(),
            "srm": self.srm.to_json(), "sequential": [look.to_json() for look in self.sequential],
            "slices": self.slices.to_json(), "guardrails": [g.to_json() for g in self.guardrails],
            "required_units": self.required_units, "observed_units": self.observed_units,
            "sample_reached": self.sample_reached, "rows_without_unit": self.rows_without_unit,
            "daily": [{"day": d.day.isoformat(), **d.result.to_json()} for d in self.daily],
        }

    def guardrail_table(self) -> str:
        """Markdown: one row per guardrail, for the Dagster UI."""
        lines = ["| guardrail | metric | champion | challenger | compared | limit | status |", "|---|---|---|---|---|---|---|"]
        for g in self.guardrails:
            status = "BREACHED" if g.breached else ("not measured" if g.compared is None else "ok")
            lines.append(f"| {g.guardrail.name} | {_metric_label(g.guardrail)} | {_fmt(g.champion)} | "
                         f"{_fmt(g.challenger)} | {_fmt(g.compared)} | {g.guardrail.limit:g} ({g.guardrail.comparison}) | {status} |")
        return "\n".join(lines)

    def slice_table(self) -> str:
        lines = ["| slice | champion | challenger | difference [CI] | adjusted p | note |", "|---|---|---|---|---|---|"]
        for effect in self.slices.effects:
            r = effect.result
            interval = f"{_fmt(r.difference)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
            lines.append(f"| {effect.key}={effect.value} | {_fmt(r.control_mean)} (n={r.control.n}) | "
                         f"{_fmt(r.treatment_mean)} (n={r.treatment.n}) | {interval} | {_fmt(effect.adjusted_p)} | {effect.note} |")
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _metric_label(guardrail: Guardrail) -> str:
    where = ",".join(f"{k}={v}" for k, v in sorted((guardrail.slice or {}).items()))
    return f"{guardrail.metric}[{where}]" if where else guardrail.metric


def _operational_values(guardrail: Guardrail, aggregates: ExperimentAggregates) -> tuple[float | None, float | None] | None:
    ops = aggregates.operations
    if guardrail.metric == "p99_latency_ms":
        return ops["champion"].p99_latency_ms, ops["challenger"].p99_latency_ms
    if guardrail.metric == "error_rate":
        return ops["champion"].error_rate, ops["challenger"].error_rate
    if guardrail.metric == "cost_per_1k_requests":  # compute time per request, priced per core-hour
        return _cost_per_1k(ops["champion"].mean_latency_ms), _cost_per_1k(ops["challenger"].mean_latency_ms)
    return None


def _cost_per_1k(mean_latency_ms: float | None) -> float | None:
    return None if mean_latency_ms is None else mean_latency_ms / 3.6e6 * CPU_CORE_HOUR_USD * 1000


def evaluate_guardrail(guardrail: Guardrail, spec: ExperimentSpec, aggregates: ExperimentAggregates,
                       extra: Mapping[str, tuple[float, float]]) -> GuardrailOutcome:
    """Operational metrics (latency, errors, cost) are compared by their values, measured on every row; a
    quality metric (accuracy, outcome) is breached only when it is beyond the limit AND the challenger is
    significantly worse than the champion on it, so noise on a small slice does not roll a model back."""
    values = _operational_values(guardrail, aggregates)
    significant_worse: bool | None = None
    if values is None and guardrail.metric in ("accuracy", "outcome"):
        kind = "proportion" if guardrail.metric == "accuracy" else "mean"
        if kind != spec.primary.kind:
            return GuardrailOutcome(guardrail, None, None, None, False,
                                    f"not measured: the experiment aggregates {spec.primary.kind} feedback, not {guardrail.metric}")
        arms = aggregates.overall
        if guardrail.slice:
            if len(guardrail.slice) != 1:
                return GuardrailOutcome(guardrail, None, None, None, False, "not measured: only one-key slices are aggregated")
            (key, value), = guardrail.slice.items()
            if (key, value) not in aggregates.slices:
                return GuardrailOutcome(guardrail, None, None, None, False,
                                        f"not measured: no units in slice {key}={value} (is {key!r} in the spec's slices?)")
            arms = aggregates.slices[(key, value)]
        result = compare_arms(kind, *arms, alpha=spec.alpha)
        values = (result.control_mean, result.treatment_mean)
        if result.ok and result.difference is not None:
            worse = result.difference < 0 if guardrail.direction == "higher" else result.difference > 0
            significant_worse = worse and result.significant
    elif values is None:
        if guardrail.metric not in extra:
            return GuardrailOutcome(guardrail, None, None, None, False, f"not measured: no values given for {guardrail.metric!r}")
        values = extra[guardrail.metric]
    champion, challenger = values
    if challenger is None or (guardrail.comparison == "vs_champion" and champion is None):
        return GuardrailOutcome(guardrail, champion, challenger, None, False, "not measured: an arm has no rows")
    compared = challenger - champion if guardrail.comparison == "vs_champion" and champion is not None else challenger
    beyond = guardrail.breached(compared)
    if significant_worse is None:
        breached, note = beyond, ("beyond the limit" if beyond else "within the limit")
    else:
        breached = beyond and significant_worse
        note = ("beyond the limit and significantly worse than the champion" if breached
                else "beyond the limit, but not significantly worse than the champion" if beyond else "within the limit")
    return GuardrailOutcome(guardrail, champion, challenger, compared, breached, note)


def decide(spec: ExperimentSpec, aggregates: ExperimentAggregates, started: date, day: date,
           extra_guardrail_values: Mapping[str, tuple[float, float]] | None = None) -> ExperimentDecision:
    """The verdict for ``day`` (UTC) of an experiment that started on ``started``, from its aggregates up to
    the end of ``day``. ``extra_guardrail_values``: (champion, challenger) of user metrics the log lacks."""
    if day < started:
        raise ValueError(f"day {day.isoformat()} is before the experiment started ({started.isoformat()})")
    days_run = (day - started).days + 1
    champion, challenger = aggregates.overall
    primary = compare_arms(spec.primary.kind, champion, challenger, alpha=spec.alpha)
    shares = {"champion": 1.0 - spec.challenger_share, "challenger": spec.challenger_share}
    srm = srm_check(aggregates.units, shares)
    looks = sequential_looks(aggregates.cumulative, spec.primary.direction, spec_mixing_variance(spec), spec.alpha)
    slices = slice_report(aggregates.slices, spec.primary.kind, spec.primary.direction, alpha=spec.alpha)
    guardrails = tuple(evaluate_guardrail(g, spec, aggregates, extra_guardrail_values or {}) for g in spec.guardrails)
    size = spec.sample_size()
    required = {"champion": size.champion, "challenger": size.challenger}
    observed = {"champion": champion.n, "challenger": challenger.n}
    daily = tuple(DailyEffect(d.day, compare_arms(spec.primary.kind, d.champion, d.challenger, alpha=spec.alpha))
                  for d in aggregates.daily)

    def verdict(kind: Verdict, *reasons: str) -> ExperimentDecision:
        return ExperimentDecision(spec.experiment_id, day, days_run, kind, reasons, primary, srm, looks, slices,
                                  guardrails, required, observed, daily, aggregates.rows_without_unit)

    exposed = sum(aggregates.units.values())
    if srm.mismatch:
        return verdict("invalid", f"sample ratio mismatch: {srm.reason}")
    if exposed and aggregates.units_in_both_arms > MAX_CROSSOVER_SHARE * exposed:
        return verdict("invalid", f"{aggregates.units_in_both_arms} of {exposed} units were served by both arms "
                                  "(the salt or the split changed during the experiment)")
    harms = [f"guardrail {g.guardrail.name} breached: {_metric_label(g.guardrail)} {_fmt(g.compared)} against limit "
             f"{g.guardrail.limit:g} ({g.note})" for g in guardrails if g.breached]
    harms += [f"slice {e.key}={e.value}: {e.note}, difference {_fmt(e.result.difference)} "
              f"[{_fmt(e.result.ci_low)}, {_fmt(e.result.ci_high)}]" for e in slices.harmed]
    last = looks[-1] if looks else None
    if last is not None and last.decision == "stop_harm":
        harms.append(f"sequential test stopped for harm: {last.reason}")
    if harms:
        return verdict("roll_back", *harms)
    if days_run < spec.min_duration_days:
        return verdict("keep_running", f"day {days_run} of at least {spec.min_duration_days}: no decision before one "
                                       f"full business cycle unless the challenger does harm", _progress(observed, required))
    unmeasured = [g.guardrail.name for g in guardrails if g.compared is None]
    fixed_win = primary.ok and primary.significant and _better(primary, spec) and all(
        observed[a] >= required[a] for a in required)
    if (last is not None and last.decision == "stop_benefit") or fixed_win:
        why = last.reason if last is not None and last.decision == "stop_benefit" else (
            f"fixed-horizon {primary.test} test at the planned sample: difference {_fmt(primary.difference)} "
            f"[{_fmt(primary.ci_low)}, {_fmt(primary.ci_high)}], p {_fmt(primary.p_value)}")
        if unmeasured and days_run >= spec.max_duration_days:  # safety that cannot be shown is not shipped
            return verdict("roll_back", f"the challenger is better ({why}), but guardrails {unmeasured} were still not "
                                        f"measured after the maximum duration of {spec.max_duration_days} days")
        if unmeasured:
            return verdict("keep_running", f"the challenger is better ({why}), but guardrails {unmeasured} are not measured yet")
        better = why if why.startswith("challenger better") else f"challenger better: {why}"
        return verdict("ship", better, "every guardrail within its limit; no slice harmed; "
                               f"sample ratio as planned (p {_fmt(srm.p_value)})")
    if all(observed[a] >= required[a] for a in required):
        return verdict("roll_back", f"the planned sample was reached without a significant gain: difference "
                                    f"{_fmt(primary.difference)} [{_fmt(primary.ci_low)}, {_fmt(primary.ci_high)}], "
                                    f"p {_fmt(primary.p_value)} ({primary.reason})")
    if days_run >= spec.max_duration_days:
        return verdict("roll_back", f"the maximum duration of {spec.max_duration_days} days passed without a decision; "
                                    + _progress(observed, required))
    sequential = f"; sequential: {last.reason}" if last is not None else ""
    return verdict("keep_running", _progress(observed, required), _primary_text(primary) + sequential)


def _primary_text(result: EffectResult) -> str:
    if not result.ok:
        return f"primary: {result.reason}"
    return (f"primary: {result.test} difference {_fmt(result.difference)} [{_fmt(result.ci_low)}, "
            f"{_fmt(result.ci_high)}], p {_fmt(result.p_value)}")


def _better(result: EffectResult, spec: ExperimentSpec) -> bool:
    assert result.difference is not None
    return result.difference > 0 if spec.primary.direction == "higher" else result.difference < 0


def _progress(observed: Mapping[str, int], required: Mapping[str, int]) -> str:
    return "units so far " + ", ".join(f"{arm} {observed[arm]:,} of {required[arm]:,} planned" for arm in required)
