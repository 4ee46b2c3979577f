"""When backups run (5-field cron, UTC), whether one is overdue, and which ones retention keeps."""

from __future__ import annotations

import calendar
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Optional, Sequence

from . import BackupAgentError

SETTING = "backupSchedule"
EXAMPLE = '"0 3 * * *" for 03:00 UTC daily'
MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
          "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
MONTHS = {name: i for i, name in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)}
WEEKDAYS = {name: i for i, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
# name, lowest, highest, names: in cron's field order
FIELDS = [("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day-of-month", 1, 31, {}),
          ("month", 1, 12, MONTHS), ("day-of-week", 0, 7, WEEKDAYS)]
_GREGORIAN_CYCLE_MONTHS = 400 * 12  # the calendar repeats after 400 years


class ScheduleError(BackupAgentError):
    """A schedule or retention setting is not usable, or a time given is not timezone-aware."""


def _refuse(expr: str, problem: str) -> ScheduleError:
    return ScheduleError(f'{SETTING} "{expr}": {problem}; e.g. {EXAMPLE}')


def _value(expr: str, field: str, text: str, low: int, high: int, names: dict) -> int:
    """One number or name of a field, checked against the field's range."""
    if text.lower() in names:
        return names[text.lower()]
    if not text.isdigit():
        known = f" or a name ({', '.join(names)})" if names else ""
        raise _refuse(expr, f"{field} {text!r} is not a number {low}-{high}{known}")
    if not low <= int(text) <= high:
        raise _refuse(expr, f"{field} {text} is outside {low}-{high}")
    return int(text)


def _field(expr: str, text: str, field: str, low: int, high: int, names: dict) -> frozenset[int]:
    """The values one field allows: lists of `*`, `a`, `a-b`, each optionally `/step`."""
    values: set[int] = set()
    for item in text.split(","):
        span, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise _refuse(expr, f"{field} step {step_text!r} in {item!r} is not a whole number of 1 or more")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            start, _, end = span.partition("-")
            first, last = (_value(expr, field, start, low, high, names), _value(expr, field, end, low, high, names))
            if first > last:
                raise _refuse(expr, f"{field} range {span} runs backwards; put the lower value first "
                                    f"({end}-{start}), or join two ranges with a comma")
        elif slash:
            raise _refuse(expr, f"{field} {item!r}: a step needs * or a range before it (e.g. {span}-{high}/{step})")
        else:
            first = last = _value(expr, field, span, low, high, names)
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed 5-field cron expression; times are UTC; Vixie's rule for the two day fields."""

    expr: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_or_weekdays: bool
    """Vixie cron: when neither day field starts with `*`, a day matches if EITHER matches."""

    @classmethod
    def parse(cls, expr: str) -> "Cron":
        """The schedule `expr` describes; ScheduleError naming field, value and range if it is not usable."""
        text = " ".join(str(expr).split())
        if text.startswith("@"):
            if text.lower() not in MACROS:
                raise _refuse(expr, f"{text} is not one of {', '.join(MACROS)}")
            text = MACROS[text.lower()]
        parts = text.split(" ")
        if len(parts) != 5 or not text:
            raise _refuse(expr, f"expected 5 fields (minute hour day-of-month month day-of-week) or one of "
                                f"{', '.join(MACROS)}; found {len(parts) if text else 0}")
        minutes, hours, days, months, weekdays = (
            _field(expr, part, *spec) for part, spec in zip(parts, FIELDS))
        weekdays = frozenset(d % 7 for d in weekdays)
        days_or_weekdays = not parts[2].startswith("*") and not parts[4].startswith("*")
        if not days_or_weekdays and not any(d <= _longest(m) for m in months for d in days):
            raise _refuse(expr, f"day-of-month {parts[2]} never occurs in month {parts[3]}, so it would never run")
        return cls(expr, tuple(sorted(minutes)), tuple(sorted(hours)), frozenset(days), frozenset(months),
                   weekdays, days_or_weekdays)

    def _matches_day(self, day: date) -> bool:
        by_date, by_weekday = day.day in self.days, day.isoweekday() % 7 in self.weekdays
        return (by_date or by_weekday) if self.days_or_weekdays else (by_date and by_weekday)

    def _days(self, year: int, month: int) -> list[int]:
        return [d for d in range(1, calendar.monthrange(year, month)[1] + 1) if self._matches_day(date(year, month, d))]

    def next_after(self, t: datetime) -> datetime:
        """The first scheduled minute strictly after `t` (UTC)."""
        start = _minute(t, "the time to schedule from") + timedelta(minutes=1)
        year, month = start.year, start.month
        for _ in range(_GREGORIAN_CYCLE_MONTHS + 1):
            if month in self.months:
                for day in self._days(year, month):
                    if (year, month, day) < (start.year, start.month, start.day):
                        continue
                    at = (start.hour, start.minute) if (year, month, day) == (start.year, start.month, start.day) else (0, 0)
                    found = self._first_time_from(*at)
                    if found:
                        return datetime(year, month, day, *found, tzinfo=timezone.utc)
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        raise AssertionError(f"{self.expr!r} has no run in 400 years, which parse() rules out")

    def previous_at_or_before(self, t: datetime) -> datetime:
        """The last scheduled minute at or before `t` (UTC)."""
        start = _minute(t, "the time to schedule from")
        year, month = start.year, start.month
        for _ in range(_GREGORIAN_CYCLE_MONTHS + 1):
            if month in self.months:
                for day in reversed(self._days(year, month)):
                    if (year, month, day) > (start.year, start.month, start.day):
                        continue
                    at = (start.hour, start.minute) if (year, month, day) == (start.year, start.month, start.day) else (23, 59)
                    found = self._last_time_until(*at)
                    if found:
                        return datetime(year, month, day, *found, tzinfo=timezone.utc)
            year, month = (year - 1, 12) if month == 1 else (year, month - 1)
        raise AssertionError(f"{self.expr!r} has no run in 400 years, which parse() rules out")

    def _first_time_from(self, hour: int, minute: int) -> Optional[tuple[int, int]]:
        for h in self.hours[bisect_left(self.hours, hour):]:
            later = self.minutes[bisect_left(self.minutes, minute):] if h == hour else self.minutes
            if later:
                return h, later[0]
        return None

    def _last_time_until(self, hour: int, minute: int) -> Optional[tuple[int, int]]:
        for h in reversed(self.hours[:bisect_right(self.hours, hour)]):
            earlier = self.minutes[:bisect_right(self.minutes, minute)] if h == hour else self.minutes
            if earlier:
                return h, earlier[-1]
        return None


def _longest(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _utc(t: datetime, what: str) -> datetime:
    if not isinstance(t, datetime) or t.tzinfo is None or t.utcoffset() is None:
        raise ScheduleError(f"{what} {t!r} has no time zone; expected a timezone-aware datetime "
                            "(e.g. datetime.now(timezone.utc))")
    return t.astimezone(timezone.utc)


def _minute(t: datetime, what: str) -> datetime:
    return _utc(t, what).replace(second=0, microsecond=0)


def overdue(cron: Cron, last_success: Optional[datetime], now: datetime, grace: timedelta,
            started: datetime) -> bool:
    """Whether a backup is missing: the latest scheduled time whose grace has passed
    (the last scheduled time at or before now - grace) is after the start of the last
    successful backup, or, when there never was one, after the agent started."""
    if grace < timedelta(0):
        raise ScheduleError(f"grace {grace} is negative; expected 0 or more")
    reference = _utc(last_success if last_success is not None else started,
                     "last_success" if last_success is not None else "started")
    return cron.previous_at_or_before(_utc(now, "now") - grace) > reference


def select_kept(backups: Sequence[tuple[str, datetime]], keep_last: int, keep_daily: int,
                keep_weekly: int) -> set[str]:
    """Names of the complete backups retention keeps (grandfather-father-son); the newest always."""
    for setting, count in (("backupKeepLast", keep_last), ("backupKeepDaily", keep_daily),
                           ("backupKeepWeekly", keep_weekly)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ScheduleError(f"{setting} {count!r} is not a whole number of 0 or more; "
                                f"e.g. pulumi config set {setting} 7")
    newest_first = sorted(((_utc(t, f"backup {name}"), name) for name, t in backups), reverse=True)
    kept = {name for _, name in newest_first[:max(keep_last, 1)]}
    for count, period in ((keep_daily, lambda t: t.date()), (keep_weekly, lambda t: t.isocalendar()[:2])):
        newest_of_period: dict = {}
        for t, name in newest_first:
            newest_of_period.setdefault(period(t), name)
        kept.update(list(newest_of_period.values())[:count])
    return kept
