"""The one list of jobs: every entry is complete and runnable, names and aliases resolve to
exactly one job, and every table a job declares is a table the models know."""

from __future__ import annotations

import datetime as dt
import importlib
import re

import pytest

import app.models  # noqa: F401  (registers every table on Base.metadata)
from app.core import registry
from app.core.schedule_check import EVERY_TABLE
from app.db import Base

JOBS = sorted(registry.JOBS)
WRITES = {"INSERT", "UPDATE", "DELETE"}


@pytest.mark.parametrize("name", JOBS)
def test_every_spec_is_complete(name: str) -> None:
    spec = registry.JOBS[name]
    assert spec.name == name
    assert re.fullmatch(r"[a-z]+(-[a-z]+)*", name), name
    assert spec.description.strip()
    assert len(spec.schedule.split()) == 5, spec.schedule
    now = dt.datetime(2026, 11, 28, 3, 0, 30, tzinfo=dt.UTC)
    slot = registry.previous_fire(spec.schedule, now)
    assert slot <= now < registry.next_fire(spec.schedule, slot)
    assert spec.max_runtime > dt.timedelta(0)
    assert spec.grace > dt.timedelta(0)
    assert spec.retry.attempts >= 1
    assert 0 < spec.retry.base_delay <= spec.retry.max_delay


@pytest.mark.parametrize("name", JOBS)
def test_every_job_and_restorer_names_a_function_that_exists(name: str) -> None:
    spec = registry.JOBS[name]
    for func in (spec.func, spec.restore):
        if func is None:
            continue
        module, _, attribute = func.__qualname__.rpartition(".")
        assert module.startswith("app.jobs."), func.__qualname__
        assert callable(getattr(importlib.import_module(module), attribute))


def test_names_and_aliases_are_unique_and_resolve() -> None:
    assert len({name.lower() for name in registry.JOBS}) == len(registry.JOBS)
    assert not set(registry.ALIASES) & set(registry.JOBS)
    for alias, target in registry.ALIASES.items():
        assert registry.get_job(alias) is registry.JOBS[target]
    for name, spec in registry.JOBS.items():
        assert registry.get_job(name) is spec
    assert registry.get_job("no-such-job") is None


@pytest.mark.parametrize("name", JOBS)
def test_every_table_a_job_declares_is_a_known_table(name: str) -> None:
    spec = registry.JOBS[name]
    touched = registry.tables_touched(spec)
    if not spec.uses:
        assert touched == {EVERY_TABLE}
        return
    assert EVERY_TABLE not in touched
    for use in spec.uses:
        table = Base.metadata.tables.get(use.table)
        assert table is not None, f"{name}: unknown table {use.table}"
        assert set(use.columns) <= set(table.c.keys()), (name, use.table)
        assert set(use.writes) <= WRITES, (name, use.table, use.writes)
