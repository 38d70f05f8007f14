"""Do the schedules collide, and will the schedulers take them?  And a stagger that mends it.

The seed's schedules put several jobs on the same minute: promo-cleanup (`0 3 * * *`) and
analytics (`0 3 * * 1`) both start at 03:00 on Mondays and both touch
`promo_code_redemptions` (analytics reads it to tell promo grants apart), so on that day
each runs slower and sees the other's half-done work.  Nothing said so, because the two
strings differ.  `check` reports, as pure functions of the registry-like mapping and `start`:

1. collisions: two jobs that fire in the same minute and touch a common table.  Co-firing
   is computed over `span` (a year) from `start` with cronsim, never by comparing strings.
   With groups, the grouped layout (each group with the union of its members' tables, plus
   the jobs in no group) is checked too, since `schedule export` may write either;
2. top of the hour: a schedule at minute 0, where GitHub Actions delays and drops runs;
3. what Vercel rejects: not five fields, names (MON, JAN), anything but numbers, `*`, `,`,
   `-` and `/`, day-of-month and day-of-week both set, and on Hobby more than once a day;
4. a group whose members' budgets add up past the function's limit (Vercel: 300 s Hobby).

`stagger` moves minutes to clear the collisions it finds: deterministic (same input, same
output), earlier entries keep their time and later ones move, each by as few minutes as
possible (+1, -1, +2, ...), within its hour, never onto minute 0, and onto a minute that
spares the entries still to come when there is one.  Only a single-number
minute field moves; anything else is left for a person to decide, and `check` says so.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from cronsim import CronSim, CronSimError

EVERY_TABLE = "*"  # a job that touches every table (VACUUM, REINDEX)
YEAR = dt.timedelta(days=366)
_TICK = dt.timedelta(seconds=1)
_NAMES = re.compile(r"[A-Za-z]{3}")
_NUMERIC = re.compile(r"(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*")

class Planned(NamedTuple):
    schedule: str  # cron, UTC
    tables: Collection[str]
    budget: float  # seconds one run may take


class Group(NamedTuple):
    schedule: str
    members: Sequence[str]


@dataclass(frozen=True)
class Collision:
    first: str
    second: str
    tables: tuple[str, ...]
    at: dt.datetime  # the first minute both fire
    times: int  # how often both fire within the span checked
    days: int  # the span checked

    @property
    def message(self) -> str:
        tables = "every table" if self.tables == (EVERY_TABLE,) else ", ".join(self.tables)
        return (f"{self.first} and {self.second} both fire at {self.at:%a %Y-%m-%d %H:%M} UTC "
                f"({self.times} times in {self.days} days) and touch {tables}")


@dataclass(frozen=True)
class TopOfHour:
    name: str
    schedule: str

    @property
    def message(self) -> str:
        return (f"{self.name} ({self.schedule}) fires at minute 0, where GitHub Actions "
                "delays and drops scheduled runs")


@dataclass(frozen=True)
class Rejected:
    name: str
    schedule: str
    reason: str

    @property
    def message(self) -> str:
        return f"{self.name} ({self.schedule}): {self.reason}"


@dataclass(frozen=True)
class OverBudget:
    group: str
    total: float
    limit: float

    @property
    def message(self) -> str:
        return (f"group {self.group}: its members' budgets add up to {self.total:g} s, past "
                f"the function's {self.limit:g} s")


@dataclass(frozen=True)
class Report:
    collisions: tuple[Collision, ...]
    top_of_hour: tuple[TopOfHour, ...]
    rejected: tuple[Rejected, ...]
    over_budget: tuple[OverBudget, ...]

    @property
    def messages(self) -> list[str]:
        found: list[Collision | TopOfHour | Rejected | OverBudget] = [
            *self.collisions, *self.top_of_hour, *self.rejected, *self.over_budget]
        return [item.message for item in found]


@dataclass(frozen=True)
class _Unit:
    name: str
    schedule: str
    tables: frozenset[str]


def vercel_rejects(schedule: str, *, hobby: bool = False) -> list[str]:
    """Why Vercel would refuse `schedule` (empty when it would take it)."""
    fields = schedule.split()
    if len(fields) != 5:
        return [f"has {len(fields)} fields; Vercel takes five numeric ones"]
    reasons = []
    if _NAMES.search(schedule):
        reasons.append("uses names (MON, JAN); Vercel takes numbers only")
    else:
        reasons += [f"field {f!r} is not numeric cron syntax" for f in fields
                    if not _NUMERIC.fullmatch(f)]
    if fields[2] not in ("*", "?") and fields[4] not in ("*", "?"):
        reasons.append("sets both day of month and day of week; Vercel takes one of them")
    if reasons:
        return reasons
    try:
        parsed = CronSim(schedule, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    except CronSimError as exc:
        return [f"is not a valid cron expression ({exc})"]
    if hobby and (len(parsed.minutes) > 1 or len(parsed.hours) > 1):
        reasons.append("fires more than once a day, which Vercel Hobby refuses")
    return reasons


def check(jobs: Mapping[str, Planned], groups: Mapping[str, Group] | None = None, *,
          start: dt.datetime, span: dt.timedelta = YEAR, hobby: bool = False,
          function_limit: float | None = None) -> Report:
    """Every problem with `jobs` (and `groups`) over `span` from `start`."""
    jobs, groups = _normal(jobs, groups)
    schedules = {name: p.schedule for name, p in jobs.items()}
    schedules.update({name: g.schedule for name, g in groups.items()})
    rejected = tuple(Rejected(name, s, reason) for name, s in schedules.items()
                     for reason in vercel_rejects(s, hobby=hobby))
    top = tuple(TopOfHour(name, s) for name, s in schedules.items()
                if _valid(s) and 0 in CronSim(s, start).minutes)
    end = start + span
    layouts = [_job_units(jobs)]
    if groups:
        layouts.append(_grouped_units(jobs, groups))
    found: dict[frozenset[str], Collision] = {}
    for units in layouts:
        for a, b in itertools.combinations(units, 2):
            key = frozenset((a.name, b.name))
            shared = _shared(a, b)
            if key in found or not shared:
                continue
            at, times = _co_fire(a.schedule, b.schedule, start, end, first_only=False)
            if at is not None:
                found[key] = Collision(a.name, b.name, shared, at, times, span.days)
    over = tuple(
        OverBudget(name, total, function_limit)
        for name, group in groups.items()
        if function_limit is not None
        and (total := sum(jobs[m].budget for m in group.members)) > function_limit)
    return Report(tuple(found.values()), top, rejected, over)


def stagger(jobs: Mapping[str, Planned], groups: Mapping[str, Group] | None = None, *,
            start: dt.datetime, span: dt.timedelta = YEAR,
            off_the_hour: bool = False) -> dict[str, str]:
    """New schedules for every job and group, minutes moved to clear the collisions.

    Earlier entries of `jobs` (then of `groups`) keep their time.  With `off_the_hour`, a
    schedule at minute 0 moves as well, for GitHub Actions."""
    jobs, groups = _normal(jobs, groups)
    end = start + span
    # An invalid schedule stays as it is (check reports it); the others may move.
    moved = {name: p.schedule for name, p in jobs.items()}
    moved.update(_place(_job_units(jobs), [], start, end, off_the_hour))
    if groups:
        staggered = {name: p._replace(schedule=moved[name]) for name, p in jobs.items()}
        units = _grouped_units(staggered, groups)
        fixed = [u for u in units if u.name not in groups]
        moved.update({name: g.schedule for name, g in groups.items()})
        moved.update(_place([u for u in units if u.name in groups], fixed, start, end,
                            off_the_hour))
    return moved


def _normal(jobs: Mapping[str, Planned], groups: Mapping[str, Group] | None
            ) -> tuple[dict[str, Planned], dict[str, Group]]:
    """Plain tuples are welcome: (schedule, tables, budget) and (schedule, members)."""
    return ({name: Planned(*p) for name, p in jobs.items()},
            {name: Group(*g) for name, g in (groups or {}).items()})


def _place(units: list[_Unit], placed: list[_Unit], start: dt.datetime, end: dt.datetime,
           off_the_hour: bool) -> dict[str, str]:
    """Each of `units` (valid schedules), in order, clear of `placed` and of those before it."""
    out: dict[str, str] = {}
    for i, unit in enumerate(units):

        def clear(schedule: str, others: list[_Unit], unit: _Unit = unit) -> bool:
            return not any(_shared(unit, o) and _co_fire(schedule, o.schedule, start, end,
                                                         first_only=True)[0] is not None
                           for o in others)

        schedule = unit.schedule
        at_zero = off_the_hour and 0 in CronSim(schedule, start).minutes
        if at_zero or not clear(schedule, placed):
            # Prefer a minute that also spares the units still to be placed, so a move
            # does not push a later unit out of its own time.
            pending = units[i + 1:]
            schedule = next((s for s in _moves(schedule) if clear(s, placed + pending)),
                            next((s for s in _moves(schedule) if clear(s, placed)), schedule))
        placed.append(replace(unit, schedule=schedule))
        out[unit.name] = schedule
    return out


def _moves(schedule: str) -> Iterator[str]:
    """The same schedule with its minute moved by 1, 2, ... (later first), never to 0."""
    fields = schedule.split()
    if len(fields) != 5 or not fields[0].isdigit():
        return
    minute = int(fields[0])
    for distance in range(1, 60):
        for candidate in (minute + distance, minute - distance):
            if 1 <= candidate <= 59:
                yield " ".join([str(candidate), *fields[1:]])


def _job_units(jobs: Mapping[str, Planned]) -> list[_Unit]:
    return [_Unit(name, p.schedule, frozenset(p.tables)) for name, p in jobs.items()
            if _valid(p.schedule)]


def _grouped_units(jobs: Mapping[str, Planned], groups: Mapping[str, Group]) -> list[_Unit]:
    """The grouped layout: each group fires for its members; jobs in no group fire alone."""
    members: set[str] = set()
    units = []
    for name, group in groups.items():
        unknown = [m for m in group.members if m not in jobs]
        if unknown:
            raise ValueError(f"group {name!r} names unknown jobs: {', '.join(unknown)}")
        members.update(group.members)
        tables = frozenset().union(*(jobs[m].tables for m in group.members))
        if _valid(group.schedule):
            units.append(_Unit(name, group.schedule, tables))
    return units + [u for u in _job_units(jobs) if u.name not in members]


def _shared(a: _Unit, b: _Unit) -> tuple[str, ...]:
    if EVERY_TABLE in a.tables and EVERY_TABLE in b.tables:
        return (EVERY_TABLE,)
    if EVERY_TABLE in a.tables or EVERY_TABLE in b.tables:
        return tuple(sorted((a.tables | b.tables) - {EVERY_TABLE}))
    return tuple(sorted(a.tables & b.tables))


def _co_fire(a: str, b: str, start: dt.datetime, end: dt.datetime, *, first_only: bool
             ) -> tuple[dt.datetime | None, int]:
    """The first minute in (start, end) at which both fire, and how many such minutes."""
    ia, ib = CronSim(a, start), CronSim(b, start)
    if not (ia.minutes & ib.minutes and ia.hours & ib.hours and ia.months & ib.months):
        return None, 0
    ta, tb = next(ia), next(ib)
    first, times = None, 0
    while ta < end and tb < end:
        if ta == tb:
            first, times = first or ta, times + 1
            if first_only:
                break
            ta, tb = next(ia), next(ib)
        elif ta < tb:  # leap the one behind to the other's next fire, not minute by minute
            ia = CronSim(a, tb - _TICK)
            ta = next(ia)
        else:
            ib = CronSim(b, ta - _TICK)
            tb = next(ib)
    return first, times


def _valid(schedule: str) -> bool:
    try:
        CronSim(schedule, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    except CronSimError:
        return False
    return True
