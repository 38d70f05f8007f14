"""The registry's `chunked` flag says what each job's module is: a run made of chunks
(app/core/chunks.py) or one piece.  Trends budget by it (app/observe/trends.py)."""

from __future__ import annotations

import importlib

from app.core.chunks import Chunked
from app.core.registry import JOBS


def test_the_chunked_flag_is_what_each_job_is() -> None:
    for name, spec in JOBS.items():
        module = importlib.import_module(f"app.jobs.{name.replace('-', '_')}")
        assert spec.chunked == isinstance(module.run, Chunked), name
    assert {n for n, s in JOBS.items() if s.chunked} == {
        "trip-reminders", "user-engagement", "storage-cleanup", "db-maintenance",
        "subscription-sync", "promo-cleanup"}
