"""Sensors for signals from outside the asset graph (monitor results, experiment outcomes).

None yet: the monitoring loop that feeds them lands with the monitoring stage.
"""

SENSORS: list[object] = []
