"""The trigger sensor's own parts: which windows are complete, and what an alert route does when it fails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

import definitions
from resources import AlertRoute
from sensors.retrain_trigger import RETRAIN_JOB_NAME, complete_windows


def test_a_window_is_judged_only_after_its_lateness_and_never_twice() -> None:
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    # ends 2026-03-08 00:00 + 48 h = 2026-03-10 00:00 <= now: complete; 03-08 ends 03-09, complete only on 03-11
    assert complete_windows(now, timedelta(hours=48), 3, after=None) == ["2026-03-05", "2026-03-06", "2026-03-07"]
    assert complete_windows(now, timedelta(hours=48), 3, after="2026-03-06") == ["2026-03-07"]
    assert complete_windows(now, timedelta(hours=48), 3, after="2026-03-07") == []


def test_windows_never_start_before_the_partitions_do() -> None:
    now = datetime(2026, 1, 4, tzinfo=UTC)
    assert complete_windows(now, timedelta(hours=0), 30, after=None) == ["2026-01-01", "2026-01-02", "2026-01-03"]


def test_an_unreachable_webhook_is_reported_not_raised_and_no_webhook_says_so() -> None:
    assert AlertRoute().send("t", {}).detail.startswith("no webhook configured")
    delivery = AlertRoute(webhook_url="http://127.0.0.1:9/alerts", timeout_s=0.5).send("t", {"window": "x"})
    assert not delivery.sent and "unreachable" in delivery.detail and "127.0.0.1:9" in delivery.detail


def test_the_sensor_is_registered_stopped_and_targets_the_retrain_job() -> None:
    sensor = definitions.defs.resolve_sensor_def("drift_canary_trigger")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert sensor.job_name == RETRAIN_JOB_NAME
    job = definitions.defs.resolve_job_def(RETRAIN_JOB_NAME)
    assert {key.to_user_string() for key in job.asset_layer.selected_asset_keys} == {"retrained_model", "candidate_model"}
