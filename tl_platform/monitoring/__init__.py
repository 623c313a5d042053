"""Monitoring: the features every prediction is logged with, and (later) drift tests over them."""
