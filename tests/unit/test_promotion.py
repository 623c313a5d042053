"""Promotion owns the champion and challenger aliases: idempotent, with reasons, refusing what breaks a rule."""

from __future__ import annotations

import pytest

from tl_platform.experiments.promotion import (
    BOOTSTRAP_REASON,
    PromotionConflictError,
    PromotionError,
    candidate_tags,
    ensure_champion,
    promote,
    retire,
)


class MemoryRegistry:
    """The registry calls promotion makes, kept in dicts; ``moves`` counts alias writes."""

    def __init__(self, versions: dict[str, dict[str, str]]) -> None:
        self.tags = versions
        self.aliases: dict[str, str] = {}
        self.moves = 0

    def alias_version(self, name: str, alias: str) -> str | None:
        return self.aliases.get(alias)

    def version_tags(self, name: str, version: str) -> dict[str, str] | None:
        return dict(self.tags[version]) if version in self.tags else None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases[alias] = version
        self.moves += 1

    def delete_alias(self, name: str, alias: str) -> None:
        self.aliases.pop(alias, None)

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        self.tags[version].update(tags)


@pytest.fixture
def registry() -> MemoryRegistry:
    return MemoryRegistry({"1": candidate_tags(), "2": candidate_tags(), "3": candidate_tags("failed")})


def test_bootstrap_makes_the_first_candidate_champion_once(registry: MemoryRegistry) -> None:
    first = ensure_champion(registry, "m", "1", "dagster run r1")
    assert first is not None and first.changed and first.previous is None and first.reason == BOOTSTRAP_REASON
    assert registry.aliases == {"champion": "1"}
    assert registry.tags["1"]["tlp.status"] == "champion" and registry.tags["1"]["tlp.champion.actor"] == "dagster run r1"
    assert ensure_champion(registry, "m", "2", "dagster run r2") is None  # a champion exists: nothing moves
    assert registry.aliases == {"champion": "1"} and registry.moves == 1


def test_promotion_is_idempotent_and_records_why(registry: MemoryRegistry) -> None:
    done = promote(registry, "m", "2", "challenger", "retrained on October", "ana")
    again = promote(registry, "m", "2", "challenger", "retrained on October", "ana")
    assert done.changed and not again.changed and registry.moves == 1
    assert registry.tags["2"]["tlp.challenger.reason"] == "retrained on October"
    assert registry.tags["2"]["tlp.challenger.previous"] == "none"


def test_a_winning_challenger_becomes_champion_and_stops_challenging(registry: MemoryRegistry) -> None:
    promote(registry, "m", "1", "champion", "first", "ana")
    promote(registry, "m", "2", "challenger", "retrained", "ana")
    won = promote(registry, "m", "2", "champion", "won exp-1", "ab_decision")
    assert (won.previous, won.version) == ("1", "2")
    assert registry.aliases == {"champion": "2"}
    assert registry.tags["1"]["tlp.status"] == "former champion"
    assert registry.tags["2"]["tlp.champion.previous"] == "1"


@pytest.mark.parametrize(
    ("version", "alias", "reason", "actor", "message"),
    [
        ("2", "canary", "r", "a", r"alias must be one of \['champion', 'challenger'\], got 'canary'"),
        ("2", "champion", "  ", "a", r"a promotion of m v2 to champion needs a reason"),
        ("2", "champion", "r", "", r"a promotion needs an actor"),
        ("9", "champion", "r", "a", r"m has no version '9'; list the versions with `tlp models`"),
        ("3", "champion", "r", "a", r"m v3 is not a candidate that passed its export gates \(tlp.gates='failed'\)"),
    ],
)
def test_bad_promotions_are_refused_with_the_rule(
    registry: MemoryRegistry, version: str, alias: str, reason: str, actor: str, message: str
) -> None:
    with pytest.raises(PromotionError, match=message):
        promote(registry, "m", version, alias, reason, actor)
    assert registry.moves == 0


def test_a_version_registered_before_gate_tags_can_be_promoted() -> None:
    """Earlier releases registered a version only when its gates passed, and tagged its bundle digest."""
    registry = MemoryRegistry({"1": {"bundle_sha256": "ab" * 32}, "2": {}})
    assert promote(registry, "m", "1", "champion", "kept from the last release", "ana").changed
    with pytest.raises(PromotionError, match=r"m v2 is not a candidate that passed its export gates"):
        promote(registry, "m", "2", "challenger", "unknown origin", "ana")


def test_the_champion_cannot_also_be_the_challenger(registry: MemoryRegistry) -> None:
    promote(registry, "m", "1", "champion", "first", "ana")
    with pytest.raises(PromotionError, match=r"m v1 is the champion; a challenger must be another version"):
        promote(registry, "m", "1", "challenger", "again", "ana")


def test_a_concurrent_move_is_reported_not_hidden(registry: MemoryRegistry) -> None:
    class RacingRegistry(MemoryRegistry):
        def set_alias(self, name: str, alias: str, version: str) -> None:
            super().set_alias(name, alias, version)
            self.aliases[alias] = "1"  # another promotion lands right after ours

    racing = RacingRegistry(registry.tags)
    with pytest.raises(PromotionConflictError, match=r"m alias champion was moved to v1 while promoting v2"):
        promote(racing, "m", "2", "champion", "won", "ab_decision")


def test_a_rolled_back_challenger_is_retired_once_and_the_champion_cannot_be(registry: MemoryRegistry) -> None:
    promote(registry, "m", "1", "champion", "first", "ana")
    promote(registry, "m", "2", "challenger", "retrained", "ana")
    assert retire(registry, "m", "2", "exp-1 rolled back: slice domain=yelp worse", "ab_decision")
    assert registry.aliases == {"champion": "1"}
    assert registry.tags["2"]["tlp.status"] == "retired" and "domain=yelp" in registry.tags["2"]["tlp.retired.reason"]
    assert not retire(registry, "m", "2", "again", "ab_decision")  # idempotent: nothing left to move
    with pytest.raises(PromotionError, match="m v1 is the champion; promote another version before retiring it"):
        retire(registry, "m", "1", "r", "a")
    with pytest.raises(PromotionError, match="needs a reason and an actor"):
        retire(registry, "m", "2", " ", "a")
