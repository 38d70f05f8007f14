"""The registry's `chunked` flag says what each job's module is: a run made of chunks
(app/core/chunks.py) or one piece.  Trends budget by it (app/observe/trends.py)."""

from __future__ import annotations

import importlib

from app.core.chunks import Chunked
from app.core.registry import JOBS


def test_the_chunked_flag_is_what_each_job_is() -> None:
    for name, spec in JOBS.items():
        module = importlib.import_module(f"app.jobs.{name.replace('-', '_')}")
        # A module may keep a plain `run` for calls from outside the runner beside it.
        made_of_chunks = any(isinstance(getattr(module, attr, None), Chunked)
                             for attr in ("run", "chunked"))
        assert spec.chunked == made_of_chunks, name
    assert {n for n, s in JOBS.items() if s.chunked} == {
        "trip-reminders", "user-engagement", "storage-cleanup", "db-maintenance",
        "subscription-sync", "promo-cleanup"}
