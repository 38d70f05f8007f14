"""storage-cleanup made of chunks (batches of images, of moves, of quarantined objects): a
run stopped at every chunk boundary and continued by the next calls leaves the buckets
and the quarantine as a run left whole does on identical objects, and reports the same
figures; the dry run before it predicted exactly what it did.  Local backend and S3
(moto_server), SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.engine import Engine

from app.core.runner import Runner, RunOutcome
from app.core.status import RunStatus
from app.db import table_of
from app.jobs import storage_cleanup
from app.models import CronJobLog, Trip
from app.voyagesmart.sample_data import AppWriter
from tests.conftest import FixedClock
from tests.support import storage_harness
from tests.support.chunk_cuts import cut_everywhere, run_to_the_end
from tests.support.moto_s3 import moto_s3  # noqa: F401
from tests.support.storage_harness import (
    BUCKETS,
    NOW,
    QUARANTINE,
    Harness,
    Item,
    LocalHarness,
    S3Harness,
    bucket_of,
    settings_for,
)

TASK = "storage-cleanup"
store = storage_harness.store  # the fixture: each test on both backends
log_t = table_of(CronJobLog)


def _photo(seed: int) -> bytes:
    image = Image.new("RGB", (400, 300))
    rnd = random.Random(seed)
    image.putdata([(x % 256, y % 256, rnd.randint(0, 60)) for y in range(300)
                   for x in range(400)])
    out = io.BytesIO()
    image.save(out, "JPEG", quality=100)
    return out.getvalue()


PHOTOS = [_photo(seed) for seed in range(3)]
EARLIER = f"{QUARANTINE}20260101T000000Z_{uuid.UUID(int=7)}/orphan/"  # past the retention

ITEMS = [
    *(Item("trip-media", f"trips/photo-{i}.jpg", body, old=True, content_type="image/jpeg")
      for i, body in enumerate(PHOTOS)),
    *(Item("trip-media", f"orphans/o{i:02d}.bin", b"o" * (10 + i), old=True)
      for i in range(7)),
    *(Item("trip-media", f"tmp/t{i}.bin", b"t" * (20 + i), old=True) for i in range(3)),
    Item("trip-media", "tmp/fresh.bin", b"fresh", old=False),
    Item("trip-media", "orphans/young.bin", b"young", old=False),
    Item("trip-documents", "t1/kept.pdf", b"%PDF-1.4 kept", old=True),
    *(Item("trip-documents", f"old/d{i}.pdf", b"%PDF-1.4 " + bytes([i]), old=True)
      for i in range(4)),
    # Removed by an earlier run: one linked again (goes back), two to purge.
    Item("trip-media", f"{EARLIER}trips/back.txt", b"back", old=True),
    Item("trip-media", f"{EARLIER}gone/a.bin", b"a", old=True),
    Item("trip-documents", f"{EARLIER}gone/b.pdf", b"b", old=True),
]


def _seed_references(engine: Engine) -> None:
    app = AppWriter(engine)
    owner = app.sign_up("u1@example.com", at=NOW - dt.timedelta(days=300))
    trip = app.create_trip(owner, name="Lisbon", at=NOW)
    for i in range(len(PHOTOS)):
        app.journal_media(trip, owner, f"trips/photo-{i}.jpg", NOW)
    app.chat_attachment(trip, owner, "trips/back.txt", NOW)
    app.accommodation(trip, "Hotel", ["t1/kept.pdf"], NOW)


def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_cleanup, "_IMAGES_PER_CHUNK", 1)
    monkeypatch.setattr(storage_cleanup, "_MOVES_PER_CHUNK", 2)


def _second(store: Harness, request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    """The same buckets again, empty: the local backend in another directory, S3 after a
    reset of the server (the first run's state is read before)."""
    if isinstance(store, LocalHarness):
        return LocalHarness(tmp_path / "storage-2", BUCKETS)
    assert isinstance(store, S3Harness)
    return S3Harness(request.getfixturevalue("moto_s3"), BUCKETS)


def _state(store: Harness, run_id: Any) -> dict[str, Any]:
    """Every object with a digest of its bytes; this run's quarantine folder named RUN."""
    every = {(bucket, obj.key) for bucket in store.buckets for obj in store.storage.list(bucket)}
    state: dict[tuple[str, str], str] = {}
    for bucket, key in every:
        digest = hashlib.sha256(store.read(bucket, key).body).hexdigest()[:16]
        if str(run_id) in key:
            key = QUARANTINE + "RUN/" + key.split("/", 2)[2]
        state[(bucket, key)] = digest
    return dict(sorted(state.items()))


def _figures(outcome: RunOutcome) -> list[dict[str, Any]]:
    return list(outcome.details["buckets"])


def test_a_run_cut_at_every_chunk_ends_like_a_whole_run(
        engine: Engine, store: Harness, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _seed_references(engine)
    _small_chunks(monkeypatch)
    store.seed(ITEMS)
    settings = settings_for(engine, tmp_path, store, cron_catch_up=False)
    whole = Runner(settings, engine, clock=FixedClock(store.now)).run(TASK, trigger="cli")
    assert whole.status == RunStatus.SUCCESS, whole.message
    whole_state = _state(store, whole.run_id)

    again = _second(store, request, tmp_path)
    again.seed(ITEMS)
    settings = settings_for(engine, tmp_path, again, cron_catch_up=False)
    dry = Runner(settings, engine, clock=FixedClock(again.now)).run(TASK, trigger="cli",
                                                                    dry_run=True)
    cut_everywhere(monkeypatch)
    answers = run_to_the_end(Runner(settings, engine, clock=FixedClock(again.now)), TASK)
    last = answers[-1]
    assert last.status == RunStatus.SUCCESS, last.message

    # 3 images, 10 removals in trip-media and 4 in trip-documents by 2, a quarantine
    # batch in each bucket (the put back and a purge; a purge).
    chunks = 3 + 5 + 2 + 1 + 1
    assert [a.http_status for a in answers] == [202] * (chunks - 1) + [200]
    assert {a.run_id for a in answers} == {last.run_id}
    assert _state(again, last.run_id) == whole_state
    assert _figures(last) == _figures(whole)
    media = bucket_of(last, "trip-media")
    assert (media["temp_deleted"], media["orphans_deleted"], media["recompressed"],
            media["quarantine_returned"], media["quarantine_purged"]) == (3, 7, 3, 1, 1)
    assert ("trip-media", "trips/back.txt") in again.listing()
    assert last.records_processed == whole.records_processed == 3 + 7 + 3 + 1 + 1 + 4 + 1
    with engine.connect() as conn:
        logged = conn.execute(
            sa.select(log_t.c.run_id, log_t.c.status, log_t.c.records_processed,
                      log_t.c.chunks_done, log_t.c.chunks_total)
            .where(log_t.c.job_name == TASK, log_t.c.dry_run.is_(False))
            .order_by(log_t.c.started_at)).all()
    assert [tuple(row)[1:] for row in logged] == [
        ("success", whole.records_processed, chunks, chunks)] * 2
    assert logged[1].run_id == last.run_id  # one row for the cut run

    # The dry run before the cut run predicted exactly what it did.
    for predicted, done in zip(dry.details["buckets"], last.details["buckets"], strict=True):
        assert (predicted["temp_to_delete"], predicted["orphans_to_delete"],
                predicted["recompress_to_replace"], predicted["quarantine_to_return"],
                predicted["quarantine_to_purge"]) == (
            done["temp_deleted"], done["orphans_deleted"], done["recompressed"],
            done["quarantine_returned"], done["quarantine_purged"])
        assert predicted["samples"] == done["samples"]


def test_a_file_linked_between_two_invocations_is_kept(
        engine: Engine, store: Harness, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk re-reads the references written since the scan began: an orphan linked
    after the plan, before its chunk runs, stays where it is."""
    _seed_references(engine)
    _small_chunks(monkeypatch)
    store.seed(ITEMS)
    settings = settings_for(engine, tmp_path, store, cron_catch_up=False)
    cut_everywhere(monkeypatch)
    runner = Runner(settings, engine, clock=FixedClock(store.now))
    first = runner.run(TASK, trigger="crontab")
    assert first.status == RunStatus.PARTIAL, first.message
    with engine.connect() as conn:
        trip, owner = conn.execute(sa.select(Trip.id, Trip.owner_id)).one()
    AppWriter(engine).chat_attachment(trip, owner, "orphans/o06.bin", dt.datetime.now(dt.UTC))
    last = run_to_the_end(runner, TASK)[-1]
    assert last.status == RunStatus.SUCCESS, last.message
    media = bucket_of(last, "trip-media")
    assert (media["orphans_to_delete"], media["orphans_deleted"],
            media["linked_during_run"]) == (7, 6, 1)
    assert ("trip-media", "orphans/o06.bin") in store.listing()


def test_a_real_budget_spreads_the_run_over_calls(engine: Engine, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """FUNCTION_MAX_DURATION itself, no cut forced: with a second or so per call the run
    stops between chunks of images, answers 202, and the next calls finish it."""
    _small_chunks(monkeypatch)
    local = LocalHarness(tmp_path / "storage", BUCKETS)
    photos = [_photo(seed) for seed in range(12)]
    local.seed([Item("trip-media", f"trips/p{i:02d}.jpg", body, old=True)
                for i, body in enumerate(photos)])
    app = AppWriter(engine)
    owner = app.sign_up("u1@example.com", at=NOW - dt.timedelta(days=300))
    trip = app.create_trip(owner, name="Lisbon", at=NOW)
    for i in range(len(photos)):
        app.journal_media(trip, owner, f"trips/p{i:02d}.jpg", NOW)
    settings = settings_for(engine, tmp_path, local, cron_catch_up=False,
                            function_max_duration=1.2)
    answers = run_to_the_end(Runner(settings, engine, clock=FixedClock(local.now)), TASK)
    assert len(answers) >= 2
    assert [a.http_status for a in answers] == [202] * (len(answers) - 1) + [200]
    assert answers[0].details["chunks_total"] == 12
    last = answers[-1]
    assert last.status == RunStatus.SUCCESS, last.message
    assert bucket_of(last, "trip-media")["recompressed"] == last.records_processed == 12
    with engine.connect() as conn:
        logged = conn.execute(sa.select(log_t.c.chunks_done, log_t.c.chunks_total,
                                        log_t.c.records_processed)
                              .where(log_t.c.job_name == TASK)).all()
    assert [tuple(row) for row in logged] == [(12, 12, 12)]
    assert all(len(body) < len(photos[i]) for i, body in enumerate(
        local.read("trip-media", f"trips/p{i:02d}.jpg").body for i in range(12)))
