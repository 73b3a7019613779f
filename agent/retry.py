"""When a failed scheduled backup is tried again.

The job runner writes the plan into the failed job's log (so the operator
reads when the next attempt comes) and the scheduler carries it out; both
ask this module, so they cannot disagree.
"""

from __future__ import annotations

from typing import Any

# Exponential backoff doubles from the group's base; past a few hours another
# attempt rarely helps before the next scheduled window anyway.
BACKOFF_CAP_S = 6 * 3600


def retry_delay(attempt: int, retry_max: int, backoff_seconds: int) -> float | None:
    """Seconds to wait before retrying after attempt number ``attempt`` failed.

    ``attempt`` counts from 1 (the scheduled run itself); None when the group
    allows no further attempt.
    """
    if attempt < 1 or attempt > retry_max:
        return None
    base = max(1, backoff_seconds)
    # The cap never cuts below the base the operator chose.
    cap = max(base, BACKOFF_CAP_S)
    return float(min(base * 2 ** (attempt - 1), cap))


def attempt_of(args: dict[str, Any]) -> int:
    """The attempt number recorded in a job's args (1 when absent or odd)."""
    value = args.get("attempt", 1)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return 1
