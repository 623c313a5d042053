"""The labelled canary: the served model's accuracy on one window's feedback labels, against the service's SLO.

``score_canary`` takes the labelled rows of a window (``PredictionLog.labelled_window``: ``predicted``,
``true_label`` and optionally slice columns or an ``attributes`` column) and returns a ``CanaryResult``: the
accuracy with a Wilson interval and a status, ``holds``, ``breach`` or ``insufficient_labels``. Too few labels
give ``insufficient_labels`` with no accuracy and no interval at all: a number from a handful of labels looks
like a measurement and is not one. A window is ``complete`` once its lateness has passed; until then labels may
still arrive, and scoring it again later (with them) is the way to handle late feedback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

from tl_platform.validation import require

if TYPE_CHECKING:
    import pandas as pd

CanaryStatus = Literal["holds", "breach", "insufficient_labels"]
BreachRule = Literal["upper_below_slo", "point_below_slo"]
HOLDS: CanaryStatus = "holds"
BREACH: CanaryStatus = "breach"
INSUFFICIENT: CanaryStatus = "insufficient_labels"
WINDOW_DAYS = (1, 7)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` at ``confidence`` (two-sided).

    Unlike the normal approximation it stays inside [0, 1] and keeps its coverage near 0 and 1, which is where
    a canary's accuracy lives.
    """
    for name, value in (("successes", successes), ("n", n)):
        require(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer, got {value!r}")
    require(n >= 1, f"n must be at least 1, got {n}")
    require(0 <= successes <= n, f"successes must be in [0, n={n}], got {successes}")
    require(0.0 < confidence < 1.0, f"confidence must be in (0, 1), got {confidence}")
    z = -NormalDist().inv_cdf((1.0 - confidence) / 2.0)  # the upper quantile, computed from the small tail
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denominator
    # at 0 or n successes the bound is exactly 0 or 1; the subtraction leaves a rounding residue instead
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class CanaryConfig:
    """How the canary judges a window.

    Attributes:
        slo: the service's accuracy objective, in (0, 1); default 0.85.
        confidence: of the Wilson interval, in [0.5, 0.999]; default 0.95.
        min_labels: fewest labels in a window to report an accuracy at all, in [1, 10000000]. Default 100: at 100
            labels the 95% interval around 0.85 is about +-0.07 wide, and the default rule calls a breach once
            30 labels are wrong or more (accuracy 0.78 or lower); with fewer labels a "holds" would say nothing.
        min_slice_labels: the same floor for each slice, in [1, 10000000]; default 30 (a slice breaches
            confidently at accuracy 0.70 or lower).
        window_days: 1 (the partition's day) or 7 (that day and the six before it, for low-traffic services).
        lateness_hours: how long after a window ends its labels may still arrive, in [0, 720]; default 48. The
            window is ``complete`` after that, and the trigger acts only on complete windows.
        breach_rule: ``upper_below_slo`` (default): a breach is confident, the interval's upper bound is below
            the SLO, so sampling noise alone breaches in at most (1 - confidence) / 2 of windows of a model that
            meets the SLO. ``point_below_slo``: the observed accuracy below the SLO; sooner, and noisier.
        max_slices: most values reported per slice key, the ones with most labels, in [1, 1000]; the number left
            out is reported, so a key with thousands of tenants keeps the result small.
    """

    slo: float = 0.85
    confidence: float = 0.95
    min_labels: int = 100
    min_slice_labels: int = 30
    window_days: int = 1
    lateness_hours: float = 48.0
    breach_rule: BreachRule = "upper_below_slo"
    max_slices: int = 50

    def __post_init__(self) -> None:
        require(_real(self.slo) and 0.0 < self.slo < 1.0, f"CanaryConfig.slo must be in (0, 1), got {self.slo!r}")
        require(_real(self.confidence) and 0.5 <= self.confidence <= 0.999,
                f"CanaryConfig.confidence must be in [0.5, 0.999], got {self.confidence!r}")
        for name, high in (("min_labels", 10_000_000), ("min_slice_labels", 10_000_000), ("max_slices", 1000)):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= high,
                    f"CanaryConfig.{name} must be an integer in [1, {high}], got {value!r}")
        require(self.window_days in WINDOW_DAYS and not isinstance(self.window_days, bool),
                f"CanaryConfig.window_days must be 1 (daily) or 7 (weekly), got {self.window_days!r}")
        require(_real(self.lateness_hours) and 0.0 <= self.lateness_hours <= 720.0,
                f"CanaryConfig.lateness_hours must be in [0, 720], got {self.lateness_hours!r}")
        require(self.breach_rule in ("upper_below_slo", "point_below_slo"),
                f"CanaryConfig.breach_rule must be 'upper_below_slo' or 'point_below_slo', got {self.breach_rule!r}")

    @property
    def lateness(self) -> timedelta:
        return timedelta(hours=self.lateness_hours)


def _real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def window_bounds(partition_day: date, window_days: int) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the window a day partition judges: it ends at the end of ``partition_day`` and
    spans the ``window_days`` days up to it (7: the partition's day and the six before)."""
    require(isinstance(window_days, int) and not isinstance(window_days, bool) and 1 <= window_days <= 366,
            f"window_days must be an integer in [1, 366], got {window_days!r}")
    end = datetime.combine(partition_day + timedelta(days=1), time(0), tzinfo=UTC)
    return end - timedelta(days=window_days), end


def is_complete(window_end: datetime, now: datetime, lateness: timedelta) -> bool:
    """Whether labels of a window ending at ``window_end`` can no longer be late at ``now``."""
    return _aware(now, "now") >= _aware(window_end, "window_end") + lateness


def _aware(moment: datetime, name: str) -> datetime:
    require(moment.utcoffset() is not None, f"{name} must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Judgement:
    """Accuracy against the SLO of one group of labels (the window, or one slice)."""

    n_labelled: int
    correct: int
    accuracy: float | None  # None with fewer labels than the floor: never a number that looks like a measurement
    ci_low: float | None
    ci_high: float | None
    status: CanaryStatus


def judge(correct: int, n_labelled: int, min_labels: int, config: CanaryConfig) -> Judgement:
    if n_labelled < min_labels:
        return Judgement(n_labelled, correct, None, None, None, INSUFFICIENT)
    accuracy = correct / n_labelled
    low, high = wilson_interval(correct, n_labelled, config.confidence)
    below = high < config.slo if config.breach_rule == "upper_below_slo" else accuracy < config.slo
    return Judgement(n_labelled, correct, accuracy, low, high, BREACH if below else HOLDS)


def describe(judgement: Judgement, min_labels: int, floor_name: str, config: CanaryConfig) -> str:
    """A sentence a person reads: the status first, then the numbers that decided it."""
    j = judgement
    if j.accuracy is None or j.ci_low is None or j.ci_high is None:
        return (f"insufficient labels: {j.n_labelled} labelled, fewer than the {min_labels} needed ({floor_name}); "
                "no accuracy is reported")
    level = f"{config.confidence:.0%}"
    numbers = f"accuracy {j.accuracy:.3f} on {j.n_labelled} labels ({level} Wilson interval {j.ci_low:.3f} to {j.ci_high:.3f})"
    if j.status == BREACH and config.breach_rule == "upper_below_slo":
        return f"breach: {numbers}; even the upper bound is below the SLO {config.slo:g}"
    if j.status == BREACH:
        return f"breach: {numbers} is below the SLO {config.slo:g}"
    if j.accuracy < config.slo:
        return f"holds: {numbers} is below the SLO {config.slo:g} but not confidently (the interval reaches it)"
    return f"holds: {numbers} meets the SLO {config.slo:g}"


@dataclass(frozen=True)
class SliceResult:
    """The canary of the rows whose attribute ``key`` is ``value`` (None: rows without that attribute)."""

    key: str
    value: str | None
    n_labelled: int
    correct: int
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    status: CanaryStatus
    message: str

    @property
    def name(self) -> str:
        return f"{self.key}={self.value if self.value is not None else '(none)'}"


@dataclass(frozen=True)
class CanaryResult:
    """One window's canary. ``accuracy``, ``ci_low`` and ``ci_high`` are None unless ``status`` is holds or breach."""

    window_start: datetime
    window_end: datetime
    n_labelled: int
    correct: int
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    slo: float
    confidence: float
    status: CanaryStatus
    complete: bool
    complete_at: datetime
    message: str
    slices: tuple[SliceResult, ...] = ()
    slices_omitted: Mapping[str, int] = field(default_factory=dict)  # per key: values beyond max_slices

    def __post_init__(self) -> None:
        require(self.status in (HOLDS, BREACH, INSUFFICIENT),
                f"status must be holds, breach or insufficient_labels, got {self.status!r}")
        numbers = (self.accuracy, self.ci_low, self.ci_high)
        judged = self.status != INSUFFICIENT
        require(all(v is not None for v in numbers) if judged else all(v is None for v in numbers),
                f"accuracy and its interval are given exactly when the status is holds or breach (status {self.status})")

    @property
    def window(self) -> str:
        """The window as an ISO 8601 interval, ``start/end``."""
        return f"{self.window_start.isoformat()}/{self.window_end.isoformat()}"

    @property
    def breached(self) -> bool:
        return self.status == BREACH

    def to_json(self) -> dict[str, Any]:
        return {
            "window_start": self.window_start.isoformat(), "window_end": self.window_end.isoformat(),
            "n_labelled": self.n_labelled, "correct": self.correct, "accuracy": self.accuracy,
            "ci_low": self.ci_low, "ci_high": self.ci_high, "slo": self.slo, "confidence": self.confidence,
            "status": self.status, "complete": self.complete, "complete_at": self.complete_at.isoformat(),
            "message": self.message, "slices": [vars(s) for s in self.slices],
            "slices_omitted": dict(self.slices_omitted),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CanaryResult:
        return cls(
            window_start=datetime.fromisoformat(data["window_start"]),
            window_end=datetime.fromisoformat(data["window_end"]),
            n_labelled=int(data["n_labelled"]), correct=int(data["correct"]), accuracy=data["accuracy"],
            ci_low=data["ci_low"], ci_high=data["ci_high"], slo=float(data["slo"]), confidence=float(data["confidence"]),
            status=data["status"], complete=bool(data["complete"]),
            complete_at=datetime.fromisoformat(data["complete_at"]), message=str(data["message"]),
            slices=tuple(SliceResult(**s) for s in data.get("slices", ())),
            slices_omitted={str(k): int(v) for k, v in data.get("slices_omitted", {}).items()},
        )


def score_canary(
    labelled: pd.DataFrame,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
    config: CanaryConfig,
    slice_keys: Sequence[str] = (),
) -> CanaryResult:
    """Score the labelled rows of ``[window_start, window_end)`` against ``config.slo``, overall and per slice.

    ``labelled`` needs ``predicted`` and ``true_label``; rows without a true label are not labels and are left
    out. A slice key is a column of ``labelled`` or, failing that, a key of its ``attributes`` dicts (rows
    without it form the slice with value None). A ``ts`` column, when present, must lie inside the window.
    """
    start, end, at = _aware(window_start, "window_start"), _aware(window_end, "window_end"), _aware(now, "now")
    require(start < end, f"window_start must be before window_end, got {start.isoformat()} and {end.isoformat()}")
    missing = [c for c in ("predicted", "true_label") if c not in labelled.columns]
    require(not missing, f"labelled needs the columns predicted and true_label; missing {missing}")
    rows = labelled[labelled["true_label"].notna()]
    if "ts" in rows.columns and len(rows):
        import pandas as pd

        ts = pd.to_datetime(rows["ts"], utc=True)
        outside = int(((ts < pd.Timestamp(start)) | (ts >= pd.Timestamp(end))).sum())
        require(outside == 0, f"labelled: {outside} rows lie outside the window [{start.isoformat()}, {end.isoformat()})")
    # as text: a labelled file read from CSV may carry 1 where the log has "1"; a missing prediction is never right
    hits = (rows["predicted"].notna() & (rows["predicted"].astype(str) == rows["true_label"].astype(str))).to_numpy()
    overall = judge(int(hits.sum()), len(rows), config.min_labels, config)
    slices: list[SliceResult] = []
    omitted: dict[str, int] = {}
    for key in slice_keys:
        found, left_out = _slices(rows, hits, key, config)
        slices.extend(found)
        if left_out:
            omitted[key] = left_out
    complete_at = end + config.lateness
    complete = at >= complete_at
    return CanaryResult(
        window_start=start, window_end=end, n_labelled=overall.n_labelled, correct=overall.correct,
        accuracy=overall.accuracy, ci_low=overall.ci_low, ci_high=overall.ci_high, slo=config.slo,
        confidence=config.confidence, status=overall.status, complete=complete, complete_at=complete_at,
        message=_message(overall, slices, omitted, start, end, complete, complete_at, config),
        slices=tuple(slices), slices_omitted=omitted,
    )


def _slice_values(rows: pd.DataFrame, key: str) -> list[str | None]:
    if key in rows.columns:
        import pandas as pd

        return [None if v is None or (not isinstance(v, str) and bool(pd.isna(v))) else str(v) for v in rows[key]]
    require("attributes" in rows.columns,
            f"slice key {key!r} is neither a column of labelled nor found in an attributes column (there is none)")
    return [a.get(key) if isinstance(a, Mapping) else None for a in rows["attributes"]]


def _slices(rows: pd.DataFrame, hits: Any, key: str, config: CanaryConfig) -> tuple[list[SliceResult], int]:
    counts: dict[str | None, list[int]] = {}
    for value, hit in zip(_slice_values(rows, key), hits, strict=True):
        tally = counts.setdefault(value, [0, 0])
        tally[0] += 1
        tally[1] += int(hit)
    ranked = sorted(counts.items(), key=lambda item: (-item[1][0], item[0] is None, item[0] or ""))
    kept = ranked[: config.max_slices]
    results = []
    for value, (n, correct) in kept:
        j = judge(correct, n, config.min_slice_labels, config)
        results.append(SliceResult(key, value, j.n_labelled, j.correct, j.accuracy, j.ci_low, j.ci_high, j.status,
                                   describe(j, config.min_slice_labels, "min_slice_labels", config)))
    return results, len(ranked) - len(kept)


def _message(overall: Judgement, slices: Sequence[SliceResult], omitted: Mapping[str, int], start: datetime,
             end: datetime, complete: bool, complete_at: datetime, config: CanaryConfig) -> str:
    span = f"{start:%Y-%m-%d}" if end - start == timedelta(days=1) else f"{start:%Y-%m-%d} to {end - timedelta(days=1):%Y-%m-%d}"
    parts = [f"canary {span}: {describe(overall, config.min_labels, 'min_labels', config)}"]
    if not complete:
        parts.append(f"labels may still arrive until {complete_at.isoformat()} (lateness {config.lateness_hours:g} h)")
    breaches = [f"{s.name} ({s.accuracy:.3f} on {s.n_labelled})" for s in slices if s.status == BREACH]
    if breaches:
        parts.append("slices in breach: " + ", ".join(breaches))
    thin = sum(s.status == INSUFFICIENT for s in slices)
    if thin:
        parts.append(f"{thin} of {len(slices)} slices have fewer than {config.min_slice_labels} labels")
    if omitted:
        parts.append("not reported: " + ", ".join(f"{n} more values of {k}" for k, n in omitted.items()))
    return "; ".join(parts)
