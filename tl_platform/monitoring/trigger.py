"""The retrain trigger: what the sensor does with one window's drift and canary results.

``decide`` is the whole rule, pure, so every branch is tested without Dagster. By default a retrain needs both
signals (drift and a canary breach in the same window): drift alone is often benign (new vocabulary the model
handles) and a breach alone may be label noise, so each alone raises an alert, once per window, and no
retrain. A window retrains at most once (its run key is ``retrain-<window>``), never while a retrain runs, and
not within the cooldown after the last one. ``TriggerState`` is what the sensor keeps in its cursor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tl_platform.validation import require

Requirement = Literal["both", "drift", "canary"]
Action = Literal["retrain", "alert", "skip"]
CANARY_STATUSES = ("holds", "breach", "insufficient_labels")
MAX_WINDOW_CHARS = 128
REMEMBERED = 64  # windows kept in the cursor: far more than a cooldown's worth of daily windows, and small


@dataclass(frozen=True)
class WindowSignals:
    """One window's two results; None where that result is missing (its partition has not materialised).

    ``canary`` is the canary's status (``holds``, ``breach`` or ``insufficient_labels``); the summaries are the
    one-line descriptions people read in the decision's reasons and alerts.
    """

    window: str
    drift: bool | None
    canary: str | None
    drift_summary: str = ""
    canary_summary: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(isinstance(self.window, str) and 1 <= len(self.window) <= MAX_WINDOW_CHARS,
                f"WindowSignals.window must be a string of 1 to {MAX_WINDOW_CHARS} characters, got {self.window!r}")
        require(self.drift is None or isinstance(self.drift, bool),
                f"WindowSignals.drift must be true, false or None (missing), got {self.drift!r}")
        require(self.canary is None or self.canary in CANARY_STATUSES,
                f"WindowSignals.canary must be one of {', '.join(CANARY_STATUSES)} or None (missing), got {self.canary!r}")


@dataclass(frozen=True)
class TriggerPolicy:
    """When a window's signals start a retrain.

    Attributes:
        require: ``both`` (default): drift AND a canary breach, the high-precision trigger; ``drift`` or
            ``canary``: that signal alone (the other then only alerts).
        cooldown_hours: no retrain within this many hours of the last one, in [0, 8760]; default 72, time for a
            retrained candidate to go through its A/B test before the loop judges the model again.
        alert_on_single_signal: raise an alert (once per window and signal) when a signal fires without the
            policy's conjunction; default True.
    """

    require: Requirement = "both"
    cooldown_hours: float = 72.0
    alert_on_single_signal: bool = True

    def __post_init__(self) -> None:
        require(self.require in ("both", "drift", "canary"),
                f"TriggerPolicy.require must be 'both', 'drift' or 'canary', got {self.require!r}")
        hours = self.cooldown_hours
        require(isinstance(hours, int | float) and not isinstance(hours, bool) and math.isfinite(hours)
                and 0 <= hours <= 8760, f"TriggerPolicy.cooldown_hours must be in [0, 8760], got {hours!r}")
        require(isinstance(self.alert_on_single_signal, bool),
                f"TriggerPolicy.alert_on_single_signal must be true or false, got {self.alert_on_single_signal!r}")

    @property
    def needs(self) -> tuple[str, ...]:
        return ("drift", "canary") if self.require == "both" else (self.require,)


@dataclass(frozen=True)
class TriggerState:
    """The sensor's memory (its cursor): the last retrain, the windows that retrained, the alerts raised as
    (window, kind) pairs, kind ``drift``, ``canary`` or ``cooldown`` (the latest ``REMEMBERED`` of each), and
    the newest window the rule is done with: windows are partition keys (ISO dates), so the later text is the
    later window, and a sensor judges only the windows after ``last_judged_window``."""

    last_retrain_window: str | None = None
    last_retrain_at: datetime | None = None
    alerted_windows: tuple[tuple[str, str], ...] = ()
    retrained_windows: tuple[str, ...] = ()
    last_judged_window: str | None = None

    def __post_init__(self) -> None:
        require(self.last_retrain_at is None or self.last_retrain_at.utcoffset() is not None,
                "TriggerState.last_retrain_at must be timezone-aware")

    def to_json(self) -> dict[str, Any]:
        return {
            "last_retrain_window": self.last_retrain_window,
            "last_retrain_at": self.last_retrain_at.isoformat() if self.last_retrain_at else None,
            "alerted_windows": [list(pair) for pair in self.alerted_windows],
            "retrained_windows": list(self.retrained_windows),
            "last_judged_window": self.last_judged_window,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TriggerState:
        at = data.get("last_retrain_at")
        return cls(
            last_retrain_window=data.get("last_retrain_window"),
            last_retrain_at=datetime.fromisoformat(at) if at else None,
            alerted_windows=tuple((str(w), str(k)) for w, k in data.get("alerted_windows", ())),
            retrained_windows=tuple(str(w) for w in data.get("retrained_windows", ())),
            last_judged_window=data.get("last_judged_window"),
        )

    def judged(self, window: str) -> TriggerState:
        """This state with ``window`` judged (``last_judged_window`` never moves back)."""
        latest = window if self.last_judged_window is None else max(self.last_judged_window, window)
        return replace(self, last_judged_window=latest)

    def to_cursor(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_cursor(cls, cursor: str | None) -> TriggerState:
        """The state in a sensor cursor; a sensor's first tick has none (None or empty): nothing happened yet."""
        return cls.from_json(json.loads(cursor)) if cursor else cls()


@dataclass(frozen=True)
class TriggerDecision:
    """``retrain`` (request a run with ``run_key``), ``alert`` (raise ``alerts``, no run) or ``skip``; the
    ``reasons`` say what each signal showed and why this action (a SkipReason's text)."""

    action: Action
    reasons: tuple[str, ...]
    run_key: str | None
    alerts: tuple[str, ...]
    new_state: TriggerState

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)


def run_key(window: str) -> str:
    return f"retrain-{window}"


def decide(policy: TriggerPolicy, signals: WindowSignals, state: TriggerState, now: datetime,
           retrain_running: bool) -> TriggerDecision:
    """The action for one window's signals, given what the sensor did before (``state``) and whether a retrain
    run is in progress. The same inputs always give the same decision; acting on it means keeping ``new_state``.

    ``new_state`` marks the window judged, except when a retrain is due but one is running: that window is
    decided again on a later tick, once the run has ended.
    """
    require(now.utcoffset() is not None, f"now must be timezone-aware, got naive {now.isoformat()}")
    window = signals.window
    fired = {"drift": signals.drift is True, "canary": signals.canary == "breach"}
    reasons = [_drift_reason(signals), _canary_reason(signals)]
    if not all(fired[name] for name in policy.needs):
        return _without_retrain(policy, signals, state.judged(window), fired, reasons)
    if window in state.retrained_windows:
        reasons.append(f"no retrain: window {window} already requested one (run key {run_key(window)}); "
                       "a window retrains once")
        return TriggerDecision("skip", tuple(reasons), None, (), state.judged(window))
    if retrain_running:  # not judged: decided again when the run has ended
        reasons.append("no retrain: a retrain run is in progress; the next tick decides again once it ends")
        return TriggerDecision("skip", tuple(reasons), None, (), state)
    state = state.judged(window)
    left = _cooldown_left(policy, state, now)
    if left > timedelta(0):
        held = (f"no retrain: cooldown, the last retrain (window {state.last_retrain_window}) was requested at "
                f"{_iso(state.last_retrain_at)}; {_duration(left)} left of {policy.cooldown_hours:g} h")
        reasons.append(held)
        if (window, "cooldown") in state.alerted_windows:
            return TriggerDecision("skip", tuple(reasons), None, (), state)
        alert = f"window {window}: a retrain is due ({_conjunction(policy)}), held by the cooldown ({_duration(left)} left)"
        new_state = _with_alert(state, window, "cooldown")
        return TriggerDecision("alert", tuple(reasons), None, (alert,), new_state)
    reasons.append(f"retrain: {_conjunction(policy)} in window {window}")
    new_state = replace(state, last_retrain_window=window, last_retrain_at=now.astimezone(UTC),
                        retrained_windows=(*state.retrained_windows, window)[-REMEMBERED:])
    return TriggerDecision("retrain", tuple(reasons), run_key(window), (), new_state)


def _without_retrain(policy: TriggerPolicy, signals: WindowSignals, state: TriggerState, fired: dict[str, bool],
                     reasons: list[str]) -> TriggerDecision:
    window = signals.window
    unmet = [f"{name} ({_state_of(signals, name)})" for name in policy.needs if not fired[name]]
    reasons.append(f"no retrain: the policy (require={policy.require}) needs {_conjunction(policy)}; "
                   f"not met: {', '.join(unmet)}")
    alerts = []
    new_state = state
    for name in ("drift", "canary"):
        if not fired[name]:
            continue
        if not policy.alert_on_single_signal:
            reasons.append(f"{name} fired alone; single-signal alerts are off (alert_on_single_signal=False)")
        elif (window, name) in state.alerted_windows:
            reasons.append(f"{name} fired alone; already alerted for window {window}")
        else:  # the policy's need is unmet, so the other signal is the one missing: say which
            summary = signals.drift_summary if name == "drift" else signals.canary_summary
            what, other = ("drift", "a canary breach") if name == "drift" else ("a canary breach", "drift")
            alerts.append(f"window {window}: {what} without {other}: alert only, no retrain"
                          + (f"; {summary}" if summary else ""))
            new_state = _with_alert(new_state, window, name)
    return TriggerDecision("alert" if alerts else "skip", tuple(reasons), None, tuple(alerts), new_state)


def _drift_reason(signals: WindowSignals) -> str:
    text = {None: f"no result for window {signals.window} yet", True: f"drifted in window {signals.window}",
            False: f"no drift in window {signals.window}"}[signals.drift]
    return f"drift: {text}" + (f" ({signals.drift_summary})" if signals.drift_summary else "")


def _canary_reason(signals: WindowSignals) -> str:
    window = signals.window
    text = {
        None: f"no result for window {window} yet",
        "breach": f"breach in window {window}",
        "holds": f"holds in window {window}",
        "insufficient_labels": f"too few labels in window {window} to judge, neither a breach nor a hold",
    }[signals.canary]
    return f"canary: {text}" + (f" ({signals.canary_summary})" if signals.canary_summary else "")


def _state_of(signals: WindowSignals, name: str) -> str:
    value: object = signals.drift if name == "drift" else signals.canary
    if value is None:
        return "missing"
    if name == "drift":
        return "no drift"
    return "insufficient labels" if value == "insufficient_labels" else str(value)


def _conjunction(policy: TriggerPolicy) -> str:
    names = {"drift": "drift", "canary": "a canary breach"}
    return " and ".join(names[n] for n in policy.needs)


def _with_alert(state: TriggerState, window: str, kind: str) -> TriggerState:
    return replace(state, alerted_windows=(*state.alerted_windows, (window, kind))[-REMEMBERED:])


def _cooldown_left(policy: TriggerPolicy, state: TriggerState, now: datetime) -> timedelta:
    if state.last_retrain_at is None:
        return timedelta(0)
    return max(timedelta(0), state.last_retrain_at + timedelta(hours=policy.cooldown_hours) - now)


def _duration(span: timedelta) -> str:
    minutes = math.ceil(span.total_seconds() / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _iso(moment: datetime | None) -> str:
    return moment.astimezone(UTC).isoformat() if moment is not None else "an unknown time"
