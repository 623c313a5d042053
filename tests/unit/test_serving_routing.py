"""A/B routing: a salted SHA-256 of the unit id, deterministic across processes, split by the share."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from tl_platform.serving.routing import assign_variant, unit_fraction


def test_fraction_is_the_salted_sha256_prefix() -> None:
    expected = int.from_bytes(hashlib.sha256(b"salt:user-42").digest()[:8], "big") / 2**64
    assert unit_fraction("salt", "user-42") == expected
    assert 0.0 <= expected < 1.0


def test_same_unit_same_variant_in_another_process() -> None:
    ids = [f"user-{i}" for i in range(200)]
    here = [assign_variant("s", u, 0.3) for u in ids]
    code = "from tl_platform.serving.routing import assign_variant as a; print(','.join(a('s', f'user-{i}', 0.3) for i in range(200)))"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip().split(",")
    assert here == there  # not Python's hash(), which is salted per process
    assert here == [assign_variant("s", u, 0.3) for u in ids]


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_split_proportion_within_tolerance_over_10k_units(share: float) -> None:
    n = 10_000
    challenger = sum(assign_variant("tlp-ab", f"unit-{i}", share) == "challenger" for i in range(n))
    # binomial standard deviation is at most 50 for n = 10k; 4 sigma is 200 units
    assert abs(challenger - share * n) < 200


def test_zero_and_one_shares_send_everyone_one_way() -> None:
    units = [f"u{i}" for i in range(2000)]
    assert {assign_variant("x", u, 0.0) for u in units} == {"champion"}
    assert {assign_variant("x", u, 1.0) for u in units} == {"challenger"}


def test_units_keep_their_variant_when_the_share_grows() -> None:
    units = [f"u{i}" for i in range(2000)]
    at_10 = {u for u in units if assign_variant("x", u, 0.1) == "challenger"}
    at_20 = {u for u in units if assign_variant("x", u, 0.2) == "challenger"}
    assert at_10 < at_20  # ramping up only moves champion units over, never back


def test_salt_reshuffles_units_and_bad_share_is_refused() -> None:
    units = [f"u{i}" for i in range(2000)]
    a = [assign_variant("a", u, 0.5) for u in units]
    b = [assign_variant("b", u, 0.5) for u in units]
    assert 0.4 < sum(x != y for x, y in zip(a, b, strict=True)) / len(units) < 0.6
    with pytest.raises(ValueError, match=r"challenger_share must be in \[0, 1\], got 1.2"):
        assign_variant("a", "u", 1.2)
