from __future__ import annotations

import json
import random
from datetime import date, datetime

import httpx
import pytest

from tl_platform.data.schema import DuplicateReport, LabelledDataset, LabelSchema
from tl_platform.simulation.shifts import corrupt_characters, slang, text_speak
from tl_platform.simulation.traffic import TrafficDay, replay_day, sample_day

SCHEMA = LabelSchema(labels=("0", "1"), names=("negative", "positive"))
DATA = LabelledDataset(texts=tuple(f"sentence number {i}" for i in range(10)), labels=tuple(i % 2 for i in range(10)),
                       schema=SCHEMA, source="t", rows_read=10, duplicates=DuplicateReport(0, 0, 0))


def test_corruption_changes_about_the_rate_of_letters_and_never_empties_a_text() -> None:
    rng = random.Random(0)
    text = "the quick brown fox jumps over the lazy dog " * 50
    changed = sum(a != b for a, b in zip(text, corrupt_characters(text, 0.1, rng), strict=False))
    assert changed > 0
    assert corrupt_characters("abc", 0.0, rng) == "abc"
    assert corrupt_characters("a", 1.0, random.Random(3)).strip()  # deleted to nothing would be refused by the API
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
        corrupt_characters("abc", 1.5, rng)


def test_text_speak_drops_interior_vowels_of_long_words_the_same_way_every_time() -> None:
    assert text_speak("great movie, Terrible acting") == "grt mve, Trrble actng"
    text = "The movie was great. Great movie! the MOVIE, great-movie"
    assert text_speak(text) == "The mve was grt. Grt mve! the MVE, grt-mve"  # same word, same form, every time
    assert text_speak(text) == text_speak(text)
    untouched = "a bad day, it's 10/10 :) naïve café"  # words under 4 letters, digits, punctuation, non-ASCII
    assert text_speak(untouched) == untouched
    assert text_speak("Aeiou area") == "Au ara"  # first and last letters stay, so a word never vanishes
    assert text_speak("awful movie", min_length=6) == "awful movie"
    assert text_speak("beautiful", min_length=6) == "btfl"
    with pytest.raises(ValueError, match="min_length >= 3"):
        text_speak("abc", min_length=2)


def test_slang_rewrites_lexicon_words_the_same_way_every_time() -> None:
    assert slang("Great movie, awesome cast. Bad ending") == "Fire movie, sick cast. Meh ending"
    text = "a great plot. GREAT plot! great-plot"
    assert slang(text) == "a fire plot. FIRE plot! fire-plot"  # same word, same form; case kept
    untouched = "Acting 10/10 :) naïve café, greatest"  # words outside the lexicon, digits, punctuation, non-ASCII
    assert slang(untouched) == untouched
    assert slang("I hate it", {"hate": "h8"}) == "I h8 it"
    assert slang("I hate it", {}) == "I hate it"


def test_a_day_uses_every_text_once_before_repeating_any() -> None:
    day = sample_day(date(2026, 3, 1), DATA, 15, seed=1)
    assert len(set(day.texts[:10])) == 10
    assert len(day.texts) == len(day.labels) == 15
    assert all(SCHEMA.labels[DATA.labels[DATA.texts.index(t)]] == label for t, label in zip(day.texts, day.labels, strict=True))


def test_a_shifted_day_rewrites_the_same_texts_and_keeps_their_labels() -> None:
    plain = sample_day(date(2026, 3, 1), DATA, 12, seed=1)
    shifted = sample_day(date(2026, 3, 1), DATA, 12, seed=1, shift=lambda text: text.replace("number", "no."))
    assert shifted.labels == plain.labels
    assert shifted.texts == tuple(text.replace("number", "no.") for text in plain.texts)


def test_replay_spreads_requests_over_the_day_and_sends_feedback_after_them() -> None:
    seen: list[tuple[str, dict[str, object], str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, body, request.headers["X-Event-Time"]))
        if request.url.path == "/predict":
            return httpx.Response(200, json={"request_id": f"{len(seen):032x}", "predictions": [{"label": "1"}]})
        return httpx.Response(200, json={"status": "recorded"})

    traffic = TrafficDay(date(2026, 3, 1), ("a", "b", "c", "d"), ("1", "0", "1", "0"), {"domain": "x"},
                         feedback_share=0.5, feedback_delay_hours=2)
    with httpx.Client(transport=httpx.MockTransport(answer), base_url="http://server") as client:
        outcome = replay_day(client, traffic)
    predicts = [s for s in seen if s[0] == "/predict"]
    feedback = [s for s in seen if s[0] == "/feedback"]
    assert (outcome.requests, outcome.feedback, outcome.correct) == (4, 2, 2)
    times = [datetime.fromisoformat(t) for _, _, t in predicts]
    assert times == sorted(times) and times[0].hour == 3 and times[-1].hour == 21
    assert all(body["attributes"] == {"domain": "x"} and str(body["unit_id"]).startswith("unit-") for _, body, _ in predicts)
    assert len(feedback) == 2 and all(datetime.fromisoformat(t) > times[0] for _, _, t in feedback)


def test_a_refused_request_stops_the_replay_with_the_server_answer() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "X-Event-Time: accepted only with --accept-event-time"})

    with httpx.Client(transport=httpx.MockTransport(refuse), base_url="http://server") as client, \
            pytest.raises(RuntimeError, match=r"predict answered HTTP 400: .*accept-event-time"):
        replay_day(client, TrafficDay(date(2026, 3, 1), ("a",), ("1",)))


def test_a_day_without_texts_or_with_mismatched_labels_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one text"):
        TrafficDay(date(2026, 3, 1), (), ())
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        TrafficDay(date(2026, 3, 1), ("a", "b"), ("1",))
