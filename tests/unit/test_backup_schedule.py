"""Backup schedule (5-field cron, UTC), the overdue rule and retention (infra/backupagent/schedule.py)."""

from __future__ import annotations

import calendar
from datetime import date, datetime, time, timedelta, timezone

import pytest
from hypothesis import assume, given, settings, strategies as st

from infra.backupagent import BackupAgentError
from infra.backupagent.schedule import Cron, ScheduleError, overdue, select_kept

UTC = timezone.utc


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize("expr, after, expected", [
    ("0 3 * * *", "2024-05-01 02:59", "2024-05-01 03:00"),
    ("0 3 * * *", "2024-05-01 03:00", "2024-05-02 03:00"),
    ("*/5 * * * *", "2024-05-01 10:07:30", "2024-05-01 10:10"),
    ("1-30/2 * * * *", "2024-05-01 10:29", "2024-05-01 11:01"),
    ("15 9-17 * * mon-fri", "2024-05-03 17:20", "2024-05-06 09:15"),
    ("0 0 1 */3 *", "2024-05-01 00:00", "2024-07-01 00:00"),
    ("0 0 * JAN,Jul SUN", "2024-05-01 00:00", "2024-07-07 00:00"),
    ("30 23 31 * *", "2024-04-01 00:00", "2024-05-31 23:30"),
    ("59 23 31 12 *", "2024-12-31 23:59", "2025-12-31 23:59"),
    ("0 0 29 2 *", "2096-03-01 00:00", "2104-02-29 00:00"),
    ("@hourly", "2024-05-01 10:00", "2024-05-01 11:00"),
    ("@daily", "2024-05-01 10:00", "2024-05-02 00:00"),
    ("@midnight", "2024-05-01 10:00", "2024-05-02 00:00"),
    ("@weekly", "2024-05-01 10:00", "2024-05-05 00:00"),
    ("@monthly", "2024-05-01 10:00", "2024-06-01 00:00"),
    ("@yearly", "2024-05-01 10:00", "2025-01-01 00:00"),
])
def test_the_next_run_is_the_first_matching_minute_strictly_after(expr, after, expected):
    assert Cron.parse(expr).next_after(at(after)) == at(expected)


def test_seven_and_zero_and_sun_all_mean_sunday():
    sundays = {Cron.parse(f"0 0 * * {d}").next_after(at("2024-05-01 00:00")) for d in ("0", "7", "sun", "Sun")}
    assert sundays == {at("2024-05-05 00:00")}
    assert Cron.parse("0 0 * * 5-7").next_after(at("2024-05-06 00:00")) == at("2024-05-10 00:00")


def test_both_day_fields_restricted_means_either_matches_as_in_vixie_cron():
    cron = Cron.parse("0 0 13 * fri")
    runs, t = [], at("2024-09-01 00:00")
    for _ in range(6):
        t = cron.next_after(t)
        runs.append(t.date())
    assert runs == [date(2024, 9, 6), date(2024, 9, 13), date(2024, 9, 20), date(2024, 9, 27),
                    date(2024, 10, 4), date(2024, 10, 11)]


def test_a_day_field_starting_with_a_star_combines_with_and_as_in_vixie_cron():
    # Vixie cron treats "*/2" as unrestricted for the OR rule: odd days that are also Mondays.
    assert Cron.parse("0 0 */2 * mon").next_after(at("2024-05-01 00:00")) == at("2024-05-13 00:00")


def test_times_in_other_zones_are_taken_as_utc_instants():
    berlin = timezone(timedelta(hours=2))
    assert Cron.parse("0 3 * * *").next_after(datetime(2024, 5, 1, 5, 30, tzinfo=berlin)) == at("2024-05-02 03:00")
    assert Cron.parse("0 3 * * *").next_after(datetime(2024, 5, 1, 4, 30, tzinfo=berlin)) == at("2024-05-01 03:00")


def test_a_naive_time_is_refused():
    with pytest.raises(ScheduleError, match="no time zone"):
        Cron.parse("0 3 * * *").next_after(datetime(2024, 5, 1))


def test_the_previous_run_may_be_the_given_minute_itself():
    cron = Cron.parse("0 3 * * *")
    assert cron.previous_at_or_before(at("2024-05-01 03:00:59")) == at("2024-05-01 03:00")
    assert cron.previous_at_or_before(at("2024-05-01 02:59")) == at("2024-04-30 03:00")
    assert Cron.parse("0 0 29 2 *").previous_at_or_before(at("2104-02-28 00:00")) == at("2096-02-29 00:00")


@pytest.mark.parametrize("expr, says", [
    ("61 * * * *", 'backupSchedule "61 * * * *": minute 61 is outside 0-59; e.g. "0 3 * * *" for 03:00 UTC daily'),
    ("0 24 * * *", "hour 24 is outside 0-23"),
    ("0 0 0 * *", "day-of-month 0 is outside 1-31"),
    ("0 0 * 13 *", "month 13 is outside 1-12"),
    ("0 0 * * 8", "day-of-week 8 is outside 0-7"),
    ("0 0 * * funday", "day-of-week 'funday' is not a number 0-7 or a name (sun, mon"),
    ("0 0 31 2 *", "day-of-month 31 never occurs in month 2"),
    ("0 0 31 apr,jun,sep,nov *", "never occurs"),
    ("0 3 * *", "expected 5 fields (minute hour day-of-month month day-of-week) or one of @hourly"),
    ("0 3 * * * *", "found 6"),
    ("@reboot", "@reboot is not one of @hourly"),
    ("*/0 * * * *", "minute step '0' in '*/0' is not a whole number of 1 or more"),
    ("5/10 * * * *", "a step needs * or a range before it (e.g. 5-59/10)"),
    ("0 0 * * fri-mon", "day-of-week range fri-mon runs backwards; put the lower value first (mon-fri)"),
    ("0 0 L * *", "day-of-month 'L' is not a number 1-31"),
    ("0 0 ,1 * *", "day-of-month '' is not a number"),
])
def test_bad_expressions_are_refused_naming_field_value_range_and_an_example(expr, says):
    with pytest.raises(ScheduleError) as refused:
        Cron.parse(expr)
    assert says in str(refused.value)
    assert str(refused.value).startswith(f'backupSchedule "{expr}": ')
    assert str(refused.value).endswith('e.g. "0 3 * * *" for 03:00 UTC daily')
    assert isinstance(refused.value, BackupAgentError)


def test_february_the_29th_is_possible():
    assert Cron.parse("0 0 29 2 *").next_after(at("2024-01-01 00:00")) == at("2024-02-29 00:00")


def test_finding_a_run_years_away_takes_well_under_a_millisecond_each():
    import timeit
    cron, t = Cron.parse("0 0 29 2 *"), at("2096-03-01 00:00")
    assert timeit.timeit(lambda: cron.next_after(t), number=200) < 0.5


# --- properties against an independent reference matcher ---------------------------------

def render(values: frozenset[int] | None, step: int | None) -> str:
    if values is None:
        return f"*/{step}" if step else "*"
    return ",".join(str(v) for v in sorted(values))


@st.composite
def crons(draw):
    """A cron expression and the reference sets it stands for."""
    spec = [("minute", 0, 59), ("hour", 0, 23), ("dom", 1, 31), ("month", 1, 12), ("dow", 0, 7)]
    texts, sets = [], {}
    for name, low, high in spec:
        kind = draw(st.sampled_from(["star", "step", "list"]))
        if kind == "list":
            values = frozenset(draw(st.sets(st.integers(low, high), min_size=1, max_size=4)))
            texts.append(render(values, None))
        else:
            step = draw(st.integers(2, 13)) if kind == "step" else None
            texts.append(render(None, step))
            values = frozenset(range(low, high + 1, step or 1))
        sets[name] = values
    sets["dow"] = frozenset(d % 7 for d in sets["dow"])
    sets["either"] = not texts[2].startswith("*") and not texts[4].startswith("*")
    return " ".join(texts), sets


def ref_day(sets, day: date) -> bool:
    by_date, by_weekday = day.day in sets["dom"], (day.weekday() + 1) % 7 in sets["dow"]
    if day.month not in sets["month"]:
        return False
    return (by_date or by_weekday) if sets["either"] else (by_date and by_weekday)


def ref_match(sets, t: datetime) -> bool:
    return t.minute in sets["minute"] and t.hour in sets["hour"] and ref_day(sets, t.date())


def ref_possible(sets) -> bool:
    return sets["either"] or any(d <= (29 if m == 2 else calendar.monthrange(2001, m)[1])
                                 for m in sets["month"] for d in sets["dom"])


def no_match_between(sets, low: datetime, high: datetime) -> bool:
    """No minute strictly between low and high matches (days first, minutes only on matching days)."""
    day = low.date()
    while day <= high.date():
        if ref_day(sets, day):
            for h in sets["hour"]:
                for m in sets["minute"]:
                    t = datetime.combine(day, time(h, m), UTC)
                    if low < t < high:
                        return False
        day += timedelta(days=1)
    return True


times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC))


@settings(max_examples=300, deadline=None)
@given(cron=crons(), t=times)
def test_the_next_run_matches_and_nothing_between_matches(cron, t):
    expr, sets = cron
    if not ref_possible(sets):
        with pytest.raises(ScheduleError, match="never occurs"):
            Cron.parse(expr)
        return
    following = Cron.parse(expr).next_after(t)
    assert following > t and following.second == following.microsecond == 0 and following.tzinfo == UTC
    assert ref_match(sets, following)
    assert no_match_between(sets, t, following)


@settings(max_examples=300, deadline=None)
@given(cron=crons(), t=times)
def test_the_previous_run_matches_and_the_next_one_after_it_is_later_than_the_time_given(cron, t):
    expr, sets = cron
    assume(ref_possible(sets))
    parsed = Cron.parse(expr)
    previous = parsed.previous_at_or_before(t)
    assert previous <= t and ref_match(sets, previous)
    assert parsed.next_after(previous) > t


# --- overdue ---------------------------------------------------------------------------------

DAILY = Cron.parse("0 3 * * *")
GRACE = timedelta(hours=1)
STARTED = at("2024-05-01 12:00")


def test_a_backup_after_the_last_scheduled_run_is_not_overdue():
    assert not overdue(DAILY, at("2024-05-02 03:00:02"), at("2024-05-02 10:00"), GRACE, STARTED)


def test_a_missed_run_is_overdue_only_once_its_grace_has_passed():
    last = at("2024-05-01 03:00:01")
    assert not overdue(DAILY, last, at("2024-05-02 03:59:59"), GRACE, STARTED)
    assert overdue(DAILY, last, at("2024-05-02 04:00"), GRACE, STARTED)


def test_a_backup_started_exactly_at_the_scheduled_minute_counts():
    assert not overdue(DAILY, at("2024-05-02 03:00"), at("2024-05-02 23:00"), GRACE, STARTED)


def test_without_any_backup_the_first_scheduled_run_after_the_agent_started_is_awaited():
    assert not overdue(DAILY, None, at("2024-05-02 03:59"), GRACE, STARTED)
    assert overdue(DAILY, None, at("2024-05-02 04:00"), GRACE, STARTED)
    assert not overdue(DAILY, None, at("2024-05-02 04:00"), GRACE, at("2024-05-02 03:00"))


def test_an_old_backup_is_overdue_even_right_after_the_agent_restarted():
    assert overdue(DAILY, at("2024-04-28 03:00"), at("2024-05-01 12:01"), GRACE, STARTED)


def test_a_negative_grace_is_refused():
    with pytest.raises(ScheduleError, match="negative"):
        overdue(DAILY, None, at("2024-05-02 04:00"), -GRACE, STARTED)


# --- retention -------------------------------------------------------------------------------

def test_retention_keeps_the_last_n_then_the_newest_of_recent_days_and_iso_weeks():
    backups = [
        ("mon-early", at("2024-04-29 01:00")), ("mon-late", at("2024-04-29 13:00")),  # ISO week 18
        ("sun-w17", at("2024-04-28 03:00")), ("sat-w17", at("2024-04-27 03:00")),     # ISO week 17
        ("w16", at("2024-04-17 03:00")), ("w15", at("2024-04-10 03:00")),
        ("tue-a", at("2024-04-30 03:00")), ("tue-b", at("2024-04-30 15:00")),
    ]
    assert select_kept(backups, keep_last=1, keep_daily=0, keep_weekly=0) == {"tue-b"}
    assert select_kept(backups, keep_last=2, keep_daily=0, keep_weekly=0) == {"tue-b", "tue-a"}
    assert select_kept(backups, keep_last=0, keep_daily=3, keep_weekly=0) == {"tue-b", "mon-late", "sun-w17"}
    assert select_kept(backups, keep_last=0, keep_daily=0, keep_weekly=3) == {"tue-b", "sun-w17", "w16"}
    assert select_kept(backups, 1, 2, 4) == {"tue-b", "mon-late", "sun-w17", "w16", "w15"}


def test_the_newest_backup_is_kept_even_when_every_count_is_zero():
    assert select_kept([("old", at("2024-01-01 00:00")), ("new", at("2024-01-02 00:00"))], 0, 0, 0) == {"new"}
    assert select_kept([], 0, 0, 0) == set()


def test_days_and_weeks_are_utc_whatever_zone_the_times_carry():
    tokyo = timezone(timedelta(hours=9))
    backups = [("a", datetime(2024, 5, 2, 8, 0, tzinfo=tokyo)), ("b", datetime(2024, 5, 2, 10, 0, tzinfo=tokyo))]
    assert select_kept(backups, 0, 2, 0) == {"a", "b"}  # 2024-05-01 23:00 and 2024-05-02 01:00 UTC


@pytest.mark.parametrize("counts, setting", [((-1, 0, 0), "backupKeepLast"), ((0, -2, 0), "backupKeepDaily"),
                                             ((0, 0, 1.5), "backupKeepWeekly")])
def test_a_negative_or_fractional_count_is_refused_naming_the_setting(counts, setting):
    with pytest.raises(ScheduleError) as refused:
        select_kept([("a", at("2024-01-01 00:00"))], *counts)
    assert setting in str(refused.value) and f"pulumi config set {setting}" in str(refused.value)


@settings(max_examples=200, deadline=None)
@given(stamps=st.lists(st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2024, 4, 1),
                                    timezones=st.just(UTC)), min_size=1, max_size=40, unique=True),
       last=st.integers(0, 5), daily=st.integers(0, 5), weekly=st.integers(0, 5))
def test_retention_always_keeps_the_newest_and_never_more_than_the_counts_allow(stamps, last, daily, weekly):
    backups = [(f"b{i}", t) for i, t in enumerate(stamps)]
    kept = select_kept(backups, last, daily, weekly)
    newest = max(backups, key=lambda b: b[1])[0]
    assert newest in kept and kept <= {name for name, _ in backups}
    assert len(kept) <= max(1, last + daily + weekly)
    days_with_backups = sorted({t.date() for t in stamps}, reverse=True)[:daily]
    for day in days_with_backups:
        assert max((t, name) for name, t in backups if t.date() == day)[1] in kept
