"""A 12-month return-on-investment model: setup cost, monthly running cost and a value ramp.

The setup cost is paid at month 0. In month m the model earns ``value(m)`` and costs the monthly running
cost; value ramps linearly from ``value_first_month_usd`` in month 1 to ``value_full_usd`` in month
``ramp_months`` and stays there. The breakeven month is the first month whose cumulative net (value less
running costs less setup) is at or above zero. Year-1 ROI is (total value - total cost) / total cost over the
horizon. The sensitivity line halves the value and keeps the costs.

With the representative defaults (setup $80k, $6k a month, value from $5k in month 1 to $50k in month 6)
breakeven falls in month 5 and year-1 ROI is 205.9 %; with the value halved, month 8 and 53.0 %.

The monitoring loop's owner is a required input: the value line assumes someone watches drift, the canary and
the retrains; an unowned loop lets accuracy, and the value with it, erode before breakeven.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tl_platform.economics.costs import require_non_negative


@dataclass(frozen=True)
class RoiInputs:
    """Attributes:
    monitoring_owner: the person or team who owns the monitoring loop (drift, canary, retrain); required.
    setup_cost_usd: one-off cost before month 1.
    monthly_cost_usd: running cost every month.
    value_first_month_usd: value delivered in month 1.
    value_full_usd: value a month once ramped up.
    ramp_months: the month in which value reaches ``value_full_usd`` (1 = from the start), 1 to horizon.
    horizon_months: months modelled, 1 to 120.
    """

    monitoring_owner: str
    setup_cost_usd: float = 80_000.0
    monthly_cost_usd: float = 6_000.0
    value_first_month_usd: float = 5_000.0
    value_full_usd: float = 50_000.0
    ramp_months: int = 6
    horizon_months: int = 12

    def __post_init__(self) -> None:
        if not self.monitoring_owner.strip():
            raise ValueError(
                "RoiInputs.monitoring_owner is required: name who owns the monitoring loop (drift, canary, retrain)"
            )
        for name in ("setup_cost_usd", "monthly_cost_usd", "value_first_month_usd", "value_full_usd"):
            require_non_negative("RoiInputs", name, getattr(self, name))
        if not 1 <= self.horizon_months <= 120:
            raise ValueError(f"RoiInputs.horizon_months must be in [1, 120], got {self.horizon_months}")
        if not 1 <= self.ramp_months <= self.horizon_months:
            raise ValueError(
                f"RoiInputs.ramp_months must be in [1, horizon_months={self.horizon_months}], got {self.ramp_months}"
            )
        if self.setup_cost_usd + self.monthly_cost_usd <= 0:
            raise ValueError("RoiInputs: setup_cost_usd + monthly_cost_usd must be > 0 for an ROI to exist")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RoiCurve:
    """Month by month (1..horizon): value, cost and cumulative net; breakeven month None when not reached."""

    value_scale: float
    monthly_value: tuple[float, ...]
    monthly_cost: tuple[float, ...]
    cumulative_net: tuple[float, ...]
    breakeven_month: int | None
    total_value: float
    total_cost: float

    @property
    def year_one_roi(self) -> float:
        return (self.total_value - self.total_cost) / self.total_cost

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "year_one_roi": self.year_one_roi}


@dataclass(frozen=True)
class RoiResult:
    inputs: RoiInputs
    base: RoiCurve
    value_halved: RoiCurve
    cost_source: str

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs.to_json(),
            "base": self.base.to_json(),
            "value_halved": self.value_halved.to_json(),
            "cost_source": self.cost_source,
        }


def value_ramp(inputs: RoiInputs) -> tuple[float, ...]:
    """Value in months 1..horizon: linear from the first month's to the full value at ``ramp_months``."""
    values = []
    for month in range(1, inputs.horizon_months + 1):
        if month >= inputs.ramp_months:
            values.append(inputs.value_full_usd)
        else:
            step = (inputs.value_full_usd - inputs.value_first_month_usd) / (inputs.ramp_months - 1)
            values.append(inputs.value_first_month_usd + step * (month - 1))
    return tuple(values)


def roi_curve(inputs: RoiInputs, value_scale: float = 1.0) -> RoiCurve:
    """The cumulative net by month with the value multiplied by ``value_scale``."""
    if value_scale < 0:
        raise ValueError(f"value_scale must be >= 0, got {value_scale}")
    values = tuple(v * value_scale for v in value_ramp(inputs))
    costs = (inputs.monthly_cost_usd,) * inputs.horizon_months
    cumulative = []
    running = -inputs.setup_cost_usd
    for value, cost in zip(values, costs, strict=True):
        running += value - cost
        cumulative.append(running)
    breakeven = next((month for month, net in enumerate(cumulative, start=1) if net >= 0), None)
    return RoiCurve(
        value_scale=value_scale,
        monthly_value=values,
        monthly_cost=costs,
        cumulative_net=tuple(cumulative),
        breakeven_month=breakeven,
        total_value=sum(values),
        total_cost=inputs.setup_cost_usd + sum(costs),
    )


def roi_model(inputs: RoiInputs, cost_source: str = "given") -> RoiResult:
    """The base curve and the sensitivity line with value halved."""
    return RoiResult(inputs=inputs, base=roi_curve(inputs), value_halved=roi_curve(inputs, 0.5), cost_source=cost_source)


def roi_from_cost_report(
    cost_record: Mapping[str, Any],
    monitoring_owner: str,
    setup_cost_usd: float | None = None,
    monthly_cost_usd: float | None = None,
    **ramp: Any,
) -> RoiResult:
    """The ROI model with setup and monthly costs from a cost report record unless given; ``ramp`` holds the
    value fields of ``RoiInputs``."""
    setup = float(cost_record["setup_cost_usd"]) if setup_cost_usd is None else setup_cost_usd
    monthly = float(cost_record["monthly_running_cost_usd"]) if monthly_cost_usd is None else monthly_cost_usd
    source = ", ".join(
        f"{name} from {'config' if given is not None else 'the cost report'}"
        for name, given in (("setup", setup_cost_usd), ("monthly", monthly_cost_usd))
    )
    inputs = RoiInputs(monitoring_owner=monitoring_owner, setup_cost_usd=setup, monthly_cost_usd=monthly, **ramp)
    return roi_model(inputs, cost_source=source)
