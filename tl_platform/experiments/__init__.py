"""Experiments on served models: who may move the registry's champion and challenger aliases, and why."""
