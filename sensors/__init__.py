"""Sensors: signals from outside the asset graph (monitor results) that start runs."""

from sensors.retrain_trigger import drift_canary_trigger, retrain_job

SENSORS = [drift_canary_trigger]

__all__ = ["SENSORS", "drift_canary_trigger", "retrain_job"]
