"""The high-precision retrain trigger: drift AND a canary breach in the same window request a retrain.

Reads the results of the daily monitor partitions (``feature_drift``, ``canary_accuracy``) window by window,
oldest unjudged first, and applies the conjunction rule of ``tl_platform.monitoring.trigger``. One signal
alone raises an alert (a log line, a webhook if configured; the asset checks already warn) and no retrain.
The cursor holds the last judged window, the last retrain and the windows already alerted, so a window
never retrains twice and an alert is not repeated every tick; the run key (one per window) makes a repeated
request a no-op even if the cursor were lost.
"""

# No `from __future__ import annotations`: Dagster reads the resource annotations at runtime.

import json
import os
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg

from assets.monitoring_partitions import MONITOR_PARTITIONS, day_bounds
from resources.alerts import AlertRoute
from resources.retrain_policy import RetrainPolicy
from tl_platform.monitoring.trigger import TriggerState, WindowSignals, decide

RETRAIN_JOB_NAME = "retrain_job"
TRIGGER_SENSOR_NAME = "drift_canary_trigger"


def tick_interval_s(environ: dict[str, str] | os._Environ[str] = os.environ) -> int:
    """Seconds between the daemon's evaluations of the trigger: TLP_TRIGGER_INTERVAL_S, default 300."""
    raw = environ.get("TLP_TRIGGER_INTERVAL_S", "300")
    if not raw.strip().isdigit() or not 1 <= int(raw) <= 86_400:
        raise ValueError(f"TLP_TRIGGER_INTERVAL_S must be a whole number of seconds in [1, 86400], got {raw!r}")
    return int(raw)

ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]

retrain_job = dg.define_asset_job(
    RETRAIN_JOB_NAME,
    selection=dg.AssetSelection.assets("retrained_model", "candidate_model"),
    partitions_def=MONITOR_PARTITIONS,
    description="Retrain on one window's fresh labelled traffic plus replay, then export the candidate through its gates.",
)


def complete_windows(now: datetime, lateness: timedelta, lookback_days: int, after: str | None) -> list[str]:
    """Day windows (oldest first) that ended at least ``lateness`` ago, within the lookback, after ``after``."""
    newest = (now - lateness).date() - timedelta(days=1)
    oldest = max(newest - timedelta(days=lookback_days - 1), date.fromisoformat(MONITOR_PARTITIONS.start.strftime("%Y-%m-%d")))
    if after is not None:
        oldest = max(oldest, date.fromisoformat(after) + timedelta(days=1))
    days = (newest - oldest).days + 1
    return [(oldest + timedelta(days=i)).isoformat() for i in range(max(days, 0))]


def latest_metadata(instance: dg.DagsterInstance, asset: str, window: str | None = None) -> dict[str, Any] | None:
    """The metadata of the newest materialisation of ``asset`` (for the window, if given) as plain values; None if
    there is none."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[window] if window else None), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    return {key: value.value for key, value in records[0].asset_materialization.metadata.items()}


def window_signals(instance: dg.DagsterInstance, window: str) -> WindowSignals:
    drift = latest_metadata(instance, "feature_drift", window)
    canary = latest_metadata(instance, "canary_accuracy", window)
    if canary is not None and canary.get("complete") is False:
        canary = None  # scored before its late labels could arrive; the next re-materialisation counts them
    return WindowSignals(
        window=window,
        drift=None if drift is None or drift.get("drift_status") == "insufficient_data" else bool(drift.get("drifted")),
        canary=None if canary is None else str(canary.get("canary_status")),
        drift_summary=str(drift.get("summary", "")) if drift else "feature_drift not materialised for this window",
        canary_summary=str(canary.get("summary", "")) if canary else "canary_accuracy not materialised for this window",
        details={"drifted_features": drift.get("drifted_features") if drift else None,
                 "canary_accuracy": canary.get("accuracy") if canary else None},
    )


@dg.sensor(
    name=TRIGGER_SENSOR_NAME,
    job=retrain_job,
    minimum_interval_seconds=tick_interval_s(),
    # Stopped until someone turns it on (UI, or `dagster sensor start drift_canary_trigger`): a new deployment
    # has no monitor results yet, and a retrain costs training time; see the README's monitoring section.
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests retrained_model + candidate_model for a window when drift AND the canary breach together.",
)
def drift_canary_trigger(
    context: dg.SensorEvaluationContext, retrain_policy: RetrainPolicy, alerts: AlertRoute
) -> dg.SensorResult | dg.SkipReason:
    return evaluate_trigger(context, retrain_policy, alerts, datetime.now(UTC))


def evaluate_trigger(
    context: dg.SensorEvaluationContext, retrain_policy: RetrainPolicy, alerts: AlertRoute, now: datetime
) -> dg.SensorResult | dg.SkipReason:
    """One tick of the trigger as of ``now``: the daemon passes the clock; a simulation passes its simulated time."""
    policy = retrain_policy.policy()
    state = TriggerState.from_json(json.loads(context.cursor)) if context.cursor else TriggerState()
    windows = complete_windows(
        now, timedelta(hours=retrain_policy.lateness_hours), retrain_policy.lookback_days, state.last_judged_window
    )
    if not windows:
        return dg.SkipReason(f"no complete window after {state.last_judged_window or 'the start'} yet "
                             f"(a window is judged {retrain_policy.lateness_hours:g} h after it ends)")
    running = bool(context.instance.get_run_records(dg.RunsFilter(job_name=RETRAIN_JOB_NAME, statuses=ACTIVE_STATUSES), limit=1))
    requests: list[dg.RunRequest] = []
    skipped: list[str] = []
    for window in windows:
        signals = window_signals(context.instance, window)
        _, window_end = day_bounds(window)
        missing = signals.drift is None or signals.canary is None
        if missing and now - window_end < timedelta(hours=retrain_policy.lateness_hours + retrain_policy.give_up_hours):
            skipped.append(f"window {window}: waiting for {_missing_signals(signals)}")
            break  # judge windows in order: a later one waits for this one
        # a retrain requested earlier in this tick is in the new state: later windows meet its cooldown
        decision = decide(policy, signals, state, now, retrain_running=running)
        state = decision.new_state
        for alert in decision.alerts:
            context.log.warning(f"tlp alert: {alert}")
            delivery = alerts.send(f"tl_platform monitoring alert for {window}", {"window": window, "alert": alert})
            if not delivery.sent and alerts.webhook_url:
                context.log.error(f"alert for {window} not delivered: {delivery.detail}")
        if decision.action == "retrain" and decision.run_key is not None:
            requests.append(dg.RunRequest(
                run_key=decision.run_key,
                partition_key=window,
                tags={"tlp/trigger_window": window, "tlp/drift_summary": signals.drift_summary[:4000],
                      "tlp/canary_summary": signals.canary_summary[:4000],
                      "tlp/trigger_reasons": "; ".join(decision.reasons)[:4000]},
            ))
        skipped.append(f"window {window}: {decision.action}: {'; '.join(decision.reasons)}")
    cursor = json.dumps(state.to_json(), sort_keys=True)
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=cursor)
    context.update_cursor(cursor)
    return dg.SkipReason(" | ".join(skipped))


def _missing_signals(signals: WindowSignals) -> str:
    names = [name for name, value in (("feature_drift", signals.drift), ("canary_accuracy", signals.canary)) if value is None]
    return " and ".join(names) + " (not materialised yet, scored before its lateness passed, or too little traffic to judge)"
