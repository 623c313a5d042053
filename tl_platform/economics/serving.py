"""Serving cost per 1,000 requests, through a frontier-model API or self-hosted, and the crossover between them.

Self-hosting costs a fixed amount a day (the always-on replicas and the people and tooling it adds over an
API: on-call, the monitoring loop, retraining) plus a marginal amount per request (replica time at the
measured throughput and a target utilisation). An API costs a price per request. The crossover is the daily
volume at which they are equal::

    crossover = fixed_daily / (api_per_request - self_host_marginal_per_request)

Below it the API is cheaper, above it self-hosting. When the API is no dearer per request than the marginal
self-hosted request there is no crossover. Counting the always-on replicas as fixed and every request as
marginal overstates self-hosting a little while the load fits inside those replicas; the error favours the API.

The throughput default, 370 requests/s, is the ONNX Runtime INT8 figure measured on a 2-core CPU with
requests batched by 8 (shared/DESIGN.md): an assumption. ``throughput_from_bench`` reads the figure that
``bench/serving_throughput.py --json`` measured over HTTP instead (``tlp report --serving-bench FILE``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tl_platform.economics.costs import PriceTable, require_fraction, require_non_negative, require_positive

DAYS_PER_MONTH = 30.0
HOURS_PER_DAY = 24.0
ASSUMED_THROUGHPUT_SOURCE = (
    "assumed: ONNX INT8, batches of 8, 2-core CPU, from shared/DESIGN.md; to be replaced by the serving benchmark"
)


REPLICA_THROUGHPUT_KEY = "replica_throughput"


def throughput_from_bench(document: Mapping[str, Any], origin: str = "the serving bench") -> tuple[float, str]:
    """(requests/s, where it comes from) out of ``bench/serving_throughput.py --json``'s output.

    Raises ValueError naming the missing or malformed field.
    """
    block = document.get(REPLICA_THROUGHPUT_KEY)
    if not isinstance(block, Mapping):
        raise ValueError(
            f"{origin}: no {REPLICA_THROUGHPUT_KEY!r} object; write it with bench/serving_throughput.py --json "
            "including the int8 scenario"
        )
    rate = block.get("requests_per_second")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"{origin}: {REPLICA_THROUGHPUT_KEY}.requests_per_second must be a positive number, got {rate!r}")
    details = []
    for field, template in (("server", "{}"), ("concurrency", "concurrency {}"), ("rounds", "median of {} rounds"),
                            ("cpu_cores", "{}-core CPU"), ("note", "{}"), ("measured_at", "measured {}")):
        if block.get(field) is not None:
            details.append(template.format(block[field]))
    return float(rate), "measured by bench/serving_throughput.py: " + ", ".join(details)


@dataclass(frozen=True)
class ApiPricing:
    """A frontier model behind an API, priced per token; assumptions of list prices and prompt size.

    Attributes:
        input_tokens_per_request: instructions, a few labelled examples and the text to classify.
        output_tokens_per_request: the label and little else.
        usd_per_million_input_tokens: list price of input tokens.
        usd_per_million_output_tokens: list price of output tokens.
    """

    input_tokens_per_request: float = 400.0
    output_tokens_per_request: float = 10.0
    usd_per_million_input_tokens: float = 3.0
    usd_per_million_output_tokens: float = 15.0

    def __post_init__(self) -> None:
        for field in ("input_tokens_per_request", "output_tokens_per_request"):
            require_non_negative("ApiPricing", field, getattr(self, field))
        for field in ("usd_per_million_input_tokens", "usd_per_million_output_tokens"):
            require_non_negative("ApiPricing", field, getattr(self, field))
        if self.input_tokens_per_request + self.output_tokens_per_request <= 0:
            raise ValueError("ApiPricing: input_tokens_per_request + output_tokens_per_request must be > 0")

    @property
    def usd_per_request(self) -> float:
        return (
            self.input_tokens_per_request * self.usd_per_million_input_tokens
            + self.output_tokens_per_request * self.usd_per_million_output_tokens
        ) / 1e6

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "usd_per_request": self.usd_per_request}


@dataclass(frozen=True)
class SelfHosting:
    """The model served on our own replicas.

    Attributes:
        throughput_requests_per_second: sustained requests a second one replica serves (measured by a benchmark).
        throughput_source: where that figure comes from.
        device: the replica's device type (a key of the price table).
        devices_per_replica: devices (CPU cores or GPUs) per replica.
        target_utilisation: the share of capacity used on average, leaving headroom for peaks, in (0, 1].
        min_replicas: replicas kept running whatever the load (for availability).
        operations_monthly_usd: people and tooling that self-hosting adds over calling an API.
    """

    throughput_requests_per_second: float = 370.0
    throughput_source: str = ASSUMED_THROUGHPUT_SOURCE
    device: str = "cpu"
    devices_per_replica: int = 2
    target_utilisation: float = 0.5
    min_replicas: int = 2
    operations_monthly_usd: float = 5000.0

    def __post_init__(self) -> None:
        require_positive("SelfHosting", "throughput_requests_per_second", self.throughput_requests_per_second)
        require_positive("SelfHosting", "devices_per_replica", self.devices_per_replica)
        require_fraction("SelfHosting", "target_utilisation", self.target_utilisation)
        if self.min_replicas < 1:
            raise ValueError(f"SelfHosting.min_replicas must be >= 1, got {self.min_replicas}")
        require_non_negative("SelfHosting", "operations_monthly_usd", self.operations_monthly_usd)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def crossover_daily_requests(
    fixed_daily_usd: float, api_usd_per_request: float, self_host_marginal_usd_per_request: float
) -> float | None:
    """Daily requests at which the API and self-hosting cost the same; None when the API never costs more."""
    require_non_negative("crossover", "fixed_daily_usd", fixed_daily_usd)
    margin = api_usd_per_request - self_host_marginal_usd_per_request
    if margin <= 0:
        return None
    return fixed_daily_usd / margin


@dataclass(frozen=True)
class ServingCosts:
    """Per-1,000-request prices, the daily costs at the planned volume, and the crossover."""

    daily_requests: float
    api_usd_per_1k: float
    self_host_replica_hourly_usd: float
    self_host_marginal_usd_per_1k: float
    self_host_fixed_daily_usd: float
    self_host_usd_per_1k_at_volume: float
    api_daily_usd: float
    self_host_daily_usd: float
    crossover_daily_requests: float | None
    throughput_requests_per_second: float
    throughput_source: str

    @property
    def cheaper_at_volume(self) -> str:
        return "api" if self.api_daily_usd < self.self_host_daily_usd else "self_host"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "cheaper_at_volume": self.cheaper_at_volume}


def serving_costs(daily_requests: float, api: ApiPricing, hosting: SelfHosting, prices: PriceTable) -> ServingCosts:
    """Both ways of serving priced at ``daily_requests`` a day, with the crossover volume."""
    require_positive("ServingCosts", "daily_requests", daily_requests)
    replica_hourly = prices.per_device_hour(hosting.device) * hosting.devices_per_replica
    served_per_hour = hosting.throughput_requests_per_second * 3600.0 * hosting.target_utilisation
    marginal = replica_hourly / served_per_hour
    fixed_daily = hosting.min_replicas * replica_hourly * HOURS_PER_DAY + hosting.operations_monthly_usd / DAYS_PER_MONTH
    self_host_daily = fixed_daily + daily_requests * marginal
    return ServingCosts(
        daily_requests=daily_requests,
        api_usd_per_1k=api.usd_per_request * 1000.0,
        self_host_replica_hourly_usd=replica_hourly,
        self_host_marginal_usd_per_1k=marginal * 1000.0,
        self_host_fixed_daily_usd=fixed_daily,
        self_host_usd_per_1k_at_volume=self_host_daily / daily_requests * 1000.0,
        api_daily_usd=daily_requests * api.usd_per_request,
        self_host_daily_usd=self_host_daily,
        crossover_daily_requests=crossover_daily_requests(fixed_daily, api.usd_per_request, marginal),
        throughput_requests_per_second=hosting.throughput_requests_per_second,
        throughput_source=hosting.throughput_source,
    )
