"""Run statuses have one owner, app/core/status.py: the guard below fails on a status
written as a bare string where a run's status is meant, and the status behaves on the wire
and in the database exactly as the bare string did."""

from __future__ import annotations

import ast
import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.core.status import DONE, FAILED, LOGGED, RunStatus
from app.db import table_of
from app.models import CronJobLog

APP = Path(__file__).resolve().parents[2] / "app"
VALUES = frozenset(RunStatus)

# The same words in another vocabulary, by file: (file, word) -> what it means there.
OTHER_VOCABULARIES = {
    ("jobs/db_maintenance.py", "error"): "a maintenance step's outcome, not a run's",
    ("jobs/db_maintenance.py", "skipped"): "a maintenance step's outcome, not a run's",
}

_SQL_STATUS = re.compile(
    r"\bstatus\s*(?:=|!=|<>)\s*'(" + "|".join(sorted(VALUES)) + r")'", re.IGNORECASE)
_TEMPLATE_STATUS = re.compile(
    r"status\s*(?:==|!=)\s*['\"](" + "|".join(sorted(VALUES)) + r")['\"]")


def _names_status(node: ast.AST) -> bool:
    """`status`, `x.status`, `log_t.c.status`, `last_status`, `x["status"]`."""
    if isinstance(node, ast.Name):
        return node.id.lower().endswith("status")
    if isinstance(node, ast.Attribute):
        return node.attr.lower().endswith("status")
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "status"
    if isinstance(node, ast.Call):  # outcome_status(tally)
        return _names_status(node.func)
    return False


def _statuses_in(node: ast.AST | None) -> Iterator[ast.Constant]:
    """Run-status strings anywhere in an expression (a ternary, a tuple, a call)."""
    for sub in ast.walk(node) if node is not None else ():
        if isinstance(sub, ast.Constant) and sub.value in VALUES:
            yield sub


def _direct_statuses(node: ast.AST | None) -> Iterator[ast.Constant]:
    """Run-status strings listed by a collection: its elements, or a dict's keys."""
    if isinstance(node, ast.Call) and node.args:  # frozenset({...}), tuple([...])
        node = node.args[0]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        items = list(node.elts)
    elif isinstance(node, ast.Dict):
        items = [k for k in node.keys if k is not None]
    else:
        return
    yield from (i for i in items if isinstance(i, ast.Constant) and i.value in VALUES)


def bare_statuses(source: str) -> list[tuple[int, str]]:
    """(line, word) of every run status written as a bare string where a run's status is
    meant: compared with or assigned to a status, passed as `status=`, stored under a
    "status" key, listed by a collection named for statuses or holding nothing else,
    returned by a function named for one, given to RunOutcome or JobResult, or compared in
    SQL text."""
    found: list[ast.Constant] = []
    sql: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_names_status(o) for o in operands):
                for operand in operands:
                    found.extend(_statuses_in(operand))
        elif isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr == "in_"
                    and _names_status(func.value)):
                found.extend(c for a in node.args for c in _statuses_in(a))
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("RunOutcome", "JobResult"):
                found.extend(c for a in node.args for c in _statuses_in(a))
            for keyword in node.keywords:
                if keyword.arg is not None and keyword.arg.lower().endswith("status"):
                    found.extend(_statuses_in(keyword.value))
        elif isinstance(node, ast.Tuple | ast.List | ast.Set) and len(node.elts) > 1 and all(
                isinstance(e, ast.Constant) and e.value in VALUES for e in node.elts):
            found.extend(_direct_statuses(node))  # a list of statuses, whatever its name
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "status":
                    found.extend(_statuses_in(value))
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            listing = isinstance(node.value, ast.Tuple | ast.List | ast.Set | ast.Dict
                                 | ast.Call)
            if listing and any(isinstance(t, ast.Name) and "status" in t.id.lower()
                               for t in targets):
                found.extend(_direct_statuses(node.value))
            elif not listing and any(_names_status(t) for t in targets):
                found.extend(_statuses_in(node.value))
        elif isinstance(node, ast.FunctionDef) and "status" in node.name.lower():
            for sub in ast.walk(node):
                if isinstance(sub, ast.Return):
                    found.extend(_statuses_in(sub.value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            sql.extend((node.lineno, m.group(1)) for m in _SQL_STATUS.finditer(node.value))
    return sorted({(c.lineno, str(c.value)) for c in found} | set(sql))


def test_no_run_status_is_a_bare_string_in_app() -> None:
    offences = []
    for path in sorted(APP.rglob("*.py")):
        name = path.relative_to(APP).as_posix()
        if name == "core/status.py":
            continue
        for line, word in bare_statuses(path.read_text()):
            if (name, word) not in OTHER_VOCABULARIES:
                offences.append(f"app/{name}:{line}: {word!r}")
    for path in sorted(APP.rglob("templates/**/*")):
        if path.is_file() and path.suffix in (".html", ".txt"):
            for number, text in enumerate(path.read_text().splitlines(), 1):
                offences.extend(f"app/{path.relative_to(APP)}:{number}: {m.group(1)!r}"
                                for m in _TEMPLATE_STATUS.finditer(text))
    assert not offences, "use app.core.status.RunStatus:\n" + "\n".join(offences)


def test_the_guard_finds_every_way_a_status_is_written() -> None:
    source = '''
outcome.status = "error"
done = row.status in ("success", "warning")
query = log_t.c.status == "running"
query = log_t.c.status.in_(("success",))
update = log_t.update().values(status="abandoned")
row = {"status": "running"}
answer = RunOutcome(task, None, "duplicate", trigger)
RUN_STATUSES = ("disabled", "unavailable")
HTTP_STATUS = {"warning": 200}
result = JobResult(status="warning" if bad else "success")
def outcome_status(tally):
    return "warning" if tally else "success"
SQL = "UPDATE cron_job_log SET x = 1 WHERE status = 'running'"
FAILED = frozenset({"error", "abandoned"})
troubled = notify.outcome_status(tally) == "warning"
'''
    assert bare_statuses(source) == [
        (2, "error"), (3, "success"), (3, "warning"), (4, "running"), (5, "success"),
        (6, "abandoned"), (7, "running"), (8, "duplicate"), (9, "disabled"),
        (9, "unavailable"), (10, "warning"), (11, "success"), (11, "warning"),
        (13, "success"), (13, "warning"), (14, "running"), (15, "abandoned"), (15, "error"),
        (16, "warning")]


def test_the_guard_leaves_other_words_alone() -> None:
    source = '''
response = {"error": "invalid request"}
body["error"] = text
failure = {"kind": "key_mismatch" if mismatch else "error"}
_OUTCOME_BY_STATUS = {503: "unavailable"}
page = render(state="unavailable")
notes = c.status == "pending"
log.warning("running late")
severity = "warning"
'''
    assert bare_statuses(source) == []


def test_a_status_is_its_value_on_the_wire() -> None:
    assert json.dumps({"status": RunStatus.ABANDONED}) == '{"status": "abandoned"}'
    assert f"{RunStatus.RUNNING}" == str(RunStatus.RUNNING) == "running"
    assert RunStatus("warning") is RunStatus.WARNING


def test_the_groups_are_the_statuses_runs_have() -> None:
    assert set(DONE) | set(FAILED) | {RunStatus.RUNNING, RunStatus.PARTIAL} == set(LOGGED)
    # Answers, never stored: the run log holds none of them.
    assert set(RunStatus) - set(LOGGED) == {
        RunStatus.DUPLICATE, RunStatus.DISABLED, RunStatus.UNAVAILABLE}
    # A run whose precondition held is stored, and done for its slot and for overdue.
    assert RunStatus.SKIPPED in DONE and RunStatus.SKIPPED not in FAILED


def test_a_status_is_stored_and_matched_as_its_value(engine: Engine) -> None:
    log_t = table_of(CronJobLog)
    run_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(log_t.insert().values(
            run_id=run_id, job_name="analytics", trigger="test", status=RunStatus.RUNNING,
            started_at=dt.datetime.now(dt.UTC), records_processed=0, attempts=1,
            dry_run=False))
        stored = conn.execute(sa.select(log_t.c.status).where(
            log_t.c.status == RunStatus.RUNNING)).scalar_one()
        text = conn.execute(sa.text("SELECT status FROM cron_job_log")).scalar_one()
    assert stored == text == "running"
