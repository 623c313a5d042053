"""Scores on the frozen eval suite: classification metrics, calibration, linear probes and plots."""
