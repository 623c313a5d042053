"""The daily windows the monitoring loop works in: one partition per UTC day of served traffic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

# The first day a window can exist for; backfills from the UI cover any range after it. A day's partition
# exists once the day is over (end_offset 0), so a window never judges a half-finished day.
MONITOR_START_DATE = "2026-01-01"
MONITOR_PARTITIONS = dg.DailyPartitionsDefinition(start_date=MONITOR_START_DATE, timezone="UTC")


def day_bounds(partition_key: str) -> tuple[datetime, datetime]:
    """[start, end) of a day partition, in UTC."""
    start = datetime.strptime(partition_key, "%Y-%m-%d").replace(tzinfo=UTC)
    return start, start + timedelta(days=1)
