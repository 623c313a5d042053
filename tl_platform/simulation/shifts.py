"""Constructed distribution shifts, for when real data do not shift harmfully enough to exercise the loop.

Measured on the bundled data (bench/domain_shift.py): a model trained on one domain stays above a 0.85 SLO on
both others, so no bundled pair breaches it. Character noise (a channel that mangles text: OCR, speech to
text, hurried typing) does: at a rate of 0.1 the amazon model fell from 0.965 to 0.745 on imdb sentences.
"""

from __future__ import annotations

import random
import string

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
