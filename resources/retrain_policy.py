"""The retrain trigger's rule as a resource: the conjunction, the cooldown, and how windows are waited for."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from tl_platform.monitoring.trigger import TriggerPolicy


class RetrainPolicy(dg.ConfigurableResource):
    """The trigger's rule (validated by ``TriggerPolicy``) and how far back it looks for unjudged windows."""

    require: str = Field(default="both", description="both (drift AND canary breach), drift, or canary")
    cooldown_hours: float = Field(default=72.0, description="no second retrain within this many hours of the last")
    alert_on_single_signal: bool = True
    lateness_hours: float = Field(default=48.0, description="a window is judged only this long after it ends")
    lookback_days: int = Field(default=14, description="windows older than this are not judged any more")
    give_up_hours: float = Field(default=72.0, description="a window still missing a result this long after it is complete is passed over")

    def policy(self) -> TriggerPolicy:
        return TriggerPolicy(
            require=self.require,  # type: ignore[arg-type]
            cooldown_hours=self.cooldown_hours,
            alert_on_single_signal=self.alert_on_single_signal,
        )
