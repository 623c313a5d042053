"""The 12-month ROI model: breakeven and year-1 ROI for the representative defaults, the ramp, the sensitivity."""

from __future__ import annotations

import pytest

from tl_platform.economics.roi import RoiInputs, roi_curve, roi_from_cost_report, roi_model, value_ramp


def test_representative_defaults_break_even_in_month_5() -> None:
    inputs = RoiInputs(monitoring_owner="ml-platform on-call")
    assert (inputs.setup_cost_usd, inputs.monthly_cost_usd) == (80_000.0, 6_000.0)
    assert (inputs.value_first_month_usd, inputs.value_full_usd, inputs.ramp_months) == (5_000.0, 50_000.0, 6)
    result = roi_model(inputs)
    assert result.base.breakeven_month == 5
    assert result.base.cumulative_net[:6] == pytest.approx((-81_000, -73_000, -56_000, -30_000, 5_000, 49_000))
    assert result.base.total_value == pytest.approx(465_000)
    assert result.base.total_cost == pytest.approx(152_000)
    assert result.base.year_one_roi == pytest.approx(2.05921, abs=1e-5)  # (465k - 152k) / 152k


def test_value_halved_breaks_even_in_month_8() -> None:
    result = roi_model(RoiInputs(monitoring_owner="team"))
    halved = result.value_halved
    assert halved.value_scale == 0.5
    assert halved.breakeven_month == 8
    assert halved.cumulative_net[6:8] == pytest.approx((-14_500, 4_500))
    assert halved.year_one_roi == pytest.approx(0.52961, abs=1e-5)  # (232.5k - 152k) / 152k


def test_value_ramps_linearly_then_holds() -> None:
    assert value_ramp(RoiInputs("o")) == pytest.approx((5e3, 14e3, 23e3, 32e3, 41e3, 50e3, 50e3, 50e3, 50e3, 50e3, 50e3, 50e3))
    assert value_ramp(RoiInputs("o", ramp_months=1, horizon_months=3)) == (50e3, 50e3, 50e3)


def test_no_breakeven_within_the_horizon_is_none() -> None:
    curve = roi_curve(RoiInputs("o", value_first_month_usd=1_000, value_full_usd=7_000))
    assert curve.breakeven_month is None
    assert curve.year_one_roi < 0


def test_costs_come_from_the_cost_report_unless_given() -> None:
    record = {"setup_cost_usd": 80_000.01, "monthly_running_cost_usd": 5_115.24}
    from_report = roi_from_cost_report(record, monitoring_owner="o")
    assert (from_report.inputs.setup_cost_usd, from_report.inputs.monthly_cost_usd) == (80_000.01, 5_115.24)
    assert from_report.cost_source == "setup from the cost report, monthly from the cost report"
    assert from_report.base.breakeven_month == 5
    overridden = roi_from_cost_report(record, monitoring_owner="o", monthly_cost_usd=6_000.0, ramp_months=3)
    assert overridden.inputs.monthly_cost_usd == 6_000.0 and overridden.inputs.ramp_months == 3
    assert overridden.cost_source == "setup from the cost report, monthly from config"


def test_record_holds_both_curves() -> None:
    payload = roi_model(RoiInputs("o")).to_json()
    assert payload["inputs"]["monitoring_owner"] == "o"
    assert payload["base"]["breakeven_month"] == 5 and payload["value_halved"]["breakeven_month"] == 8
    assert len(payload["base"]["cumulative_net"]) == 12


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"monitoring_owner": "  "}, r"RoiInputs\.monitoring_owner is required: name who owns the monitoring loop"),
        ({"setup_cost_usd": -1.0}, r"RoiInputs\.setup_cost_usd must be >= 0, got -1\.0"),
        ({"value_full_usd": -5.0}, r"RoiInputs\.value_full_usd must be >= 0, got -5\.0"),
        ({"horizon_months": 0}, r"RoiInputs\.horizon_months must be in \[1, 120\], got 0"),
        ({"ramp_months": 13}, r"RoiInputs\.ramp_months must be in \[1, horizon_months=12\], got 13"),
        ({"setup_cost_usd": 0.0, "monthly_cost_usd": 0.0}, r"setup_cost_usd \+ monthly_cost_usd must be > 0"),
    ],
)
def test_bad_inputs_name_the_field_and_range(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoiInputs(**{"monitoring_owner": "o", **fields})  # type: ignore[arg-type]


def test_negative_value_scale_is_refused() -> None:
    with pytest.raises(ValueError, match=r"value_scale must be >= 0, got -1"):
        roi_curve(RoiInputs("o"), value_scale=-1)
