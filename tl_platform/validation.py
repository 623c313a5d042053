"""Validation of config values: one rule, one message that names the field and what is allowed."""

from __future__ import annotations


def require(condition: bool, message: str) -> None:
    """Raise ValueError(message) unless ``condition`` holds."""
    if not condition:
        raise ValueError(message)
