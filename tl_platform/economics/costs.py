"""Measured compute of each stage, read from its tracked runs, priced with a hardware price table.

A stage run's wall-clock is the span of its MLflow run (start to end). Its device comes from the run's
``tlp.device_type`` and ``tlp.device_count`` tags when the training code sets them; today it sets none, and
the machines this project runs on have no GPU, so an untagged run is taken as CPU with ``cpu_cores`` cores,
and the report says that the device was inferred. Device hours are wall-clock hours times devices (core-hours
on CPU).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

DEVICE_TYPE_TAG = "tlp.device_type"
DEVICE_COUNT_TAG = "tlp.device_count"
STAGE_TAG = "dagster.asset_key"
DAGSTER_RUN_TAG = "dagster.run_id"
MEASURED_STAGES = ("foundation_model", "domain_adapted_model", "task_model")
OPTIONAL_STAGES = ("exported_model",)  # measured when it has run; a plan can stop at the task model
DEVICE_TYPES = ("cpu", "a100", "h100")
INFERRED_CPU = "inferred: the run carries no device tag and the build machines have no GPU"


def require_positive(owner: str, field: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{owner}.{field} must be > 0, got {value}")


def require_non_negative(owner: str, field: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{owner}.{field} must be >= 0, got {value}")


def require_fraction(owner: str, field: str, value: float) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"{owner}.{field} must be in (0, 1], got {value}")


@dataclass(frozen=True)
class PriceTable:
    """Dollars per device-hour; assumptions, not quotes: on-demand cloud list prices of the order of 2025.

    Attributes:
        cpu_core_hour_usd: one CPU core (vCPU) for an hour.
        a100_hour_usd: one NVIDIA A100 80 GB for an hour.
        h100_hour_usd: one NVIDIA H100 80 GB for an hour.
    """

    cpu_core_hour_usd: float = 0.04
    a100_hour_usd: float = 2.0
    h100_hour_usd: float = 3.5

    def __post_init__(self) -> None:
        for field in ("cpu_core_hour_usd", "a100_hour_usd", "h100_hour_usd"):
            require_positive("PriceTable", field, getattr(self, field))

    def per_device_hour(self, device_type: str) -> float:
        prices = {"cpu": self.cpu_core_hour_usd, "a100": self.a100_hour_usd, "h100": self.h100_hour_usd}
        if device_type not in prices:
            raise ValueError(f"device type {device_type!r} has no price; the price table covers {list(DEVICE_TYPES)}")
        return prices[device_type]

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class StageRun:
    """One tracked stage run, as measured: how long it ran and on what."""

    stage: str
    run_id: str
    dagster_run_id: str
    wall_clock_seconds: float
    device_type: str
    device_count: int
    device_source: str
    skipped: bool


@dataclass(frozen=True)
class StageCost:
    run: StageRun
    device_hours: float
    price_per_device_hour_usd: float
    cost_usd: float

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self.run),
            "device_hours": self.device_hours,
            "price_per_device_hour_usd": self.price_per_device_hour_usd,
            "cost_usd": self.cost_usd,
        }


def _device_of(tags: Mapping[str, str], cpu_cores: int, run_id: str) -> tuple[str, int, str]:
    if DEVICE_TYPE_TAG not in tags:
        return "cpu", cpu_cores, INFERRED_CPU
    device = tags[DEVICE_TYPE_TAG].lower()
    if device not in DEVICE_TYPES:
        raise ValueError(f"run {run_id}: tag {DEVICE_TYPE_TAG}={device!r} is not one of {list(DEVICE_TYPES)}")
    raw_count = tags.get(DEVICE_COUNT_TAG, str(cpu_cores) if device == "cpu" else "1")
    if not raw_count.isdigit() or int(raw_count) < 1:
        raise ValueError(f"run {run_id}: tag {DEVICE_COUNT_TAG}={raw_count!r} must be a whole number >= 1")
    return device, int(raw_count), f"tag {DEVICE_TYPE_TAG}"


def select_stage_runs(
    runs: Sequence[Mapping[str, Any]],
    cpu_cores: int,
    stages: Sequence[str] = MEASURED_STAGES,
    dagster_run_id: str | None = None,
    optional: Sequence[str] = OPTIONAL_STAGES,
) -> tuple[StageRun, ...]:
    """The newest finished run of each stage (of one Dagster run when ``dagster_run_id`` is given).

    ``runs`` are the dicts of ``tracking.mlflow_tracker.search_runs``. A stage of ``stages`` with no finished
    run is an error that names it, so a cost report never silently leaves a stage out; a stage of ``optional``
    is measured when it has a finished run.
    """
    require_positive("CostSettings", "cpu_cores", cpu_cores)
    newest: dict[str, Mapping[str, Any]] = {}
    for run in runs:
        tags: Mapping[str, str] = run["tags"]
        stage = tags.get(STAGE_TAG, "")
        if stage not in (*stages, *optional) or run["status"] != "FINISHED" or run["end_time"] is None:
            continue
        if dagster_run_id is not None and tags.get(DAGSTER_RUN_TAG) != dagster_run_id:
            continue
        if stage not in newest or run["start_time"] > newest[stage]["start_time"]:
            newest[stage] = run
    missing = [stage for stage in stages if stage not in newest]
    if missing:
        scope = f" in Dagster run {dagster_run_id}" if dagster_run_id else ""
        raise ValueError(f"no finished tracked run of {missing}{scope}; materialise {', '.join(missing)} first")
    selected = []
    for stage in (*stages, *(o for o in optional if o in newest and o not in stages)):
        run = newest[stage]
        tags = run["tags"]
        device, count, source = _device_of(tags, cpu_cores, str(run["run_id"]))
        selected.append(
            StageRun(
                stage=stage,
                run_id=str(run["run_id"]),
                dagster_run_id=str(tags.get(DAGSTER_RUN_TAG, "")),
                wall_clock_seconds=(int(run["end_time"]) - int(run["start_time"])) / 1000.0,
                device_type=device,
                device_count=count,
                device_source=source,
                skipped=tags.get("skipped") == "true",
            )
        )
    return tuple(selected)


def price_stage_runs(runs: Sequence[StageRun], prices: PriceTable) -> tuple[StageCost, ...]:
    """Device hours (wall-clock hours x devices) times the price of that device for an hour."""
    costs = []
    for run in runs:
        hours = run.wall_clock_seconds / 3600.0 * run.device_count
        price = prices.per_device_hour(run.device_type)
        costs.append(StageCost(run=run, device_hours=hours, price_per_device_hour_usd=price, cost_usd=hours * price))
    return tuple(costs)
