"""A group call: every member of a registry group (app/core/registry.py `GROUPS`) run once.

Each member is its own runner call, exactly as if its own endpoint were called: its own
slot, lease, duplicate rule, retries and log row.  Members that share no table run at once
in a bounded thread pool (GROUP_WORKERS); members that share one (by the rule
app/core/schedule_check.py uses for collisions: a job that touches every table, such as
db-maintenance, shares one with everything) run one after the other, in the group's order.
A member that fails does not stop the others.

The group answers every member's outcome, and the worst member status as its own (an
error before anything else: a scheduler must never retry a call in which a job ran and
failed).  Under SCHEDULE_MODE=groups each member's slot is the group's (registry
`scheduled`), so a second delivery of the group answers `duplicate` for each member.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.core.registry import GroupSpec, JobSpec, tables_touched
from app.core.runner import HTTP_STATUS, DatabaseUnavailable, Runner, RunOutcome
from app.core.schedule_check import EVERY_TABLE
from app.core.status import RunStatus

log = logging.getLogger("app.core.groups")

# Best to worst: the group answers the worst of its members.
SEVERITY = (RunStatus.SUCCESS, RunStatus.SKIPPED, RunStatus.DUPLICATE, RunStatus.WARNING,
            RunStatus.PARTIAL, RunStatus.RUNNING, RunStatus.DISABLED, RunStatus.UNAVAILABLE,
            RunStatus.ERROR)


def worst(statuses: list[RunStatus]) -> RunStatus:
    """The worst of `statuses`; a status not ranked (a newer one) counts as an error."""
    rank = {status: i for i, status in enumerate(SEVERITY)}
    return max(statuses, key=lambda s: rank.get(s, len(SEVERITY)), default=RunStatus.SUCCESS)


@dataclass
class GroupOutcome:
    group: str
    trigger: str
    dry_run: bool
    members: list[RunOutcome]
    duration_ms: int = 0

    @property
    def status(self) -> RunStatus:
        return worst([m.status for m in self.members])

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.status, 500)

    def as_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for member in self.members:
            counts[member.status] = counts.get(member.status, 0) + 1
        return {
            "task": self.group,
            "group": True,
            "status": self.status,
            "trigger": self.trigger,
            "dry_run": self.dry_run,
            "duration_ms": self.duration_ms,
            "message": ", ".join(f"{n} {status}" for status, n in counts.items()),
            "members": [m.as_json() for m in self.members],
        }


def lanes(group: GroupSpec, jobs: Mapping[str, JobSpec]) -> list[list[str]]:
    """The members split into lanes: members sharing a table (directly or through another
    member) are one lane, in the group's order; different lanes share no table."""
    found: list[tuple[set[str], list[str]]] = []
    for name in group.members:
        tables = set(tables_touched(jobs[name]))
        joined = [lane for lane in found if _share(lane[0], tables)]
        merged: tuple[set[str], list[str]] = (tables, [])
        for lane in joined:
            found.remove(lane)
            merged[0].update(lane[0])
            merged[1].extend(lane[1])
        merged[1].append(name)
        found.append(merged)
    order = {name: i for i, name in enumerate(group.members)}
    return sorted((sorted(lane, key=order.__getitem__) for _, lane in found),
                  key=lambda lane: order[lane[0]])


def _share(a: set[str], b: set[str]) -> bool:
    return bool(a & b) or EVERY_TABLE in a or EVERY_TABLE in b


def run_group(runner: Runner, group: GroupSpec, *, trigger: str, dry_run: bool = False,
              force: bool = False, workers: int | None = None, until: float | None = None
              ) -> GroupOutcome:
    """Run every member of `group` through `runner`; never raises for a member's sake."""
    started = time.monotonic()
    plan = lanes(group, runner.jobs)
    size = max(1, min(workers or runner.settings.group_workers, len(plan)))
    results: dict[str, RunOutcome] = {}
    with ThreadPoolExecutor(max_workers=size, thread_name_prefix=group.name) as pool:
        futures = [pool.submit(_run_lane, runner, lane, trigger, dry_run, force, until)
                   for lane in plan]
        for future in futures:
            results.update(future.result())
    outcome = GroupOutcome(group.name, trigger, dry_run, [results[m] for m in group.members],
                           int((time.monotonic() - started) * 1000))
    log.info("group finished", extra={"task": group.name, "status": outcome.status,
                                      "duration_ms": outcome.duration_ms})
    return outcome


def _run_lane(runner: Runner, lane: list[str], trigger: str, dry_run: bool, force: bool,
              until: float | None) -> dict[str, RunOutcome]:
    out: dict[str, RunOutcome] = {}
    for name in lane:
        if until is not None and any(o.status == RunStatus.PARTIAL for o in out.values()):
            # This invocation's time is spent: the call answers `partial`, the next one
            # continues the member that paused and then runs this one.
            out[name] = RunOutcome(name, None, RunStatus.PARTIAL, trigger, dry_run=dry_run,
                                   message="not started: this invocation's time budget is "
                                   "spent; the next call runs it")
            continue
        try:
            out[name] = runner.run(name, trigger=trigger, dry_run=dry_run, force=force,
                                   until=until)
        except DatabaseUnavailable as exc:
            out[name] = RunOutcome(name, None, RunStatus.UNAVAILABLE, trigger, dry_run=dry_run,
                                   message=f"{exc}; nothing was run")
        except Exception as exc:  # the runner's own bookkeeping failed: the others still run
            log.error("group member %s could not be run", name, exc_info=exc)
            out[name] = RunOutcome(name, None, RunStatus.ERROR, trigger, dry_run=dry_run,
                                   message=f"not run: {type(exc).__name__}")
    return out
