"""Days of traffic replayed through the real serving API over HTTP, with unit ids, slices and delayed feedback.

The server must run with ``accept_event_time`` (``--accept-event-time``): each request carries the simulated
time it happened (``X-Event-Time``), so a day of traffic lands in that day's monitoring window, and feedback
arrives a configurable delay after the answer it labels.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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


ProgressHook = Callable[[int, int], None]  # (done, total) calls of the day so far


def replay_day(client: httpx.Client, traffic: TrafficDay, seed: int = 0, concurrency: int = 1,
               on_progress: ProgressHook | None = None) -> DayOutcome:
    """Send the day's requests spread evenly over the day, then the feedback for a share of them.

    What is sent does not depend on ``concurrency`` (unit ids and the labelled share are drawn first, in
    order); only how many requests are in flight at once. Any answer other than 200 raises: a replay that
    silently lost requests would make every later number lie.
    """
    require(concurrency >= 1, f"concurrency must be at least 1, got {concurrency}")
    rng = random.Random(seed)
    start = datetime(traffic.day.year, traffic.day.month, traffic.day.day, tzinfo=UTC)
    step = timedelta(days=1) / len(traffic.texts)
    requests: list[tuple[dict[str, object], datetime]] = []
    for index, text in enumerate(traffic.texts):
        body: dict[str, object] = {"text": text, "unit_id": f"unit-{rng.randrange(traffic.units)}"}
        if traffic.attributes:
            body["attributes"] = dict(traffic.attributes)
        requests.append((body, start + step * (index + 0.5)))
    labelled_positions = sorted(rng.sample(range(len(requests)), round(len(requests) * traffic.feedback_share)))
    total = len(requests) + len(labelled_positions)
    done = 0

    def predict(item: tuple[dict[str, object], datetime]) -> dict[str, object]:
        response = client.post("/predict", json=item[0], headers={"X-Event-Time": item[1].isoformat()})
        _require_ok(response, "predict")
        answer: dict[str, object] = response.json()
        return answer

    def feedback(position: int) -> None:
        when = requests[position][1] + timedelta(hours=traffic.feedback_delay_hours)
        body = {"request_id": answers[position]["request_id"], "label": traffic.labels[position]}
        _require_ok(client.post("/feedback", json=body, headers={"X-Event-Time": when.isoformat()}), "feedback")

    def tick() -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total)

    answers: list[dict[str, object]] = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for answer in pool.map(predict, requests):
            answers.append(answer)
            tick()
        for _ in pool.map(feedback, labelled_positions):
            tick()
    served = [str(answer["predictions"][0]["label"]) for answer in answers]  # type: ignore[index]
    correct = sum(1 for label, truth in zip(served, traffic.labels, strict=True) if label == truth)
    return DayOutcome(traffic.day, len(answers), len(labelled_positions), correct)


def replay(client: httpx.Client, days: Sequence[TrafficDay], seed: int = 0, concurrency: int = 1) -> list[DayOutcome]:
    return [replay_day(client, day, seed + i, concurrency) for i, day in enumerate(days)]


def _require_ok(response: httpx.Response, what: str) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{what} answered HTTP {response.status_code}: {response.text[:500]}")
