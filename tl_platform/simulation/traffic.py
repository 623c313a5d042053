"""Days of traffic replayed through the real serving API over HTTP, with unit ids, slices and delayed feedback.

The server must run with ``accept_event_time`` (``--accept-event-time``): each request carries the simulated
time it happened (``X-Event-Time``), so a day of traffic lands in that day's monitoring window, and feedback
arrives a configurable delay after the answer it labels.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import httpx

from tl_platform.data.schema import LabelledDataset
from tl_platform.simulation.shifts import corrupt_characters
from tl_platform.validation import require


@dataclass(frozen=True)
class TrafficDay:
    """One simulated day: which texts arrive (with their true labels), from whom, and how feedback follows."""

    day: date
    texts: tuple[str, ...]
    labels: tuple[str, ...]  # raw label values, as the API's feedback takes them
    attributes: Mapping[str, str] = field(default_factory=dict)
    feedback_share: float = 1.0
    feedback_delay_hours: float = 6.0
    units: int = 200

    def __post_init__(self) -> None:
        require(len(self.texts) == len(self.labels), f"{len(self.texts)} texts but {len(self.labels)} labels")
        require(len(self.texts) > 0, f"day {self.day}: a day of traffic needs at least one text")
        require(0.0 <= self.feedback_share <= 1.0, f"feedback_share must be in [0, 1], got {self.feedback_share}")
        require(0.0 <= self.feedback_delay_hours <= 24 * 30,
                f"feedback_delay_hours must be in [0, 720], got {self.feedback_delay_hours}")
        require(self.units >= 1, f"units must be at least 1, got {self.units}")


def sample_day(
    day: date,
    dataset: LabelledDataset,
    requests: int,
    seed: int,
    corruption_rate: float = 0.0,
    attributes: Mapping[str, str] | None = None,
    feedback_share: float = 1.0,
    shift: Callable[[str], str] | None = None,
) -> TrafficDay:
    """``requests`` texts drawn from ``dataset`` (without replacement while it lasts), optionally shifted.

    ``corruption_rate`` passes each text through ``corrupt_characters`` (seeded by ``seed``); ``shift`` is any
    deterministic rewrite (``shifts.slang``, ``shifts.text_speak``), applied first.
    """
    require(requests >= 1, f"requests must be at least 1, got {requests}")
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < requests:
        order.extend(rng.sample(range(len(dataset)), len(dataset)))
    chosen = order[:requests]
    texts = [dataset.texts[i] for i in chosen]
    if shift is not None:
        texts = [shift(text) for text in texts]
    if corruption_rate > 0:
        texts = [corrupt_characters(text, corruption_rate, rng) for text in texts]
    labels = [dataset.schema.labels[dataset.labels[i]] for i in chosen]
    return TrafficDay(day, tuple(texts), tuple(labels), dict(attributes or {}), feedback_share)


@dataclass(frozen=True)
class DayOutcome:
    day: date
    requests: int
    feedback: int
    correct: int  # served answers that matched the true label (over all requests, labelled or not)

    @property
    def accuracy(self) -> float:
        return self.correct / self.requests


def replay_day(client: httpx.Client, traffic: TrafficDay, seed: int = 0) -> DayOutcome:
    """Send the day's requests spread evenly over the day, then the feedback for a share of them.

    Any answer other than 200 raises: a replay that silently lost requests would make every later number lie.
    """
    rng = random.Random(seed)
    start = datetime(traffic.day.year, traffic.day.month, traffic.day.day, tzinfo=UTC)
    step = timedelta(days=1) / len(traffic.texts)
    answered: list[tuple[str, str, datetime]] = []
    correct = 0
    for index, (text, label) in enumerate(zip(traffic.texts, traffic.labels, strict=True)):
        moment = start + step * (index + 0.5)
        body: dict[str, object] = {"text": text, "unit_id": f"unit-{rng.randrange(traffic.units)}"}
        if traffic.attributes:
            body["attributes"] = dict(traffic.attributes)
        response = client.post("/predict", json=body, headers={"X-Event-Time": moment.isoformat()})
        _require_ok(response, "predict")
        answer = response.json()
        correct += int(answer["predictions"][0]["label"] == label)
        answered.append((answer["request_id"], label, moment))
    labelled = rng.sample(answered, round(len(answered) * traffic.feedback_share))
    for request_id, label, moment in labelled:
        when = moment + timedelta(hours=traffic.feedback_delay_hours)
        response = client.post("/feedback", json={"request_id": request_id, "label": label},
                               headers={"X-Event-Time": when.isoformat()})
        _require_ok(response, "feedback")
    return DayOutcome(traffic.day, len(answered), len(labelled), correct)


def replay(client: httpx.Client, days: Sequence[TrafficDay], seed: int = 0) -> list[DayOutcome]:
    return [replay_day(client, day, seed + i) for i, day in enumerate(days)]


def _require_ok(response: httpx.Response, what: str) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{what} answered HTTP {response.status_code}: {response.text[:500]}")
