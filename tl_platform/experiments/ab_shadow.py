"""The shadow phase of an experiment: the challenger scored every request silently; how often did it agree?

Each served champion row is paired with the challenger's shadow row of the same request item, in the database
(a join on request id and item index), so only counts, means and a few examples leave it: the agreement
rate, each side's mean latency and the difference, the shadow failures, and the texts where the two disagree
(empty when the server does not capture texts), most confident first, for a person to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tl_platform.serving.log_readers import SERVED, as_utc
from tl_platform.serving.log_schema import LogTables

SHADOW = "shadow"


@dataclass(frozen=True)
class Disagreement:
    text: str | None
    champion_label: str | None
    challenger_label: str | None
    challenger_confidence: float | None


@dataclass(frozen=True)
class ShadowComparison:
    pairs: int
    agreeing: int
    champion_mean_latency_ms: float | None
    challenger_mean_latency_ms: float | None
    challenger_errors: int
    disagreements: tuple[Disagreement, ...]

    @property
    def agreement_rate(self) -> float | None:
        return self.agreeing / self.pairs if self.pairs else None

    @property
    def latency_difference_ms(self) -> float | None:
        if self.champion_mean_latency_ms is None or self.challenger_mean_latency_ms is None:
            return None
        return self.challenger_mean_latency_ms - self.champion_mean_latency_ms

    def summary(self) -> str:
        if not self.pairs:
            return "no request was scored by both models yet"
        return (f"{self.pairs:,} requests scored by both: agreement {self.agreement_rate:.1%}, challenger "
                f"{self.latency_difference_ms:+.1f} ms mean latency against the champion, "
                f"{self.challenger_errors} challenger failures")

    def to_json(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "agreeing": self.agreeing, "agreement_rate": self.agreement_rate,
                "champion_mean_latency_ms": self.champion_mean_latency_ms,
                "challenger_mean_latency_ms": self.challenger_mean_latency_ms,
                "latency_difference_ms": self.latency_difference_ms, "challenger_errors": self.challenger_errors,
                "disagreements": [vars(d) for d in self.disagreements]}

    def disagreement_table(self) -> str:
        lines = ["| text | champion | challenger (confidence) |", "|---|---|---|"]
        for d in self.disagreements:
            text = "(not captured)" if d.text is None else d.text[:160].replace("|", "\\|").replace("\n", " ")
            confidence = "n/a" if d.challenger_confidence is None else f"{d.challenger_confidence:.2f}"
            lines.append(f"| {text} | {d.champion_label} | {d.challenger_label} ({confidence}) |")
        return "\n".join(lines)


def compare_shadow(engine: Engine, tables: LogTables, experiment_id: str, start: datetime, end: datetime,
                   max_examples: int = 20) -> ShadowComparison:
    """Served champion rows of ``experiment_id`` with ``start <= ts < end`` against their shadow rows."""
    if as_utc(end) <= as_utc(start):
        raise ValueError(f"end must be after start, got start={start.isoformat()} end={end.isoformat()}")
    if max_examples < 0:
        raise ValueError(f"max_examples must be at least 0, got {max_examples}")
    served = tables.predictions.alias("served")
    shadow = tables.predictions.alias("shadow")
    joined = served.join(shadow, sa.and_(shadow.c.request_id == served.c.request_id,
                                         shadow.c.item_index == served.c.item_index, shadow.c.role == SHADOW))
    condition = sa.and_(served.c.role == SERVED, served.c.experiment_id == experiment_id,
                        served.c.ts >= as_utc(start), served.c.ts < as_utc(end))
    agree = sa.case((sa.and_(shadow.c.error.is_(None), shadow.c.label == served.c.label), 1), else_=0)
    totals = sa.select(
        sa.func.count(), sa.func.coalesce(sa.func.sum(agree), 0), sa.func.avg(served.c.latency_ms),
        sa.func.avg(shadow.c.latency_ms), sa.func.coalesce(sa.func.sum(sa.case((shadow.c.error.is_not(None), 1), else_=0)), 0),
    ).select_from(joined).where(condition)
    differing = (
        sa.select(served.c.text, served.c.label, shadow.c.label, shadow.c.confidence)
        .select_from(joined)
        .where(condition, shadow.c.error.is_(None), shadow.c.label != served.c.label)
        .order_by(shadow.c.confidence.desc(), served.c.ts)
        .limit(max_examples)
    )
    with engine.connect() as connection:
        pairs, agreeing, champion_ms, challenger_ms, errors = connection.execute(totals).one()
        examples = connection.execute(differing).all() if max_examples else []
    return ShadowComparison(
        int(pairs), int(agreeing), None if champion_ms is None else float(champion_ms),
        None if challenger_ms is None else float(challenger_ms), int(errors),
        tuple(Disagreement(text, champion, challenger, None if confidence is None else float(confidence))
              for text, champion, challenger, confidence in examples),
    )
