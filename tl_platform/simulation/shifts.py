"""Constructed distribution shifts, for when real data do not shift harmfully enough to exercise the loop.

Measured on the bundled data (bench/domain_shift.py): a model trained on one domain stays above a 0.85 SLO on
both others, so no bundled pair breaches it. Character noise (a channel that mangles text: OCR, speech to
text, hurried typing) does: at a rate of 0.1 the amazon model fell from 0.965 to 0.745 on imdb sentences. But
that noise is drawn afresh for every occurrence of a word, so it destroys information rather than moving it, and
no retrain on it recovers much. ``text_speak`` and ``chat_slang`` are the systematic kind: a word is rewritten the
same way every time it occurs, so feedback rows can teach the model the new spelling.
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


CHAT_SLANG: Mapping[str, str] = {
    # the classic chat and SMS abbreviations of frequent words
    "you": "u", "your": "ur", "are": "r", "for": "4", "to": "2", "too": "2", "be": "b", "see": "c", "why": "y",
    "okay": "k", "because": "cuz", "really": "rly", "people": "ppl", "please": "pls", "thanks": "thx",
    "about": "abt", "before": "b4", "later": "l8r", "tonight": "2nite", "probably": "prob", "definitely": "def",
    "seriously": "srsly", "though": "tho", "through": "thru", "what": "wut", "that": "dat", "this": "dis",
    "the": "da", "with": "wiv", "just": "jus", "know": "kno", "nothing": "nuthin", "something": "sumthin",
    "anything": "nethin", "everything": "evrythin", "everyone": "evry1", "someone": "sum1", "anyone": "ne1",
    "movie": "muvi", "movies": "muvis", "film": "flm", "films": "flms", "actually": "actully", "think": "thnk",
    "very": "v", "much": "mch", "more": "mor", "some": "sum", "would": "wud", "could": "cud", "should": "shud",
    "not": "nt", "never": "nvr", "no": "nah", "well": "wel", "fine": "fyn", "happy": "hppy", "fun": "fn",
    # evaluative words, as chat writers spell them
    "great": "gr8", "good": "gud", "bad": "bd", "best": "bst", "better": "btr", "worst": "wrst", "worse": "wrse",
    "love": "luv", "loved": "luvd", "loves": "luvs", "lovely": "luvly", "like": "lyk", "liked": "lykd",
    "hate": "h8", "hated": "h8d", "awesome": "awsum", "excellent": "xlnt", "terrible": "terribl", "awful": "awfl",
    "boring": "borin", "funny": "funy", "stupid": "stoopid", "wonderful": "wunderful", "beautiful": "bootiful",
    "amazing": "amazin", "perfect": "prfct", "waste": "wayst", "wasted": "waystd", "horrible": "horribl",
    "enjoyed": "njoyd", "enjoy": "njoy", "interesting": "intrstin", "nice": "nyc", "cool": "kewl",
    "poor": "pur", "disappointed": "dsapointd", "disappointing": "dsapointin", "recommend": "rcmnd",
    "highly": "hghly", "brilliant": "brillnt", "annoying": "annoyin", "crap": "krap",
}


def chat_slang(text: str, lexicon: Mapping[str, str] = CHAT_SLANG) -> str:
    """Text written in chat slang: every word found in ``lexicon`` (lower case) is replaced by its slang form.

    Models users who write as in SMS or chat: frequent words in their usual abbreviations ("you" -> "u",
    "because" -> "cuz") and the evaluative words a sentiment model leans on respelt ("great movie" ->
    "gr8 muvi", "I hate it" -> "I h8 it"). A word is a run of ASCII letters; a capitalised word gives a
    capitalised form and an upper-case word (two letters or more) an upper-case one. Words outside the lexicon,
    digits, punctuation and spacing are untouched. Deterministic: the same word always gets the same form,
    so the shift is systematic and can be learnt from feedback (unlike ``corrupt_characters``), while the rest
    of the sentence stays readable (unlike ``text_speak``).
    """

    def rewrite(match: re.Match[str]) -> str:
        word = match.group(0)
        slang = lexicon.get(word.lower())
        if slang is None:
            return word
        if len(word) > 1 and word.isupper():
            return slang.upper()
        return slang[0].upper() + slang[1:] if word[0].isupper() else slang

    return _WORD.sub(rewrite, text)
