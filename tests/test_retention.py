"""services.retention: which sets ``dcb prune`` keeps. Pure logic, synthetic sets, no Docker.

Every expectation below is worked out by hand from a calendar (2026-01-01 is a Thursday), not by
re-running the algorithm. The first part uses full sets only (every item in every set), where
per-item retention must give exactly restic's per-set results; the second mixes full,
databases-only, volumes-only and safety sets.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dcb.services.config import RetentionConfig, RetentionOverride, load_config
from dcb.services.errors import ConfigError
from dcb.services.retention import Decision, Item, UndoWindow, items_of, plan, undo_windows
from dcb.services.store import Artifact, BackupSet
from tests.conftest import run_dcb

NOWHERE = Path("/nonexistent")


def at(stamp: str) -> datetime:
    """``"2026-04-10 12:00"`` as a UTC datetime."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


DBS = (("database", "dart_cloud"), ("database", "functions_db"), ("globals", "globals"))
VOLS = (("volume", "functions_data"),)
FULL = DBS + VOLS


def arts(items: tuple[tuple[str, str], ...]) -> tuple[Artifact, ...]:
    return tuple(Artifact(kind=k, name=n, file=f"{k}-{n}", size_bytes=1, sha256=None,
                          compression="none") for k, n in items)


def mk(stamp: str, status: str = "complete", items: tuple[tuple[str, str], ...] = FULL,
       sid: str | None = None, **extra: str) -> BackupSet:
    """A set whose id is its timestamp (plus the status, when not complete), holding
    ``items`` (every database, the roles and the volume by default)."""
    if sid is None:
        sid = stamp if status == "complete" else f"{stamp} {status}"
    return BackupSet(id=sid, path=NOWHERE, status=status, created_at=at(stamp),
                     artifacts=arts(items), extra=dict(extra))


def policy(last: int = 0, daily: int = 0, weekly: int = 0, monthly: int = 0) -> RetentionConfig:
    return RetentionConfig(
        keep_last=last, keep_daily=daily, keep_weekly=weekly, keep_monthly=monthly
    )


def kept(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    """Kept sets with the rules that keep them. For a set kept by the keep_* rules, every
    item of it must be kept by the same rules (true of full sets only): those rules."""
    out = {}
    for d in decisions:
        if not d.keep:
            continue
        if d.kept_by:
            assert [k.item for k in d.kept_by] == items_of(d.set), d
            assert len({k.rules for k in d.kept_by}) == 1, d
            out[d.set.id] = d.kept_by[0].rules
        else:
            out[d.set.id] = d.reasons
    return out


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
        "2026-04-10 12:00": ("daily 1", "newest copy"),
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
        "2026-04-10 12:00": ("weekly 1", "newest copy"),  # W15, the week is not over
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
    expected: dict[str, tuple[str, ...]] = {"2026-04-10 12:00": ("weekly 1", "newest copy")}
    for n, sunday in enumerate(reversed(sundays), start=2):
        expected[f"{sunday.isoformat()} 12:00"] = (f"weekly {n}",)
    assert kept(decisions) == expected
    assert removed(decisions)["2026-01-01 12:00"] == ("remove",)


def test_monthly_keeps_newest_set_of_each_month() -> None:
    decisions = plan(series(), policy(monthly=3), NOW)
    assert kept(decisions) == {
        "2026-04-10 12:00": ("monthly 1", "newest copy"),
        "2026-03-31 12:00": ("monthly 2",),
        "2026-02-28 23:59": ("monthly 3",),
    }
    assert removed(decisions)["2026-01-31 12:00"] == ("remove",)


def test_rules_combined_list_every_reason() -> None:
    decisions = plan(series(), policy(daily=7, weekly=4, monthly=3), NOW)
    assert kept(decisions) == {
        "2026-04-10 12:00": ("daily 1", "weekly 1", "monthly 1", "newest copy"),
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
        "2026-03-04 10:00": ("daily 1", "newest copy"),
        "2026-03-03 10:00": ("daily 2",),
        "2026-03-02 10:00": ("daily 3",),
    }


def test_weeks_are_iso_weeks_across_the_new_year() -> None:
    # Tue 2024-12-31 belongs to ISO week 2025-W01, like Fri 2025-01-03; Sat 2024-12-28 is 2024-W52.
    sets = [mk("2024-12-28 12:00"), mk("2024-12-31 12:00"), mk("2025-01-03 12:00")]
    decisions = plan(sets, policy(weekly=2), at("2025-01-04 00:00"))
    assert kept(decisions) == {
        "2025-01-03 12:00": ("weekly 1", "newest copy"),
        "2024-12-28 12:00": ("weekly 2",),
    }
    # ...whereas months follow the calendar: December's newest is the 31st.
    decisions = plan(sets, policy(monthly=2), at("2025-01-04 00:00"))
    assert kept(decisions) == {
        "2025-01-03 12:00": ("monthly 1", "newest copy"),
        "2024-12-31 12:00": ("monthly 2",),
    }


def test_same_day_week_and_month_a_year_apart_are_different_buckets() -> None:
    # Tue 2025-03-04 is 2025-W10, Wed 2026-03-04 is 2026-W10: nothing in between.
    sets = [mk("2025-03-04 12:00"), mk("2026-03-04 12:00")]
    now = at("2026-03-05 00:00")
    for rule in ("daily", "weekly", "monthly"):
        decisions = plan(sets, policy(**{rule: 2}), now)
        assert kept(decisions) == {
            "2026-03-04 12:00": (f"{rule} 1", "newest copy"),
            "2025-03-04 12:00": (f"{rule} 2",),
        }


def test_days_are_utc_days() -> None:
    # 01:00 at UTC+2 on Mar 11 is 23:00 UTC on Mar 10: the same day as the 12:00 UTC set.
    plus2 = timezone(timedelta(hours=2))
    late = BackupSet(id="late", path=NOWHERE, status="complete",
                     created_at=datetime(2026, 3, 11, 1, 0, tzinfo=plus2), artifacts=arts(FULL))
    sets = [mk("2026-03-11 12:00"), late, mk("2026-03-10 12:00")]
    decisions = plan(sets, policy(daily=2), at("2026-03-12 00:00"))
    assert kept(decisions) == {
        "2026-03-11 12:00": ("daily 1", "newest copy"),
        "late": ("daily 2",),
    }


# --- keep_last and the safety rules --------------------------------------------------------


def test_keep_last() -> None:
    sets = [mk(f"2026-05-01 0{h}:00") for h in range(1, 6)]
    decisions = plan(sets, policy(last=3), at("2026-05-01 12:00"))
    assert kept(decisions) == {
        "2026-05-01 05:00": ("last 1", "newest copy"),
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
        "2026-05-02 10:00": ("last 1", "daily 1", "weekly 1", "monthly 1", "newest copy"),
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
        "2026-05-03 09:00": ("no retention policy", "newest copy"),
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
        "2026-06-05 12:00": ("daily 1", "newest copy"),
        "2026-06-04 12:00": ("daily 2",),
        "2026-06-03 12:00": ("daily 3",),
    }
    gone = removed(decisions)
    assert gone["2026-06-05 20:00 failed"] == ("failed run",)
    assert sum(r == ("failed run",) for r in gone.values()) == 6
    assert gone["2026-06-02 12:00"] == gone["2026-06-01 12:00"] == ("remove",)

    decisions = plan(sets, policy(last=2), now)
    assert kept(decisions) == {
        "2026-06-05 12:00": ("last 1", "newest copy"),
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
        "2026-07-10 10:00": ("last 1", "newest copy"),
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
        "2026-08-03 10:00": ("daily 1", "newest copy"),
        "2026-08-02 10:00 legacy": ("daily 2",),
    }
    assert removed(decisions) == {"2026-08-01 10:00 legacy": ("remove",)}


def test_only_legacy_sets_the_newest_is_protected() -> None:
    sets = [mk("2026-08-02 10:00", "legacy"), mk("2026-08-01 10:00", "legacy"),
            mk("2026-08-03 10:00", "failed")]
    decisions = plan(sets, policy(monthly=1), at("2026-08-03 12:00"))
    assert kept(decisions) == {"2026-08-02 10:00 legacy": ("monthly 1", "newest copy")}


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
        "2026-05-10 11:00": ("daily 1", "newest copy"),
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
    a = mk("2026-05-01 10:00", sid="a")
    b = mk("2026-05-01 10:00", sid="b")
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


# --- per item: full, databases-only, volumes-only and safety sets --------------------------
#
# A hundred days again, now of a stack whose volume backups stopped with April:
#   Jan 1 - Mar 31 02:00   full sets (both databases, the roles, the volume)
#   Apr 1 - Apr 10         databases-only sets at 02:00 and 14:00 (`dcb backup --db`)
#   Apr 3, Apr 8 20:00     volumes-only sets (`dcb backup --volume`)
#   safety sets            of four restores: A (verified Apr 9 10:05, window over at NOW),
#                          B (verified Apr 10 16:02, window open), C (failed), D (no entry:
#                          still running or killed)
# With 7/4/12 each item keeps its own newest copies: the databases' dailies are the April
# 14:00 sets, the volume's dailies reach back into March. Safety sets count for nothing.

D = "database dart_cloud, database functions_db, roles"
V = "volume functions_data"
UNDO = {
    "restore-A": UndoWindow(at("2026-04-10 10:05")),
    "restore-B": UndoWindow(at("2026-04-11 16:02")),
    "restore-C": UndoWindow(None, "failed or did not verify"),
}


def mixed_series() -> list[BackupSet]:
    sets = [mk(f"{date(2026, 1, 1) + timedelta(days=i)} 02:00") for i in range(90)]
    assert sets[-1].id == "2026-03-31 02:00"
    for day in range(1, 11):
        sets += [mk(f"2026-04-{day:02} {h}", items=DBS) for h in ("02:00", "14:00")]
    sets += [mk("2026-04-03 20:00", items=VOLS), mk("2026-04-08 20:00", items=VOLS)]
    for stamp, rid in (("2026-04-09 10:00", "A"), ("2026-04-10 16:00", "B"),
                       ("2026-04-02 09:00", "C"), ("2026-04-10 17:00", "D")):
        sets.append(mk(stamp, items=(("database", "dart_cloud"), *VOLS), sid=f"safety {rid}",
                       purpose="safety", restore_id=f"restore-{rid}"))
    random.Random(15).shuffle(sets)
    return sets


def reasons_of_kept(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    return {d.set.id: d.reasons for d in decisions if d.keep}


def test_each_item_keeps_its_own_7_4_12_and_safety_sets_their_undo_window() -> None:
    decisions = plan(mixed_series(), policy(daily=7, weekly=4, monthly=12), NOW, UNDO)
    assert reasons_of_kept(decisions) == {
        "safety D": ("undo for restore-D, which recorded no end (still running, or "
                     "interrupted): kept",),
        "safety B": ("undo for restore-B until 2026-04-11 16:02 UTC",),
        "2026-04-10 14:00": (f"{D}: daily 1, weekly 1, monthly 1, newest copy",),
        "2026-04-09 14:00": (f"{D}: daily 2",),
        "2026-04-08 20:00": (f"{V}: daily 1, weekly 1, monthly 1, newest copy",),
        "2026-04-08 14:00": (f"{D}: daily 3",),
        "2026-04-07 14:00": (f"{D}: daily 4",),
        "2026-04-06 14:00": (f"{D}: daily 5",),
        "2026-04-05 14:00": (f"{D}: daily 6, weekly 2",),
        "2026-04-04 14:00": (f"{D}: daily 7",),
        "2026-04-03 20:00": (f"{V}: daily 2, weekly 2",),
        "safety C": ("undo for restore-C, which failed or did not verify: kept until removed "
                     "by hand",),
        "2026-03-31 02:00": (f"{D}: monthly 2", f"{V}: daily 3, monthly 2"),
        "2026-03-30 02:00": (f"{V}: daily 4",),
        "2026-03-29 02:00": (f"{D}: weekly 3", f"{V}: daily 5, weekly 3"),
        "2026-03-28 02:00": (f"{V}: daily 6",),
        "2026-03-27 02:00": (f"{V}: daily 7",),
        "2026-03-22 02:00": (f"{D}, {V}: weekly 4",),
        "2026-02-28 02:00": (f"{D}, {V}: monthly 3",),
        "2026-01-31 02:00": (f"{D}, {V}: monthly 4",),
    }
    gone = removed(decisions)
    assert gone["safety A"] == ("undo window of restore-A ended 2026-04-10 10:05 UTC",)
    assert gone["2026-04-10 02:00"] == gone["2026-03-26 02:00"] == ("remove",)
    assert len(gone) == 90 + 20 + 2 + 4 - 20
    # Structured too: which item keeps the set, by which rules.
    by_id = {d.set.id: d for d in decisions}
    assert [(k.item, k.rules) for k in by_id["2026-03-31 02:00"].kept_by] == [
        (Item("database", "dart_cloud"), ("monthly 2",)),
        (Item("database", "functions_db"), ("monthly 2",)),
        (Item("globals", "globals"), ("monthly 2",)),
        (Item("volume", "functions_data"), ("daily 3", "monthly 2")),
    ]
    assert by_id["safety B"].kept_by == ()


def test_a_newer_partial_set_never_prunes_the_only_copies_of_another_item() -> None:
    # The sequence: two full sets, then `dcb backup --db functions_db` (with roles).
    sets = [mk("2026-12-03 09:00", sid="full 1"), mk("2026-12-03 09:10", sid="full 2"),
            mk("2026-12-03 09:20", items=(("database", "functions_db"), ("globals", "globals")),
               sid="db only")]
    decisions = plan(sets, policy(daily=7, weekly=4, monthly=12), at("2026-12-03 10:00"))
    assert reasons_of_kept(decisions) == {
        "db only": ("database functions_db, roles: daily 1, weekly 1, monthly 1, newest copy",),
        "full 2": ("database dart_cloud, volume functions_data: daily 1, weekly 1, monthly 1, "
                   "newest copy",),
    }
    assert removed(decisions) == {"full 1": ("remove",)}


def test_per_group_policies() -> None:
    vol_short = RetentionConfig(volumes=RetentionOverride(keep_daily=2, keep_weekly=0,
                                                          keep_monthly=0))
    decisions = plan(mixed_series(), vol_short, NOW, UNDO)
    kept_sets = reasons_of_kept(decisions)
    assert kept_sets["2026-04-08 20:00"] == (f"{V}: daily 1, newest copy",)
    assert kept_sets["2026-04-03 20:00"] == (f"{V}: daily 2",)
    # The full sets stay only for the databases now; the volume's March dailies go.
    assert kept_sets["2026-03-31 02:00"] == (f"{D}: monthly 2",)
    assert kept_sets["2026-03-22 02:00"] == (f"{D}: weekly 4",)
    for gone in ("2026-03-30 02:00", "2026-03-28 02:00", "2026-03-27 02:00"):
        assert removed(decisions)[gone] == ("remove",)
    # The databases keep their inherited 7/4/12.
    assert kept_sets["2026-04-04 14:00"] == (f"{D}: daily 7",)

    db_last3 = RetentionConfig(keep_daily=0, keep_weekly=0, keep_monthly=0,
                               databases=RetentionOverride(keep_last=3),
                               volumes=RetentionOverride(keep_monthly=2))
    kept_sets = reasons_of_kept(plan(mixed_series(), db_last3, NOW, UNDO))
    assert {k: v for k, v in kept_sets.items() if not k.startswith("safety")} == {
        "2026-04-10 14:00": (f"{D}: last 1, newest copy",),
        "2026-04-10 02:00": (f"{D}: last 2",),
        "2026-04-09 14:00": (f"{D}: last 3",),
        "2026-04-08 20:00": (f"{V}: monthly 1, newest copy",),
        "2026-03-31 02:00": (f"{V}: monthly 2",),
    }


def test_all_zero_policy_of_one_group_keeps_every_copy_of_its_items() -> None:
    keep_volumes = RetentionConfig(keep_daily=1, keep_weekly=0, keep_monthly=0,
                                   volumes=RetentionOverride(0, 0, 0, 0))
    decisions = plan(mixed_series(), keep_volumes, NOW, UNDO)
    kept_sets = reasons_of_kept(decisions)
    assert kept_sets["2026-04-10 14:00"] == (f"{D}: daily 1, newest copy",)
    assert kept_sets["2026-04-08 20:00"] == (f"{V}: no retention policy, newest copy",)
    assert kept_sets["2026-01-01 02:00"] == (f"{V}: no retention policy",)
    # 90 full + 2 volumes-only sets, the newest databases-only set, safety B, C, D.
    assert len(kept_sets) == 90 + 2 + 1 + 3


def test_safety_sets_never_count_as_copies() -> None:
    sets = [mk("2026-05-01 10:00"),
            mk("2026-05-02 10:00", sid="safety", purpose="safety", restore_id="r1")]
    undo = {"r1": UndoWindow(at("2026-05-03 10:00"))}
    decisions = plan(sets, policy(last=1), at("2026-05-02 12:00"), undo)
    assert reasons_of_kept(decisions) == {
        "safety": ("undo for r1 until 2026-05-03 10:00 UTC",),
        "2026-05-01 10:00": (f"{D}, {V}: last 1, newest copy",),
    }
    # The window ends at its end: kept before, removable from then on.
    decisions = plan(sets, policy(last=1), at("2026-05-03 10:00"), undo)
    assert removed(decisions) == {"safety": ("undo window of r1 ended 2026-05-03 10:00 UTC",)}


def test_safety_sets_whose_restore_is_unknown_are_kept() -> None:
    now = at("2026-05-10 12:00")
    sets = [mk("2026-05-01 10:00", sid="no id", purpose="safety"),
            mk("2026-05-01 11:00", sid="unknown", purpose="safety", restore_id="r9"),
            mk("2026-05-01 12:00", sid="failed", purpose="safety", restore_id="r8")]
    decisions = plan(sets, policy(daily=1), now, {"r8": UndoWindow(None, "failed")})
    assert reasons_of_kept(decisions) == {
        "failed": ("undo for r8, which failed: kept until removed by hand",),
        "unknown": ("undo for r9, which recorded no end (still running, or interrupted): "
                    "kept",),
        "no id": ("safety snapshot of an unknown restore: kept until removed by hand",),
    }
    # Without any undo information (a replication destination, say) they are kept as well.
    assert all(d.keep for d in plan(sets, policy(daily=1), now))


def test_status_rules_come_before_the_purpose() -> None:
    now = at("2026-05-10 12:00")
    sets = [mk("2026-05-10 11:00", "failed", sid="failed safety", purpose="safety",
               restore_id="r1"),
            mk("2026-05-08 11:00", "incomplete", sid="stale safety", purpose="safety",
               restore_id="r1"),
            mk("2026-05-10 10:00")]
    decisions = plan(sets, policy(daily=1), now, {})
    assert removed(decisions) == {"failed safety": ("failed run",),
                                  "stale safety": ("incomplete, older than 1 day",)}


def test_unknown_purpose_is_kept_and_takes_no_slot() -> None:
    sets = [mk("2026-05-02 10:00", sid="odd", purpose="replica-of-something"),
            mk("2026-05-01 10:00")]
    decisions = plan(sets, policy(last=1), at("2026-05-03 00:00"))
    assert reasons_of_kept(decisions) == {
        "odd": ("unknown purpose 'replica-of-something'",),
        "2026-05-01 10:00": (f"{D}, {V}: last 1, newest copy",),
    }


def test_legacy_sets_take_part_per_item() -> None:
    # The old scripts' sets hold both databases and the volume, no roles.
    legacy = mk("2026-08-01 02:00", "legacy", items=(("database", "dart_cloud"),
                                                    ("database", "functions_db"), *VOLS))
    sets = [legacy, mk("2026-08-02 02:00", items=DBS), mk("2026-08-03 02:00", items=DBS)]
    decisions = plan(sets, policy(last=1), at("2026-08-03 12:00"))
    assert reasons_of_kept(decisions) == {
        "2026-08-03 02:00": (f"{D}: last 1, newest copy",),
        "2026-08-01 02:00 legacy": (f"{V}: last 1, newest copy",),
    }
    assert removed(decisions) == {"2026-08-02 02:00": ("remove",)}


def test_a_good_set_holding_nothing_goes_unless_there_is_no_policy() -> None:
    sets = [mk("2026-05-02 10:00", items=(), sid="empty"), mk("2026-05-01 10:00")]
    now = at("2026-05-03 00:00")
    assert removed(plan(sets, policy(daily=7), now)) == {"empty": ("holds no artifact",)}
    assert reasons_of_kept(plan(sets, policy(), now))["empty"] == ("no retention policy",)


def test_negative_override_is_refused() -> None:
    bad = RetentionConfig(volumes=RetentionOverride(keep_daily=-1))
    with pytest.raises(ValueError):
        plan([mk("2026-05-01 10:00")], bad, NOW)


# --- undo windows from the run history -------------------------------------------------------


def test_undo_windows_from_history() -> None:
    history = [
        {"kind": "backup", "id": "x", "at": "2026-05-01T10:00:00+00:00"},
        {"kind": "restore", "id": "r1", "ok": True, "at": "2026-05-01T10:00:00+00:00",
         "safety_set_id": "s1"},
        {"kind": "restore", "id": "r2", "ok": False, "at": "2026-05-01T11:00:00+00:00"},
        {"kind": "restore", "id": "r3", "ok": True},
        {"kind": "restore", "id": "r4", "ok": True, "at": "yesterday"},
        {"kind": "restore", "id": "r5", "ok": False, "at": "2026-05-01T12:00:00+00:00"},
        {"kind": "restore", "id": "r5", "ok": True, "at": "2026-05-01T13:00:00+02:00"},
        {"kind": "restore", "id": "r6", "ok": False, "at": "2026-05-01T12:00:00+00:00"},
        {"kind": "undo-release", "id": "r6", "ok": True, "at": "2026-05-01T15:00:00+00:00"},
        {"kind": "restore", "id": "r7", "ok": True, "at": "2026-05-01T12:00:00+00:00"},
        {"kind": "undo-release", "id": "r7", "at": "2026-05-01T12:30:00+00:00"},
    ]
    w = undo_windows(history, keep_undo_hours=24)
    assert w["r1"] == UndoWindow(at("2026-05-02 10:00"))
    assert w["r2"].ends_at is None and "failed" in w["r2"].note
    assert w["r3"].ends_at is None and w["r4"].ends_at is None
    assert w["r5"] == UndoWindow(at("2026-05-02 11:00"))  # the last entry wins, in UTC
    # Released (by `dcb undo --release` or after its window): the window ended then, even
    # for a restore that failed (whose safety set would otherwise be kept forever).
    assert w["r6"] == UndoWindow(at("2026-05-01 15:00"))
    assert w["r7"] == UndoWindow(at("2026-05-01 12:30"))
    assert set(w) == {"r1", "r2", "r3", "r4", "r5", "r6", "r7"}
    assert undo_windows(history, keep_undo_hours=0)["r1"] == UndoWindow(at("2026-05-01 10:00"))
    assert undo_windows(history, keep_undo_hours=1.5)["r1"].ends_at == at("2026-05-01 11:30")


# --- [retention.databases] and [retention.volumes] -------------------------------------------


def test_per_group_tables_inherit_each_key_they_do_not_set(tmp_path: Path) -> None:
    f = tmp_path / "dcb.toml"
    f.write_text("[retention]\nkeep_daily = 5\n[retention.volumes]\nkeep_daily = 3\n"
                 "keep_monthly = 2\n")
    cfg = load_config(str(f), environ={"DCB_RETENTION_DATABASES_KEEP_WEEKLY": "9"},
                      overrides={"retention.volumes.keep_last": 1})
    r = cfg.retention
    assert r.for_group("volumes") == RetentionConfig(keep_last=1, keep_daily=3, keep_weekly=4,
                                                     keep_monthly=2)
    assert r.for_group("databases") == RetentionConfig(keep_last=0, keep_daily=5,
                                                       keep_weekly=9, keep_monthly=12)
    assert cfg.sources["retention.volumes.keep_daily"] == f"file {f}"
    assert cfg.sources["retention.volumes.keep_last"] == "command line"
    assert cfg.sources["retention.databases.keep_weekly"] == (
        "env DCB_RETENTION_DATABASES_KEEP_WEEKLY")
    assert cfg.sources["retention.databases.keep_daily"] == (
        f"as retention.keep_daily (file {f})")
    # `dcb config --show` lists the effective value of every key with its source.
    shown = cfg.as_dict()["retention"]
    assert shown["databases.keep_daily"] == 5 and shown["volumes.keep_weekly"] == 4
    out = run_dcb("config", "--show", "--config", str(f)).out
    line = next(x for x in out.splitlines() if x.startswith("retention.databases.keep_daily"))
    assert line.split()[1:] == ["5", "as", "retention.keep_daily", "(file", f"{f})"]


def test_defaults_inherit_retention(tmp_path: Path) -> None:
    f = tmp_path / "dcb.toml"
    f.write_text("")
    r = load_config(str(f), environ={}).retention
    assert r.for_group("volumes") == r.for_group("databases") == RetentionConfig()


@pytest.mark.parametrize(("content", "expected"), [
    ("[retention.volumes]\nkeep_hourly = 3\n", "unknown key [retention.volumes] keep_hourly"),
    ("[retention]\nvolumes = 3\n", "[retention] volumes must be a table"),
    ("[retention.databases]\nkeep_daily = -1\n",
     "[retention.databases] keep_daily must be >= 0"),
    ('[retention.volumes]\nkeep_daily = "3"\n',
     "[retention.volumes] keep_daily: expected an integer"),
    ("[retention.images]\nkeep_daily = 3\n", "unknown key [retention] images"),
])
def test_bad_group_tables_are_one_line_exit_2(tmp_path: Path, content: str,
                                              expected: str) -> None:
    f = tmp_path / "dcb.toml"
    f.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(str(f), environ={})
    r = run_dcb("prune", "--dry-run", "--config", str(f))
    assert r.code == 2
    assert r.err.splitlines()[0].startswith(f"dcb: {f}: {expected}")
    assert "Traceback" not in r.err
