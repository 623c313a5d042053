"""Monitoring: the features every prediction is logged with, each model's reference, drift tests, the labelled
canary, and the rule that turns both into a retrain."""
