"""Promotion: the one owner of the serving model's ``champion`` and ``challenger`` aliases.

Exports register versions tagged ``candidate``; only this module moves the aliases, for an A/B decision, a
person's command (``tlp promote``), or the bootstrap of a registry that has no champion yet. Every move is
idempotent (promoting a version its alias already names changes nothing) and leaves its reason, time and
actor as tags on the promoted version. The registry offers no compare-and-set, so a move is read back: a
concurrent move by someone else is reported, never silently overwritten in the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

ALIASES = ("champion", "challenger")
STATUS_TAG = "tlp.status"
CANDIDATE = "candidate"
GATES_TAG = "tlp.gates"
BOOTSTRAP_REASON = "first servable version: the registry had no champion to compare it against"


class PromotionError(ValueError):
    """A promotion was refused; the message names the alias, the version and the rule."""


class PromotionConflictError(RuntimeError):
    """The alias moved elsewhere while this promotion ran (another promotion at the same time)."""


class ModelRegistry(Protocol):
    def alias_version(self, name: str, alias: str) -> str | None: ...
    def version_tags(self, name: str, version: str) -> dict[str, str] | None: ...
    def set_alias(self, name: str, alias: str, version: str) -> None: ...
    def delete_alias(self, name: str, alias: str) -> None: ...
    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None: ...


@dataclass(frozen=True)
class Promotion:
    """What a promotion did: ``changed`` is False when the alias already named the version."""

    model: str
    alias: str
    version: str
    previous: str | None
    changed: bool
    reason: str
    actor: str
    at: str

    def to_json(self) -> dict[str, object]:
        return dict(vars(self))


def candidate_tags(gates: str = "passed") -> dict[str, str]:
    """Tags an export puts on the version it registers: a candidate, never an alias."""
    return {STATUS_TAG: CANDIDATE, GATES_TAG: gates}


def promote(registry: ModelRegistry, model: str, version: str, alias: str, reason: str, actor: str) -> Promotion:
    """Point ``alias`` at ``version`` (a registered version whose gates passed), recording why and by whom."""
    if alias not in ALIASES:
        raise PromotionError(f"alias must be one of {list(ALIASES)}, got {alias!r}")
    if not reason.strip():
        raise PromotionError(f"a promotion of {model} v{version} to {alias} needs a reason (it is recorded)")
    if not actor.strip():
        raise PromotionError("a promotion needs an actor (who or what moved the alias)")
    tags = registry.version_tags(model, version)
    if tags is None:
        raise PromotionError(f"{model} has no version {version!r}; list the versions with `tlp models`")
    # versions registered before exports tagged their gates were registered only when every gate passed
    registered_before_tags = GATES_TAG not in tags and "bundle_sha256" in tags
    if tags.get(GATES_TAG) != "passed" and not registered_before_tags:
        raise PromotionError(
            f"{model} v{version} is not a candidate that passed its export gates ({GATES_TAG}={tags.get(GATES_TAG)!r})"
        )
    now = datetime.now(UTC).isoformat(timespec="seconds")
    previous = registry.alias_version(model, alias)
    if previous == version:
        return Promotion(model, alias, version, previous, False, reason, actor, now)
    if alias == "challenger" and registry.alias_version(model, "champion") == version:
        raise PromotionError(f"{model} v{version} is the champion; a challenger must be another version")
    registry.set_alias(model, alias, version)
    registry.set_version_tags(
        model,
        version,
        {
            STATUS_TAG: alias,
            f"tlp.{alias}.reason": reason[:4000],
            f"tlp.{alias}.actor": actor[:250],
            f"tlp.{alias}.promoted_at": now,
            f"tlp.{alias}.previous": previous or "none",
        },
    )
    if alias == "champion" and registry.alias_version(model, "challenger") == version:
        registry.delete_alias(model, "challenger")  # the challenger won: it no longer challenges itself
    if previous is not None:
        registry.set_version_tags(model, previous, {STATUS_TAG: f"former {alias}", f"tlp.{alias}.replaced_at": now})
    after = registry.alias_version(model, alias)
    if after != version:
        raise PromotionConflictError(
            f"{model} alias {alias} was moved to v{after} while promoting v{version}; another promotion ran at "
            f"the same time. Check `tlp models` and promote again if v{version} should win."
        )
    return Promotion(model, alias, version, previous, True, reason, actor, now)


def ensure_champion(registry: ModelRegistry, model: str, version: str, actor: str) -> Promotion | None:
    """Make ``version`` the champion when the registry has none yet; otherwise change nothing (None)."""
    if registry.alias_version(model, "champion") is not None:
        return None
    return promote(registry, model, version, "champion", BOOTSTRAP_REASON, actor)


def retire(registry: ModelRegistry, model: str, version: str, reason: str, actor: str) -> bool:
    """Take ``version`` out of the experiment: drop the ``challenger`` alias if it names it, and tag it retired.

    Returns whether the alias moved (False when it already named another version or none: idempotent).
    """
    if not reason.strip() or not actor.strip():
        raise PromotionError(f"retiring {model} v{version} needs a reason and an actor (both are recorded)")
    if registry.version_tags(model, version) is None:
        raise PromotionError(f"{model} has no version {version!r}; list the versions with `tlp models`")
    if registry.alias_version(model, "champion") == version:
        raise PromotionError(f"{model} v{version} is the champion; promote another version before retiring it")
    moved = registry.alias_version(model, "challenger") == version
    if moved:
        registry.delete_alias(model, "challenger")
    now = datetime.now(UTC).isoformat(timespec="seconds")
    registry.set_version_tags(model, version, {STATUS_TAG: "retired", "tlp.retired.reason": reason[:4000],
                                               "tlp.retired.actor": actor[:250], "tlp.retired_at": now})
    return moved
