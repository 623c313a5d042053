"""The retrain trigger, branch by branch: the conjunction, each signal missing, not breached or too thin to
judge, alerts once per window, a window retrained once, a running retrain, the cooldown, the other policies,
and the cursor's JSON round trip."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tl_platform.monitoring.trigger import (
    TriggerPolicy,
    TriggerState,
    WindowSignals,
    decide,
)

NOW = datetime(2025, 3, 4, 6, 0, tzinfo=UTC)
W = "2025-03-01"


def signals(drift: bool | None, canary: str | None, window: str = W) -> WindowSignals:
    return WindowSignals(window, drift, canary, drift_summary="2 of 11 features drifted" if drift else "",
                         canary_summary=f"canary {canary}" if canary else "")


RETRAINED_EARLIER = TriggerState("2025-02-20", datetime(2025, 2, 21, 6, 0, tzinfo=UTC), (), ("2025-02-20",))


@dataclass(frozen=True)
class Case:
    name: str
    signals: WindowSignals
    action: str
    reasons: tuple[str, ...]  # the exact reasons, in order
    alerts: tuple[str, ...] = ()
    policy: TriggerPolicy = field(default_factory=TriggerPolicy)
    state: TriggerState = field(default_factory=TriggerState)
    running: bool = False


DRIFT_YES = f"drift: drifted in window {W} (2 of 11 features drifted)"
DRIFT_NO = f"drift: no drift in window {W}"
DRIFT_MISSING = f"drift: no result for window {W} yet"
CANARY_BREACH = f"canary: breach in window {W} (canary breach)"
CANARY_HOLDS = f"canary: holds in window {W} (canary holds)"
CANARY_THIN = f"canary: too few labels in window {W} to judge, neither a breach nor a hold (canary insufficient_labels)"
CANARY_MISSING = f"canary: no result for window {W} yet"
NEEDS_BOTH = "no retrain: the policy (require=both) needs drift and a canary breach; not met: "
DRIFT_ALERT = f"window {W}: drift without a canary breach: alert only, no retrain; 2 of 11 features drifted"
CANARY_ALERT = f"window {W}: a canary breach without drift: alert only, no retrain; canary breach"

CASES = [
    Case("both fire: retrain", signals(True, "breach"), "retrain",
         (DRIFT_YES, CANARY_BREACH, f"retrain: drift and a canary breach in window {W}")),
    Case("both fire after an earlier retrain's cooldown", signals(True, "breach"), "retrain",
         (DRIFT_YES, CANARY_BREACH, f"retrain: drift and a canary breach in window {W}"), state=RETRAINED_EARLIER),
    Case("drift alone: alert", signals(True, "holds"), "alert", (DRIFT_YES, CANARY_HOLDS, NEEDS_BOTH + "canary (holds)"),
         (DRIFT_ALERT,)),
    Case("canary alone: alert", signals(False, "breach"), "alert",
         (DRIFT_NO, CANARY_BREACH, NEEDS_BOTH + "drift (no drift)"), (CANARY_ALERT,)),
    Case("drift with too few labels: alert, and the canary is neither", signals(True, "insufficient_labels"), "alert",
         (DRIFT_YES, CANARY_THIN, NEEDS_BOTH + "canary (insufficient labels)"), (DRIFT_ALERT,)),
    Case("drift with the canary missing", signals(True, None), "alert",
         (DRIFT_YES, CANARY_MISSING, NEEDS_BOTH + "canary (missing)"), (DRIFT_ALERT,)),
    Case("canary breach with drift missing", signals(None, "breach"), "alert",
         (DRIFT_MISSING, CANARY_BREACH, NEEDS_BOTH + "drift (missing)"), (CANARY_ALERT,)),
    Case("both missing", signals(None, None), "skip",
         (DRIFT_MISSING, CANARY_MISSING, NEEDS_BOTH + "drift (missing), canary (missing)")),
    Case("neither fires", signals(False, "holds"), "skip",
         (DRIFT_NO, CANARY_HOLDS, NEEDS_BOTH + "drift (no drift), canary (holds)")),
    Case("drift alone, already alerted for this window", signals(True, "holds"), "skip",
         (DRIFT_YES, CANARY_HOLDS, NEEDS_BOTH + "canary (holds)", f"drift fired alone; already alerted for window {W}"),
         state=TriggerState(alerted_windows=((W, "drift"),))),
    Case("drift alerted before; the canary now breaches alone", signals(False, "breach"), "alert",
         (DRIFT_NO, CANARY_BREACH, NEEDS_BOTH + "drift (no drift)"), (CANARY_ALERT,),
         state=TriggerState(alerted_windows=((W, "drift"),))),
    Case("drift alone with single-signal alerts off", signals(True, "holds"), "skip",
         (DRIFT_YES, CANARY_HOLDS, NEEDS_BOTH + "canary (holds)",
          "drift fired alone; single-signal alerts are off (alert_on_single_signal=False)"),
         policy=TriggerPolicy(alert_on_single_signal=False)),
    Case("a window retrains once", signals(True, "breach"), "skip",
         (DRIFT_YES, CANARY_BREACH, (f"no retrain: window {W} already requested one (run key retrain-{W}); "
                                    "a window retrains once")),
         state=TriggerState(W, NOW - timedelta(days=10), (), (W,))),
    Case("a retrain is running", signals(True, "breach"), "skip",
         (DRIFT_YES, CANARY_BREACH, "no retrain: a retrain run is in progress; the next tick decides again once it ends"),
         running=True),
    Case("cooldown: alert once that a retrain is held", signals(True, "breach"), "alert",
         (DRIFT_YES, CANARY_BREACH, ("no retrain: cooldown, the last retrain (window 2025-02-28) was requested at "
                                    "2025-03-02T08:30:00+00:00; 26 h 30 min left of 72 h")),
         (f"window {W}: a retrain is due (drift and a canary breach), held by the cooldown (26 h 30 min left)",),
         state=TriggerState("2025-02-28", datetime(2025, 3, 2, 8, 30, tzinfo=UTC), (), ("2025-02-28",))),
    Case("cooldown, already alerted", signals(True, "breach"), "skip",
         (DRIFT_YES, CANARY_BREACH, ("no retrain: cooldown, the last retrain (window 2025-02-28) was requested at "
                                    "2025-03-04T05:59:30+00:00; 72 h 00 min left of 72 h")),
         state=TriggerState("2025-02-28", datetime(2025, 3, 4, 5, 59, 30, tzinfo=UTC), ((W, "cooldown"),), ("2025-02-28",))),
    Case("a zero cooldown never holds", signals(True, "breach"), "retrain",
         (DRIFT_YES, CANARY_BREACH, f"retrain: drift and a canary breach in window {W}"),
         policy=TriggerPolicy(cooldown_hours=0), state=TriggerState("2025-02-28", NOW, (), ("2025-02-28",))),
    Case("require drift: drift alone retrains", signals(True, "holds"), "retrain",
         (DRIFT_YES, CANARY_HOLDS, f"retrain: drift in window {W}"), policy=TriggerPolicy(require="drift")),
    Case("require drift: a breach alone alerts", signals(False, "breach"), "alert",
         (DRIFT_NO, CANARY_BREACH, "no retrain: the policy (require=drift) needs drift; not met: drift (no drift)"),
         (CANARY_ALERT,), policy=TriggerPolicy(require="drift")),
    Case("require canary: a breach alone retrains", signals(None, "breach"), "retrain",
         (DRIFT_MISSING, CANARY_BREACH, f"retrain: a canary breach in window {W}"), policy=TriggerPolicy(require="canary")),
    Case("require canary: too few labels is not a breach", signals(True, "insufficient_labels"), "alert",
         (DRIFT_YES, CANARY_THIN, ("no retrain: the policy (require=canary) needs a canary breach; not met: canary "
                                  "(insufficient labels)")),
         (DRIFT_ALERT,), policy=TriggerPolicy(require="canary")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case) -> None:
    decision = decide(case.policy, case.signals, case.state, NOW, case.running)
    assert decision.action == case.action
    assert decision.reasons == case.reasons
    assert decision.alerts == case.alerts
    assert decision.summary == "; ".join(case.reasons)
    assert decision.run_key == (f"retrain-{W}" if case.action == "retrain" else None)
    judged = replace(case.state, last_judged_window=W)
    if case.action == "retrain":
        assert decision.new_state == replace(judged, last_retrain_window=W, last_retrain_at=NOW,
                                             retrained_windows=(*case.state.retrained_windows, W))
    elif case.action == "alert":
        added = tuple((W, "cooldown" if "held by the cooldown" in alert else "canary" if ": a canary breach" in alert
                       else "drift") for alert in case.alerts)
        assert decision.new_state == replace(judged, alerted_windows=(*case.state.alerted_windows, *added))
    elif case.running:
        assert decision.new_state == case.state  # not judged: decided again once the running retrain ends
    else:
        assert decision.new_state == judged


def test_ticks_over_days_alert_once_retrain_once_and_respect_the_cooldown() -> None:
    """What the sensor sees tick after tick: the state it keeps decides the next tick."""
    policy, state = TriggerPolicy(), TriggerState()
    actions = []
    ticks = [
        (signals(True, None, "d1"), NOW),  # drift first; the canary is not complete yet
        (signals(True, None, "d1"), NOW + timedelta(minutes=1)),  # next tick: nothing new
        (signals(True, "breach", "d1"), NOW + timedelta(hours=48)),  # late labels: the conjunction
        (signals(True, "breach", "d1"), NOW + timedelta(hours=48, minutes=1)),  # the same window again
        (signals(True, "breach", "d2"), NOW + timedelta(hours=72)),  # next window, 24 h later: cooldown
        (signals(True, "breach", "d2"), NOW + timedelta(hours=73)),  # still cooling down, already alerted
        (signals(True, "breach", "d2"), NOW + timedelta(hours=120)),  # 72 h after the retrain
    ]
    for window_signals, now in ticks:
        decision = decide(policy, window_signals, state, now, retrain_running=False)
        actions.append((decision.action, decision.run_key))
        state = TriggerState.from_cursor(decision.new_state.to_cursor())  # through the cursor, as the sensor keeps it
    assert actions == [("alert", None), ("skip", None), ("retrain", "retrain-d1"), ("skip", None), ("alert", None),
                       ("skip", None), ("retrain", "retrain-d2")]
    assert state.retrained_windows == ("d1", "d2") and state.alerted_windows == (("d1", "drift"), ("d2", "cooldown"))
    assert state.last_judged_window == "d2"


def test_the_judged_window_only_moves_forward_and_a_running_retrain_defers_the_window() -> None:
    state = TriggerState(last_judged_window="2025-03-05")
    assert decide(TriggerPolicy(), signals(True, "holds", "2025-03-01"), state, NOW, False).new_state.last_judged_window == (
        "2025-03-05")  # a backfilled older window does not move it back
    assert decide(TriggerPolicy(), signals(False, "holds", "2025-03-06"), state, NOW, False).new_state.last_judged_window == (
        "2025-03-06")
    deferred = decide(TriggerPolicy(), signals(True, "breach", "2025-03-06"), state, NOW, True)
    assert deferred.action == "skip" and deferred.new_state == state
    assert decide(TriggerPolicy(), signals(True, "breach", "2025-03-06"), deferred.new_state, NOW, False).action == "retrain"


def test_the_cursor_round_trips_and_stays_bounded() -> None:
    assert TriggerState.from_cursor(None) == TriggerState() == TriggerState.from_cursor("")
    state = TriggerState("2025-03-01", datetime(2025, 3, 4, 8, 0, tzinfo=timezone(timedelta(hours=2))),
                         (("2025-03-01", "drift"),), ("2025-02-01", "2025-03-01"), "2025-03-02")
    assert TriggerState.from_cursor(state.to_cursor()) == state
    assert state.to_cursor() == ('{"alerted_windows":[["2025-03-01","drift"]],"last_judged_window":"2025-03-02",'
                                 '"last_retrain_at":"2025-03-04T08:00:00+02:00","last_retrain_window":"2025-03-01",'
                                 '"retrained_windows":["2025-02-01","2025-03-01"]}')
    policy = TriggerPolicy(cooldown_hours=0)
    for day in range(100):
        state = decide(policy, signals(True, "breach", f"w{day}"), state, NOW, False).new_state
        state = decide(policy, signals(True, "holds", f"x{day}"), state, NOW, False).new_state
    assert len(state.retrained_windows) == 64 and state.retrained_windows[-1] == "w99"
    assert len(state.alerted_windows) == 64 and state.alerted_windows[-1] == ("x99", "drift")


@pytest.mark.parametrize(("make", "message"), [
    (lambda: TriggerPolicy(require="either"), "TriggerPolicy.require must be 'both', 'drift' or 'canary', got 'either'"),  # type: ignore[arg-type]
    (lambda: TriggerPolicy(cooldown_hours=-1), r"TriggerPolicy.cooldown_hours must be in \[0, 8760\], got -1"),
    (lambda: TriggerPolicy(cooldown_hours=float("nan")), r"TriggerPolicy.cooldown_hours must be in \[0, 8760\], got nan"),
    (lambda: TriggerPolicy(cooldown_hours=True), r"TriggerPolicy.cooldown_hours must be in \[0, 8760\], got True"),
    (lambda: TriggerPolicy(alert_on_single_signal="yes"), "TriggerPolicy.alert_on_single_signal must be true or false"),  # type: ignore[arg-type]
    (lambda: WindowSignals("", True, "breach"), "WindowSignals.window must be a string of 1 to 128 characters, got ''"),
    (lambda: WindowSignals("w" * 129, True, "breach"), "WindowSignals.window must be a string of 1 to 128 characters"),
    (lambda: WindowSignals(W, 1, "breach"), "WindowSignals.drift must be true, false or None \\(missing\\), got 1"),  # type: ignore[arg-type]
    (lambda: WindowSignals(W, True, "bad"), ("WindowSignals.canary must be one of holds, breach, insufficient_labels or "
                                           "None \\(missing\\), got 'bad'")),
    (lambda: TriggerState(last_retrain_at=datetime(2025, 3, 1)), "TriggerState.last_retrain_at must be timezone-aware"),
    (lambda: decide(TriggerPolicy(), signals(True, "breach"), TriggerState(), datetime(2025, 3, 1), False),
     "now must be timezone-aware, got naive 2025-03-01T00:00:00"),
])
def test_bad_inputs_are_refused_by_name(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]
