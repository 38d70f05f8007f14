"""Scheduler configuration generated from the registry: Vercel, crontab, GitHub Actions.

The committed files (`vercel.json`, `deploy/crontab`, `deploy/call-task`,
`.github/workflows/cron-jobs.yml`) are the output of `voyagesmart-cron schedule export
--format … --write`; a test fails when one drifts from the registry.

The crontab (through `deploy/call-task`) and the workflow call a task with the same shell
function, `call_task`.  It does not use curl's `--retry`, which also retries a 500: one
failed job would run three times and alert three times.  It retries only what cannot run a
job twice: no connection made (curl exit 6, 7), 429, and 503 with `Retry-After` (the
database was unreachable; nothing ran).  A 202 (`partial`: the run stopped at its
invocation's time budget, FUNCTION_MAX_DURATION) is called again at once, since the next
call of the slot continues the run; at most `PARTIAL_MAX_CALLS` calls, none started once
the longer of `PARTIAL_MAX_SECONDS` and the task's own time (its `MAX_TIME`) has passed.
A run still partial then fails the call loudly, as any other failure does.

`vercel.json` declares the function's `maxDuration` (`VERCEL_MAX_DURATION`, the default of
FUNCTION_MAX_DURATION when VERCEL=1), so the function's budget and the platform's limit
are one number.

Each file comes in layouts (`--layout`): `jobs` (the default, and what is committed) calls
every job on its own schedule; `groups` calls the registry's groups (daily-maintenance,
weekly-cleanup) on theirs and the jobs in no group on their own; `groups-only` calls just
the groups (Vercel Hobby's two crons).  A grouped deployment sets SCHEDULE_MODE=groups.

The files keep the registry's (the seed's) times.  `--stagger` writes them with the minutes
`app/core/schedule_check.py` moves to clear collisions and the top of the hour; a move is
only ever later within its hour, so the runner, which reads a call's slot off the
registry's schedule, still finds the slot each staggered call belongs to.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from cronsim import CronSim

from app.config import VERCEL_MAX_DURATION
from app.core import schedule_check
from app.core.registry import GROUPS, JOBS, GroupSpec, JobSpec, planned

# task -> cron expression: the registry's, unless staggered.
Schedules = Mapping[str, str]

ROOT = Path(__file__).resolve().parents[2]
PATHS = {
    "vercel": ROOT / "vercel.json",
    "crontab": ROOT / "deploy" / "crontab",
    "call": ROOT / "deploy" / "call-task",
    "github": ROOT / ".github" / "workflows" / "cron-jobs.yml",
}
# curl waits a little longer than the job's own budget, so the service (which stops the
# job at its max runtime) answers before curl gives up.  What is safe to retry is retried
# this many times, after Retry-After (at most CURL_RETRY_AFTER_CAP) or CURL_RETRY_DELAY.
CURL_MARGIN_SECONDS = 30
CURL_RETRIES = 2
CURL_RETRY_DELAY = 10
CURL_RETRY_AFTER_CAP = 120
CONF_DIR = "/etc/voyagesmart-cron"
# A 202 `partial` answer is called again: at most this many calls in all, and none started
# once this long (or the task's MAX_TIME, if longer) has passed since the first.
PARTIAL_MAX_CALLS = 20
PARTIAL_MAX_SECONDS = 900
# Vercel's function for the app (its zero-config FastAPI entrypoint, app/index.py).
VERCEL_FUNCTION = "app/index.py"
# GitHub Actions kills a job after at most 6 hours.
GITHUB_MAX_MINUTES = 360


LAYOUTS = ("jobs", "groups", "groups-only")


def staggered(start: dt.datetime) -> dict[str, str]:
    """Every task's schedule with minutes moved to clear collisions and the top of the
    hour (deterministic).  ValueError if a move would be earlier than the registry's time:
    a call before its registry slot would be taken for the previous slot."""
    moved = schedule_check.stagger(planned(), start=start, off_the_hour=True)
    for name, schedule in moved.items():
        seed = JOBS[name].schedule
        if schedule != seed and int(schedule.split()[0]) < int(seed.split()[0]):
            raise ValueError(f"staggering would move {name} earlier ({seed} -> {schedule}); "
                             "change its time in the registry instead")
    return moved


def _schedule(spec: JobSpec, moved: Schedules | None) -> str:
    return (moved or {}).get(spec.name, spec.schedule)


def _explain(schedule: str) -> str:
    return str(CronSim(schedule, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)).explain())


class Entry(NamedTuple):
    """One scheduler entry: a job, or a group of jobs."""

    name: str
    schedule: str
    max_time: int  # curl's --max-time for one call
    explain: str


def curl_max_time(spec: JobSpec) -> int:
    return int(spec.max_runtime.total_seconds()) + CURL_MARGIN_SECONDS


def group_max_time(group: GroupSpec) -> int:
    """A group call lasts as long as its longest lane (members run one after the other
    within a lane, lanes at once: app/core/groups.py)."""
    from app.core.groups import lanes

    longest = max(sum(JOBS[m].max_runtime.total_seconds() for m in lane)
                  for lane in lanes(group, JOBS))
    return int(longest) + CURL_MARGIN_SECONDS


def entries(layout: str = "jobs", moved: Schedules | None = None) -> list[Entry]:
    if layout not in LAYOUTS:
        raise KeyError(layout)
    jobs = [Entry(s.name, _schedule(s, moved), curl_max_time(s),
                  s.explain() if _schedule(s, moved) == s.schedule
                  else _explain(_schedule(s, moved))) for s in JOBS.values()]
    if layout == "jobs":
        return jobs
    grouped = [Entry(g.name, g.schedule, group_max_time(g),
                     f"{g.explain()}: {', '.join(g.members)}") for g in GROUPS.values()]
    if layout == "groups-only":
        return grouped
    members = {m for g in GROUPS.values() for m in g.members}
    return grouped + [e for e in jobs if e.name not in members]


def _callable(layout: str, moved: Schedules | None = None) -> list[Entry]:
    """What the workflow may be asked to run by hand: every entry, then every job."""
    listed = entries(layout, moved)
    names = {e.name for e in listed}
    return listed + [e for e in entries("jobs", moved) if e.name not in names]


def _curl_worst_case(max_time: int) -> int:
    """Seconds one task's curl can take: every try times out, with the delays between."""
    return ((CURL_RETRIES + 1) * max_time
            + CURL_RETRIES * max(CURL_RETRY_DELAY, CURL_RETRY_AFTER_CAP))


def _loop_worst_case(max_time: int) -> int:
    """Seconds one task's partial loop can take: no call starts past its time bound, and
    the last one may take its own worst case."""
    once = _curl_worst_case(max_time)
    return min(PARTIAL_MAX_CALLS * once, max(PARTIAL_MAX_SECONDS, max_time) + once)


def github_timeout_minutes(layout: str = "jobs", moved: Schedules | None = None) -> int:
    # The scheduled step calls every task sharing a schedule one after the other.
    times = {e.name: e.max_time for e in _callable(layout, moved)}
    worst = max(
        sum(_loop_worst_case(times[name]) for name in names)
        for names in _by_schedule(layout, moved).values()
    )
    return min(GITHUB_MAX_MINUTES, -(-worst // 60) + 5)


def vercel(layout: str = "jobs", moved: Schedules | None = None) -> str:
    config = {
        "$schema": "https://openapi.vercel.sh/vercel.json",
        "crons": [{"path": f"/api/cron/{e.name}", "schedule": e.schedule}
                  for e in entries(layout, moved)],
        # The platform's limit, matched by FUNCTION_MAX_DURATION's default on Vercel: the
        # runner stops taking chunks before it and answers 202.
        "functions": {VERCEL_FUNCTION: {"maxDuration": int(VERCEL_MAX_DURATION)}},
    }
    return json.dumps(config, indent=2) + "\n"


# POSIX sh, shared by deploy/call-task and the workflow.  Prints each answer's body with a
# final newline; returns 0 for a final 2xx answer, 1 otherwise (like curl --fail-with-body).
_CALL_FUNCTION = f"""\
# call_once URL HEADER_FILE SOURCE MAX_TIME: POST to URL once; retry only what cannot run
# the job twice: no connection made (curl exit 6, 7), 429, 503 with Retry-After.  Never a
# 500 (the job ran and failed; the admins were alerted) nor a 409 (a run is live).
# Returns 0 done, 2 partial (202), 1 failed.
call_once() {{
  _ct_body=$(mktemp) || return 1
  _ct_head=$(mktemp) || {{ rm -f "$_ct_body"; return 1; }}
  _ct_try=0
  while :; do
    _ct_try=$((_ct_try + 1))
    _ct_code=$(curl --silent --show-error --max-time "$4" -X POST -H @"$2" \\
      -H "X-Cron-Source: $3" -D "$_ct_head" -o "$_ct_body" -w '%{{http_code}}' "$1")
    _ct_rc=$?
    if [ -s "$_ct_body" ]; then cat "$_ct_body"; echo; fi
    _ct_after=$(sed -n 's/^[Rr][Ee][Tt][Rr][Yy]-[Aa][Ff][Tt][Ee][Rr]: *\\([0-9][0-9]*\\).*/\\1/p' \\
      "$_ct_head" | tail -n 1)
    if [ -n "$_ct_after" ] && [ "$_ct_after" -gt {CURL_RETRY_AFTER_CAP} ]; then
      _ct_after={CURL_RETRY_AFTER_CAP}
    fi
    _ct_wait=
    case "$_ct_rc:$_ct_code" in
      0:202) rm -f "$_ct_body" "$_ct_head"; return 2 ;;
      0:2??) rm -f "$_ct_body" "$_ct_head"; return 0 ;;
      6:*|7:*) _ct_wait=${{CALL_RETRY_DELAY:-{CURL_RETRY_DELAY}}} ;;
      0:429) _ct_wait=${{_ct_after:-${{CALL_RETRY_DELAY:-{CURL_RETRY_DELAY}}}}} ;;
      0:503) _ct_wait=$_ct_after ;;
    esac
    if [ -z "$_ct_wait" ] || [ "$_ct_try" -gt {CURL_RETRIES} ]; then
      rm -f "$_ct_body" "$_ct_head"
      return 1
    fi
    sleep "$_ct_wait"
  done
}}

# call_task URL HEADER_FILE SOURCE MAX_TIME: call_once, and again at once while the answer
# is 202 `partial` (the next call continues the run): at most CALL_MAX_CALLS calls, none
# started once CALL_MAX_SECONDS (or MAX_TIME, if longer) have passed.  Still partial then
# is a failure: the run waits for the next call of its slot.
call_task() {{
  _cl_calls=0
  _cl_since=$(date +%s)
  _cl_limit=${{CALL_MAX_SECONDS:-{PARTIAL_MAX_SECONDS}}}
  if [ "$4" -gt "$_cl_limit" ]; then _cl_limit=$4; fi
  while :; do
    _cl_calls=$((_cl_calls + 1))
    _cl_rc=0
    call_once "$@" || _cl_rc=$?
    if [ "$_cl_rc" -ne 2 ]; then return "$_cl_rc"; fi
    _cl_spent=$(($(date +%s) - _cl_since))
    if [ "$_cl_calls" -ge "${{CALL_MAX_CALLS:-{PARTIAL_MAX_CALLS}}}" ] \\
        || [ "$_cl_spent" -ge "$_cl_limit" ]; then
      echo "still partial after $_cl_calls call(s) in $_cl_spent s; the run waits for" \\
        "the next call of its slot" >&2
      return 1
    fi
  done
}}
"""


def call_task(layout: str = "jobs", moved: Schedules | None = None) -> str:
    # The same script for every layout and schedule.
    return f"""#!/bin/sh
# Generated by `voyagesmart-cron schedule export --format call`; do not edit.
# Calls one VoyageSmart Cron task, as deploy/crontab does:  call-task TASK MAX_TIME
# Reads the base URL from $VOYAGESMART_CRON_CONF/url and the header line
# 'Authorization: Bearer <CRON_SECRET>' from $VOYAGESMART_CRON_CONF/auth-header
# (default {CONF_DIR}), so the secret is never on a command line.
{_CALL_FUNCTION}
if [ "$#" -ne 2 ]; then
  echo "usage: call-task TASK MAX_TIME" >&2
  exit 2
fi
conf=${{VOYAGESMART_CRON_CONF:-{CONF_DIR}}}
base=$(cat "$conf/url") || exit 1
call_task "$base/api/cron/$1" "$conf/auth-header" crontab "$2"
"""


def crontab(layout: str = "jobs", moved: Schedules | None = None) -> str:
    lines = [
        "# VoyageSmart Cron: crontab for a host that calls the service over HTTP.",
        "# Generated by `voyagesmart-cron schedule export --format crontab`; do not edit.",
        f"# Install deploy/call-task as {CONF_DIR}/call-task (mode 0755), put the base URL",
        f"# in {CONF_DIR}/url (e.g. https://cron.example.com) and the header line",
        f"# 'Authorization: Bearer <CRON_SECRET>' in {CONF_DIR}/auth-header (mode 0600),",
        "# so the secret is never on a command line.  call-task retries only what cannot",
        "# run a job twice (never a 500), and calls again while the answer is 202 partial",
        f"# (at most {PARTIAL_MAX_CALLS} calls; none started after {PARTIAL_MAX_SECONDS // 60} "
        "minutes or the task's max time).",
        "# Schedules are UTC.",
        "CRON_TZ=UTC",
        "SHELL=/bin/sh",
        f"VOYAGESMART_CRON_CONF={CONF_DIR}",
        "",
    ]
    if layout != "jobs":
        lines[-1:-1] = ["# Grouped layout: set SCHEDULE_MODE=groups on the service."]
    for entry in entries(layout, moved):
        command = f"{CONF_DIR}/call-task {entry.name} {entry.max_time}"
        # `%` ends the command in crontab; escape it even though none is used today.
        lines.append(f"# {entry.name}: {entry.explain}")
        lines.append(f"{entry.schedule} {command.replace('%', chr(92) + '%')}")
    return "\n".join(lines) + "\n"


def github(layout: str = "jobs", moved: Schedules | None = None) -> str:
    names = [e.name for e in _callable(layout, moved)]
    options = "\n".join(f"          - {name}" for name in names)
    schedules = "\n".join(f"    - cron: '{schedule}'  # {' '.join(names)}"
                          for schedule, names in _by_schedule(layout, moved).items())
    head = "# Generated by `voyagesmart-cron schedule export --format github`; do not edit."
    if layout != "jobs":
        head += "\n# Grouped layout: set SCHEDULE_MODE=groups on the service."
    return f"""{head}
# Calls the service's cron endpoints on schedule (UTC).  GitHub may run a schedule late or
# drop it under load, and disables schedules after 60 days without repository activity:
# /health flags an overdue job either way.  Set the repository secret CRON_SECRET and the
# variable CRON_BASE_URL (e.g. https://cron.example.com).
name: cron-jobs

on:
  schedule:
{schedules}
  workflow_dispatch:
    inputs:
      task:
        description: Task to run now
        required: true
        type: choice
        options:
{options}
      dry_run:
        description: Report only, change nothing
        required: false
        type: boolean
        default: false
      force:
        description: Run even if this slot already ran (never overlapping a live run)
        required: false
        type: boolean
        default: false

permissions: {{}}

concurrency:
  group: cron-jobs-${{{{ github.event.schedule || inputs.task }}}}
  cancel-in-progress: false

jobs:
  call:
    runs-on: ubuntu-latest
    timeout-minutes: {github_timeout_minutes(layout, moved)}
    steps:
      - name: Call the cron endpoint
        env:
          CRON_SECRET: ${{{{ secrets.CRON_SECRET }}}}
          BASE_URL: ${{{{ vars.CRON_BASE_URL }}}}
          SCHEDULE: ${{{{ github.event.schedule }}}}
          INPUT_TASK: ${{{{ inputs.task }}}}
          DRY_RUN: ${{{{ inputs.dry_run }}}}
          FORCE: ${{{{ inputs.force }}}}
        run: |
          set -eu
{_indent(_CALL_FUNCTION, 10)}
          tasks=""
          query=""
          if [ -n "$INPUT_TASK" ]; then
            tasks="$INPUT_TASK"
            params=""
            if [ "$DRY_RUN" = "true" ]; then params="dry_run=true"; fi
            if [ "$FORCE" = "true" ]; then params="${{params:+$params&}}force=true"; fi
            if [ -n "$params" ]; then query="?$params"; fi
          else
            case "$SCHEDULE" in
{_case_arms(layout, moved)}
            esac
          fi
          if [ -z "$tasks" ]; then echo "no task for schedule '$SCHEDULE'" >&2; exit 1; fi
          printf 'Authorization: Bearer %s\\n' "$CRON_SECRET" > "$RUNNER_TEMP/auth"
          status=0
          for task in $tasks; do
            case "$task" in
{_max_time_arms(layout, moved)}
              *) echo "unknown task '$task'" >&2; status=1; continue ;;
            esac
            echo "::group::$task"
            call_task "$BASE_URL/api/cron/$task$query" "$RUNNER_TEMP/auth" github-actions \\
              "$max_time" || status=1
            echo "::endgroup::"
          done
          rm -f "$RUNNER_TEMP/auth"
          exit "$status"
"""


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else "" for line in text.rstrip("\n").splitlines())


def _by_schedule(layout: str = "jobs", moved: Schedules | None = None) -> dict[str, list[str]]:
    # GitHub sends the matching cron string as github.event.schedule; entries sharing one
    # expression share one entry.
    by_schedule: dict[str, list[str]] = {}
    for entry in entries(layout, moved):
        by_schedule.setdefault(entry.schedule, []).append(entry.name)
    return by_schedule


def _case_arms(layout: str = "jobs", moved: Schedules | None = None) -> str:
    return "\n".join(
        f"              '{schedule}') tasks=\"{' '.join(names)}\" ;;"
        for schedule, names in _by_schedule(layout, moved).items()
    )


def _max_time_arms(layout: str = "jobs", moved: Schedules | None = None) -> str:
    return "\n".join(
        f"              {e.name}) max_time={e.max_time} ;;" for e in _callable(layout, moved)
    )


RENDERERS = {"vercel": vercel, "crontab": crontab, "call": call_task, "github": github}


def render(fmt: str, layout: str = "jobs", moved: Schedules | None = None) -> str:
    return RENDERERS[fmt](layout, moved)


def write(fmt: str, layout: str = "jobs", moved: Schedules | None = None) -> Path:
    path = PATHS[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(fmt, layout, moved))
    if fmt == "call":
        path.chmod(0o755)
    return path
