"""services.retention: which sets ``dcb prune`` keeps. Pure logic, synthetic sets, no Docker.

Every expectation below is worked out by hand from a calendar (2026-01-01 is a Thursday), not by
re-running the algorithm.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dcb.services.config import RetentionConfig
from dcb.services.retention import Decision, plan
from dcb.services.store import BackupSet

NOWHERE = Path("/nonexistent")


def at(stamp: str) -> datetime:
    """``"2026-04-10 12:00"`` as a UTC datetime."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def mk(stamp: str, status: str = "complete") -> BackupSet:
    """A set whose id is its timestamp (plus the status, when not complete)."""
    sid = stamp if status == "complete" else f"{stamp} {status}"
    return BackupSet(id=sid, path=NOWHERE, status=status, created_at=at(stamp))


def policy(last: int = 0, daily: int = 0, weekly: int = 0, monthly: int = 0) -> RetentionConfig:
    return RetentionConfig(
        keep_last=last, keep_daily=daily, keep_weekly=weekly, keep_monthly=monthly
    )


def kept(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    return {d.set.id: d.reasons for d in decisions if d.keep}


def removed(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    return {d.set.id: d.reasons for d in decisions if not d.keep}


# --- a 100-day series ---------------------------------------------------------------------
#
# One complete set a day at 12:00 from Thu 2026-01-01 to Fri 2026-04-10 (31 + 28 + 31 + 10 =
# 100 days), plus extra sets on some days:
#   2026-04-08 06:00 and 09:00   older than that day's 12:00 set: never kept by a day bucket
#   2026-03-31 03:00             older than the 12:00 set: March's monthly set is 03-31 12:00
#   2026-02-28 23:59             newer than the 12:00 set: February's monthly set is this one
#
# ISO weeks (Monday to Sunday) near the end: W15 = Apr 6-12, W14 = Mar 30-Apr 5,
# W13 = Mar 23-29, W12 = Mar 16-22, ... W01 = Dec 29 2025-Jan 4 2026.

NOW = at("2026-04-10 18:00")
EXTRAS = ("2026-04-08 06:00", "2026-04-08 09:00", "2026-03-31 03:00", "2026-02-28 23:59")


def series() -> list[BackupSet]:
    days = [date(2026, 1, 1) + timedelta(days=i) for i in range(100)]
    assert days[-1] == date(2026, 4, 10)
    sets = [mk(f"{d.isoformat()} 12:00") for d in days] + [mk(s) for s in EXTRAS]
    random.Random(4).shuffle(sets)  # plan() must not rely on input order
    return sets


def test_calendar_facts_the_expectations_rely_on() -> None:
    assert date(2026, 4, 10).isoweekday() == 5  # Friday
    for sunday in ("2026-01-04", "2026-03-22", "2026-03-29", "2026-04-05"):
        assert date.fromisoformat(sunday).isoweekday() == 7
    assert date(2026, 4, 5).isocalendar()[:2] == (2026, 14)
    assert date(2026, 1, 1).isocalendar()[:2] == (2026, 1)


def test_daily_keeps_newest_set_of_each_of_the_last_n_days() -> None:
    decisions = plan(series(), policy(daily=7), NOW)
    assert kept(decisions) == {
        "2026-04-10 12:00": ("daily 1", "newest complete"),
        "2026-04-09 12:00": ("daily 2",),
        "2026-04-08 12:00": ("daily 3",),
        "2026-04-07 12:00": ("daily 4",),
        "2026-04-06 12:00": ("daily 5",),
        "2026-04-05 12:00": ("daily 6",),
        "2026-04-04 12:00": ("daily 7",),
    }
    gone = removed(decisions)
    assert gone["2026-04-08 09:00"] == ("remove",)
    assert gone["2026-04-08 06:00"] == ("remove",)
    assert gone["2026-04-03 12:00"] == ("remove",)
    assert len(gone) == 104 - 7


def test_weekly_keeps_newest_set_of_each_iso_week() -> None:
    decisions = plan(series(), policy(weekly=4), NOW)
    assert kept(decisions) == {
        "2026-04-10 12:00": ("weekly 1", "newest complete"),  # W15, the week is not over
        "2026-04-05 12:00": ("weekly 2",),  # Sunday of W14
        "2026-03-29 12:00": ("weekly 3",),
        "2026-03-22 12:00": ("weekly 4",),
    }


def test_weekly_with_more_slots_than_weeks_keeps_one_set_per_week_only() -> None:
    # W01..W15: 15 weeks, each represented by its Sunday, except W15 by Friday Apr 10.
    # Thursday Jan 1 (the oldest set) shares W01 with Sunday Jan 4 and goes.
    decisions = plan(series(), policy(weekly=20), NOW)
    sundays = [date(2026, 1, 4) + timedelta(weeks=w) for w in range(14)]
    assert sundays[-1] == date(2026, 4, 5)
    expected: dict[str, tuple[str, ...]] = {"2026-04-10 12:00": ("weekly 1", "newest complete")}
    for n, sunday in enumerate(reversed(sundays), start=2):
        expected[f"{sunday.isoformat()} 12:00"] = (f"weekly {n}",)
    assert kept(decisions) == expected
    assert removed(decisions)["2026-01-01 12:00"] == ("remove",)


def test_monthly_keeps_newest_set_of_each_month() -> None:
    decisions = plan(series(), policy(monthly=3), NOW)
    assert kept(decisions) == {
        "2026-04-10 12:00": ("monthly 1", "newest complete"),
        "2026-03-31 12:00": ("monthly 2",),
        "2026-02-28 23:59": ("monthly 3",),
    }
    assert removed(decisions)["2026-01-31 12:00"] == ("remove",)


def test_rules_combined_list_every_reason() -> None:
    decisions = plan(series(), policy(daily=7, weekly=4, monthly=3), NOW)
    assert kept(decisions) == {
        "2026-04-10 12:00": ("daily 1", "weekly 1", "monthly 1", "newest complete"),
        "2026-04-09 12:00": ("daily 2",),
        "2026-04-08 12:00": ("daily 3",),
        "2026-04-07 12:00": ("daily 4",),
        "2026-04-06 12:00": ("daily 5",),
        "2026-04-05 12:00": ("daily 6", "weekly 2"),
        "2026-04-04 12:00": ("daily 7",),
        "2026-03-31 12:00": ("monthly 2",),
        "2026-03-29 12:00": ("weekly 3",),
        "2026-03-22 12:00": ("weekly 4",),
        "2026-02-28 23:59": ("monthly 3",),
    }
    assert len(removed(decisions)) == 104 - 11


def test_buckets_count_days_with_sets_not_calendar_days_from_now() -> None:
    # Nothing for three weeks: keep_daily=3 still keeps three sets, dated weeks ago.
    sets = [mk("2026-03-01 10:00"), mk("2026-03-02 10:00"), mk("2026-03-03 10:00"),
            mk("2026-03-04 10:00")]
    decisions = plan(sets, policy(daily=3), at("2026-03-25 10:00"))
    assert kept(decisions) == {
        "2026-03-04 10:00": ("daily 1", "newest complete"),
        "2026-03-03 10:00": ("daily 2",),
        "2026-03-02 10:00": ("daily 3",),
    }


def test_weeks_are_iso_weeks_across_the_new_year() -> None:
    # Tue 2024-12-31 belongs to ISO week 2025-W01, like Fri 2025-01-03; Sat 2024-12-28 is 2024-W52.
    sets = [mk("2024-12-28 12:00"), mk("2024-12-31 12:00"), mk("2025-01-03 12:00")]
    decisions = plan(sets, policy(weekly=2), at("2025-01-04 00:00"))
    assert kept(decisions) == {
        "2025-01-03 12:00": ("weekly 1", "newest complete"),
        "2024-12-28 12:00": ("weekly 2",),
    }
    # ...whereas months follow the calendar: December's newest is the 31st.
    decisions = plan(sets, policy(monthly=2), at("2025-01-04 00:00"))
    assert kept(decisions) == {
        "2025-01-03 12:00": ("monthly 1", "newest complete"),
        "2024-12-31 12:00": ("monthly 2",),
    }


def test_same_day_week_and_month_a_year_apart_are_different_buckets() -> None:
    # Tue 2025-03-04 is 2025-W10, Wed 2026-03-04 is 2026-W10: nothing in between.
    sets = [mk("2025-03-04 12:00"), mk("2026-03-04 12:00")]
    now = at("2026-03-05 00:00")
    for rule in ("daily", "weekly", "monthly"):
        decisions = plan(sets, policy(**{rule: 2}), now)
        assert kept(decisions) == {
            "2026-03-04 12:00": (f"{rule} 1", "newest complete"),
            "2025-03-04 12:00": (f"{rule} 2",),
        }


def test_days_are_utc_days() -> None:
    # 01:00 at UTC+2 on Mar 11 is 23:00 UTC on Mar 10: the same day as the 12:00 UTC set.
    plus2 = timezone(timedelta(hours=2))
    late = BackupSet(id="late", path=NOWHERE, status="complete",
                     created_at=datetime(2026, 3, 11, 1, 0, tzinfo=plus2))
    sets = [mk("2026-03-11 12:00"), late, mk("2026-03-10 12:00")]
    decisions = plan(sets, policy(daily=2), at("2026-03-12 00:00"))
    assert kept(decisions) == {
        "2026-03-11 12:00": ("daily 1", "newest complete"),
        "late": ("daily 2",),
    }


# --- keep_last and the safety rules --------------------------------------------------------


def test_keep_last() -> None:
    sets = [mk(f"2026-05-01 0{h}:00") for h in range(1, 6)]
    decisions = plan(sets, policy(last=3), at("2026-05-01 12:00"))
    assert kept(decisions) == {
        "2026-05-01 05:00": ("last 1", "newest complete"),
        "2026-05-01 04:00": ("last 2",),
        "2026-05-01 03:00": ("last 3",),
    }
    assert removed(decisions) == {
        "2026-05-01 02:00": ("remove",),
        "2026-05-01 01:00": ("remove",),
    }


def test_keep_last_combined_with_buckets_in_restic_order() -> None:
    sets = [mk("2026-05-01 09:00"), mk("2026-05-02 09:00"), mk("2026-05-02 10:00")]
    decisions = plan(sets, policy(last=2, daily=2, weekly=1, monthly=1), at("2026-05-03 00:00"))
    assert kept(decisions) == {
        "2026-05-02 10:00": ("last 1", "daily 1", "weekly 1", "monthly 1", "newest complete"),
        "2026-05-02 09:00": ("last 2",),
        "2026-05-01 09:00": ("daily 2",),
    }


def test_all_zero_policy_keeps_every_good_set() -> None:
    sets = [
        mk("2026-05-01 09:00"),
        mk("2026-05-02 09:00", "legacy"),
        mk("2026-05-03 09:00"),
        mk("2026-05-03 10:00", "failed"),
        mk("2026-05-01 10:00", "incomplete"),
    ]
    decisions = plan(sets, policy(), at("2026-05-03 12:00"))
    assert kept(decisions) == {
        "2026-05-03 09:00": ("no retention policy", "newest complete"),
        "2026-05-02 09:00 legacy": ("no retention policy",),
        "2026-05-01 09:00": ("no retention policy",),
    }
    # The safety net is for good sets only: dead runs still go.
    assert removed(decisions) == {
        "2026-05-03 10:00 failed": ("failed run",),
        "2026-05-01 10:00 incomplete": ("incomplete, older than 1 day",),
    }


def test_failed_sets_never_take_a_slot_nor_displace_the_newest_good_set() -> None:
    # Each day: a good set at 12:00, then a failed run at 18:00; the newest set of all failed.
    sets = []
    for day in range(1, 6):
        sets += [mk(f"2026-06-0{day} 12:00"), mk(f"2026-06-0{day} 18:00", "failed")]
    sets.append(mk("2026-06-05 20:00", "failed"))
    now = at("2026-06-05 21:00")

    decisions = plan(sets, policy(daily=3), now)
    assert kept(decisions) == {
        "2026-06-05 12:00": ("daily 1", "newest complete"),
        "2026-06-04 12:00": ("daily 2",),
        "2026-06-03 12:00": ("daily 3",),
    }
    gone = removed(decisions)
    assert gone["2026-06-05 20:00 failed"] == ("failed run",)
    assert sum(r == ("failed run",) for r in gone.values()) == 6
    assert gone["2026-06-02 12:00"] == gone["2026-06-01 12:00"] == ("remove",)

    decisions = plan(sets, policy(last=2), now)
    assert kept(decisions) == {
        "2026-06-05 12:00": ("last 1", "newest complete"),
        "2026-06-04 12:00": ("last 2",),
    }


def test_incomplete_sets_kept_for_a_day_and_never_take_a_slot() -> None:
    now = at("2026-07-10 12:00")
    sets = [
        mk("2026-07-10 11:00", "incomplete"),  # 1 h old: maybe still running
        mk("2026-07-10 10:00"),
        mk("2026-07-09 12:00", "incomplete"),  # exactly 1 day old: not older than a day yet
        mk("2026-07-09 10:00"),
        mk("2026-07-09 11:59", "incomplete"),  # 24 h 1 min old
        mk("2026-07-01 10:00", "incomplete"),
    ]
    decisions = plan(sets, policy(last=1), now)
    assert kept(decisions) == {
        "2026-07-10 11:00 incomplete": ("incomplete, may still be running",),
        "2026-07-10 10:00": ("last 1", "newest complete"),
        "2026-07-09 12:00 incomplete": ("incomplete, may still be running",),
    }
    assert removed(decisions) == {
        "2026-07-09 11:59 incomplete": ("incomplete, older than 1 day",),
        "2026-07-09 10:00": ("remove",),
        "2026-07-01 10:00 incomplete": ("incomplete, older than 1 day",),
    }


def test_legacy_sets_count_as_good() -> None:
    sets = [
        mk("2026-08-03 10:00"),
        mk("2026-08-02 10:00", "legacy"),
        mk("2026-08-01 10:00", "legacy"),
    ]
    decisions = plan(sets, policy(daily=2), at("2026-08-03 12:00"))
    assert kept(decisions) == {
        "2026-08-03 10:00": ("daily 1", "newest complete"),
        "2026-08-02 10:00 legacy": ("daily 2",),
    }
    assert removed(decisions) == {"2026-08-01 10:00 legacy": ("remove",)}


def test_only_legacy_sets_the_newest_is_protected() -> None:
    sets = [mk("2026-08-02 10:00", "legacy"), mk("2026-08-01 10:00", "legacy"),
            mk("2026-08-03 10:00", "failed")]
    decisions = plan(sets, policy(monthly=1), at("2026-08-03 12:00"))
    assert kept(decisions) == {"2026-08-02 10:00 legacy": ("monthly 1", "newest complete")}


def test_future_set_is_kept_and_takes_no_slot() -> None:
    now = at("2026-05-10 12:00")
    sets = [
        mk("2026-05-11 09:00"),  # tomorrow: the clock was wrong when it was made
        mk("2026-05-10 11:00"),
        mk("2026-05-09 11:00"),
        mk("2026-05-08 11:00"),
    ]
    decisions = plan(sets, policy(daily=2), now)
    assert kept(decisions) == {
        "2026-05-11 09:00": ("in the future (clock skew)",),
        "2026-05-10 11:00": ("daily 1", "newest complete"),
        "2026-05-09 11:00": ("daily 2",),
    }
    assert removed(decisions) == {"2026-05-08 11:00": ("remove",)}


def test_decisions_cover_every_set_newest_first() -> None:
    sets = series()
    decisions = plan(sets, policy(daily=7, weekly=4, monthly=3), NOW)
    assert sorted(d.set.id for d in decisions) == sorted(s.id for s in sets)
    stamps = [d.set.created_at for d in decisions]
    assert stamps == sorted(stamps, reverse=True)
    assert decisions[0].set.id == "2026-04-10 12:00"
    assert decisions[-1].set.id == "2026-01-01 12:00"


def test_equal_timestamps_stay_in_input_order() -> None:
    a = BackupSet(id="a", path=NOWHERE, status="complete", created_at=at("2026-05-01 10:00"))
    b = BackupSet(id="b", path=NOWHERE, status="complete", created_at=at("2026-05-01 10:00"))
    decisions = plan([a, b], policy(last=1), at("2026-05-02 00:00"))
    assert [(d.set.id, d.keep) for d in decisions] == [("a", True), ("b", False)]


def test_unknown_status_is_kept() -> None:
    decisions = plan([mk("2026-05-01 10:00", "weird")], policy(daily=1), at("2026-05-02 00:00"))
    assert [d.reasons for d in decisions] == [("unknown status 'weird'",)]
    assert decisions[0].keep


def test_empty_and_invalid() -> None:
    assert plan([], policy(daily=7), NOW) == []
    with pytest.raises(ValueError):
        plan([mk("2026-05-01 10:00")], policy(daily=-1), NOW)
