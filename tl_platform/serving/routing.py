"""A/B routing: a unit id (user, session, tenant) hashed with a salt into champion or challenger.

SHA-256 of ``salt + ":" + unit_id`` (not Python's per-process ``hash``) so every replica, and every restart,
sends one unit to one variant. The first 8 bytes of the digest, as a fraction of 2**64, are compared with the
challenger's share.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Variant = Literal["champion", "challenger"]
_SCALE = float(2**64)


@dataclass(frozen=True)
class RoutingContext:
    """What split the units when a request was served; every log row of the request carries it.

    ``salt`` is the one actually hashed (the deployment record's ``routing_salt``, else the server's), so an
    experiment's analysis can recompute any unit's variant from the log alone.
    """

    salt: str
    challenger_share: float
    experiment_id: str | None


def unit_fraction(salt: str, unit_id: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, unit_id)."""
    digest = hashlib.sha256(f"{salt}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign_variant(salt: str, unit_id: str, challenger_share: float) -> Variant:
    """``challenger`` for units whose fraction falls below the share, else ``champion``.

    A share of 0 sends every unit to the champion, 1 every unit to the challenger.
    """
    if not 0.0 <= challenger_share <= 1.0:
        raise ValueError(f"challenger_share must be in [0, 1], got {challenger_share}")
    return "challenger" if unit_fraction(salt, unit_id) < challenger_share else "champion"
