"""server_core.cron: validation names what is wrong, next runs, descriptions."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from server_core import cron
from server_core.errors import InvalidInput

UTC = dt.UTC


def ts(*args: int, tz: dt.tzinfo = UTC) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("* * * * *", "* * * * *"),
        ("  0   2 * *   * ", "0 2 * * *"),
        ("@daily", "0 0 * * *"),
        ("@HOURLY", "0 * * * *"),
        ("@weekly", "0 0 * * 0"),
        ("*/15 8-18 * * mon-fri", "*/15 8-18 * * mon-fri"),
        ("0 0 L * *", "0 0 L * *"),
    ],
)
def test_valid_expressions_are_normalised(given: str, normalised: str) -> None:
    assert cron.validate(given) == normalised


@pytest.mark.parametrize(
    ("expr", "says"),
    [
        ("", "empty"),
        ("* * * *", "must have 5 fields"),
        ("0 * * * * *", "got 6"),  # no seconds field
        ("61 * * * *", "minute field '61'"),
        ("0 24 * * *", "hour field '24'"),
        ("0 0 0 * *", "day of month field '0'"),
        ("0 0 * 13 *", "month field '13'"),
        ("0 0 * * 8", "day of week field '8'"),
        ("0 0 * * funday", "day of week field 'funday'"),
        ("*/0 * * * *", "minute field"),
        ("H * * * *", "hashed or random"),
        ("0 0 30 2 *", "never fires"),
        ("@fortnightly", "shorthand"),
        ("0 0 * * 1;rm", "invalid characters"),
    ],
)
def test_invalid_expressions_name_the_problem(expr: str, says: str) -> None:
    with pytest.raises(InvalidInput) as err:
        cron.validate(expr)
    assert err.value.field == "cron"
    assert says in err.value.message


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidInput, match="must be a string"):
        cron.validate(5)  # type: ignore[arg-type]


def test_next_runs_are_strictly_after_and_in_order() -> None:
    after = ts(2026, 3, 2, 2, 0)  # a Monday, exactly on a firing
    runs = cron.next_runs("0 2 * * *", after, tz=UTC)
    assert runs == [ts(2026, 3, d, 2, 0) for d in range(3, 8)]
    assert cron.next_runs("*/15 * * * *", after, 3, tz=UTC) == [
        after + 900,
        after + 1800,
        after + 2700,
    ]


def test_next_runs_follow_local_daylight_saving() -> None:
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    # Clocks go forward on 29 March 2026: 03:30 local stays 03:30 local.
    runs = cron.next_runs("30 3 * * *", ts(2026, 3, 28, 12, 0, tz=berlin), 2, tz=berlin)
    assert [dt.datetime.fromtimestamp(r, berlin).strftime("%d %H:%M") for r in runs] == [
        "29 03:30",
        "30 03:30",
    ]
    assert runs[1] - runs[0] == 86_400  # both after the change


def test_previous_run_includes_the_instant_itself() -> None:
    at = ts(2026, 3, 2, 2, 0)
    assert cron.previous_run("0 2 * * *", at, tz=UTC) == at
    assert cron.previous_run("0 2 * * *", at - 1, tz=UTC) == at - 86_400


@pytest.mark.parametrize(
    ("expr", "seconds"),
    [
        ("* * * * *", 60),
        ("*/15 * * * *", 900),
        ("0 * * * *", 3600),
        ("0 2,14 * * *", 12 * 3600),
        ("30 2 * * *", 86_400),
        ("0 3 * * 1-5", 86_400),
        ("0 3 * * 0", 7 * 86_400),
        ("0 4 1 * *", 28 * 86_400),
        ("0 4 1 7 *", 365 * 86_400),
    ],
)
def test_min_interval(expr: str, seconds: int) -> None:
    assert cron.min_interval_seconds(expr) == seconds


@pytest.mark.parametrize(
    ("expr", "text"),
    [
        ("* * * * *", "every minute"),
        ("*/15 * * * *", "every 15 minutes"),
        ("0 * * * *", "every hour on the hour"),
        ("5 * * * *", "every hour at minute 5"),
        ("5 */2 * * *", "every 2 hours at minute 5"),
        ("30 2 * * *", "every day at 02:30"),
        ("0 2,14 * * *", "every day at 02:00 and 14:00"),
        ("0 3 * * 1", "every Monday at 03:00"),
        ("0 3 * * MON", "every Monday at 03:00"),
        ("0 3 * * 1-5", "every weekday (Monday to Friday) at 03:00"),
        ("0 3 * * 1,3", "every Monday and Wednesday at 03:00"),
        ("0 4 1 * *", "on the 1st of every month at 04:00"),
        ("0 4 22 * *", "on the 22nd of every month at 04:00"),
        ("0 4 1 7 *", "every year on July 1 at 04:00"),
        ("0 0 L * *", "on the last day of every month at 00:00"),
        ("0 0 1-7 * 1", "cron 0 0 1-7 * 1"),
        ("not cron", "not cron"),
    ],
)
def test_describe(expr: str, text: str) -> None:
    assert cron.describe(expr) == text


def test_quick_picks_are_valid_and_described() -> None:
    for label, expr in cron.QUICK_PICKS:
        assert cron.validate(expr) == expr, label
        assert not cron.describe(expr).startswith("cron "), label
