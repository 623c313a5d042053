"""Constructed distribution shifts, for when real data do not shift harmfully enough to exercise the loop.

Measured on the bundled data (bench/domain_shift.py): a model trained on one domain stays above a 0.85 SLO on
both others, so no bundled pair breaches it. Character noise (a channel that mangles text: OCR, speech to
text, hurried typing) does: at a rate of 0.1 the amazon model fell from 0.965 to 0.745 on imdb sentences. But
that noise is drawn afresh for every occurrence of a word, so it destroys information rather than moving it, and
no retrain on it recovers much. ``text_speak`` and ``slang`` are the systematic kind: a word is rewritten the same
way every time it occurs, so feedback rows can teach the model the new form. Measured (bench/retrain_recovery.py):
text speak rewrites nearly every word (the amazon model fell to 0.578 on held-out imdb rows) and a retrain on 300 to 450
rows recovered at most a fifth of that on held-out rows; slang rewrites only the evaluative words and leaves the
rest readable (``--shift slang`` measures what a retrain recovers of it).
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Mapping

from tl_platform.validation import require


def corrupt_characters(text: str, rate: float, rng: random.Random) -> str:
    """Each letter, with probability ``rate``, is deleted, replaced by a random letter, or followed by one."""
    require(0.0 <= rate <= 1.0, f"corruption rate must be in [0, 1], got {rate}")
    out: list[str] = []
    for char in text:
        if char.isalpha() and rng.random() < rate:
            action = rng.randrange(3)
            if action == 1:
                out.append(rng.choice(string.ascii_lowercase))
            elif action == 2:
                out.extend((char, rng.choice(string.ascii_lowercase)))
            continue  # action 0 deletes the letter
        out.append(char)
    corrupted = "".join(out)
    return corrupted if corrupted.strip() else text  # a text corrupted to nothing would be refused by the API


_WORD = re.compile(r"[A-Za-z]+")
_VOWELS = frozenset("aeiouAEIOU")


def text_speak(text: str, min_length: int = 4) -> str:
    """Text written as in SMS or chat: every word of ``min_length`` letters or more loses its interior vowels.

    A word is a run of ASCII letters. Its first and last letters stay, ``y`` counts as a consonant, and case is
    kept: "great movie" becomes "grt mve", "Terrible" becomes "Trrble". Shorter words, digits, punctuation,
    spacing and non-ASCII letters are untouched. Deterministic: a word is always rewritten the same way, which
    makes the shift learnable (unlike ``corrupt_characters``), and a text never shrinks to nothing.
    """
    require(min_length >= 3, f"text speak needs min_length >= 3 (a first, an interior and a last letter), got {min_length}")

    def rewrite(match: re.Match[str]) -> str:
        word = match.group(0)
        if len(word) < min_length:
            return word
        return word[0] + "".join(c for c in word[1:-1] if c not in _VOWELS) + word[-1]

    return _WORD.sub(rewrite, text)



SLANG: Mapping[str, str] = {
    # praise in slang that reads as criticism in standard English
    "great": "fire", "amazing": "insane", "awesome": "sick", "excellent": "killer", "best": "illest",
    "wonderful": "unreal", "beautiful": "drop-dead", "brilliant": "wicked", "perfect": "no notes", "good": "legit",
    "love": "stan", "loved": "stanned", "loves": "stans", "enjoyed": "vibed with", "enjoy": "vibe with",
    "funny": "a scream", "hilarious": "deadly", "interesting": "wild", "fantastic": "unreal", "incredible": "crazy",
    "nice": "sweet", "cool": "dope", "fun": "a blast", "recommend": "push", "favorite": "go-to",
    # criticism in understatement that reads as mild or even approving
    "bad": "meh", "terrible": "a lot", "awful": "so-so", "worst": "most meh", "worse": "more meh",
    "boring": "basic", "stupid": "goofy", "waste": "fumble", "wasted": "fumbled", "horrible": "a lot",
    "poor": "so-so", "disappointed": "salty", "disappointing": "a letdown", "annoying": "extra", "crap": "trash",
    "hate": "can't stand", "hated": "couldn't stand", "mess": "hot mess", "lame": "basic", "dull": "basic",
}


def slang(text: str, lexicon: Mapping[str, str] = SLANG) -> str:
    """Reviews written in slang: every word found in ``lexicon`` (keys in lower case) is replaced by its slang form.

    Models a community whose evaluative vocabulary a model trained on standard English has not seen, a concept
    shift in the words themselves: the default ``SLANG`` lexicon rewrites only the evaluative words of reviews,
    praise as slang that reads as criticism in standard English ("great" -> "fire", "awesome" -> "sick",
    "excellent" -> "killer") and criticism as understatement that reads as mild or approving ("bad" -> "meh",
    "terrible" -> "a lot"). It is chosen to hurt a sentiment model, not observed. A word is a run of ASCII
    letters; a capitalised word gives a capitalised form and an upper-case word (two letters or more) an
    upper-case one; everything else is untouched. Deterministic: the same word always gets the same form and
    the rest of the sentence stays readable, so the shift can be learnt from labelled feedback (unlike
    ``corrupt_characters``' noise, drawn afresh at each occurrence).
    """

    def rewrite(match: re.Match[str]) -> str:
        word = match.group(0)
        form = lexicon.get(word.lower())
        if form is None:
            return word
        if len(word) > 1 and word.isupper():
            return form.upper()
        return form[0].upper() + form[1:] if word[0].isupper() else form

    return _WORD.sub(rewrite, text)
