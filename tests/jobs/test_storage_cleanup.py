"""storage-cleanup on the local backend and on S3 (moto_server): every kind of object is
handled, the safety brake holds, a dry run and a second run change nothing.

References are written the way the app writes them (app/voyagesmart/sample_data.py): journal media,
a chat attachment and the JSONB documents of an accommodation and a transportation.
"""

from __future__ import annotations

import datetime as dt
import io
import random
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.engine import Engine

from app.config import Settings
from app.models import Trip
from app.voyagesmart.file_references import read_reference
from app.voyagesmart.sample_data import STORAGE_URL, AppWriter
from tests.conftest import JobRun
from tests.support import storage_harness
from tests.support.moto_s3 import moto_s3  # noqa: F401
from tests.support.storage_harness import (
    BUCKETS,
    NOW,
    Harness,
    Item,
    bucket_of,
    settings_for,
)

PUBLIC = STORAGE_URL

store = storage_harness.store  # the fixture: each test on both backends


def _jpeg(quality: int) -> bytes:
    image = Image.new("RGB", (640, 480))
    pixels = image.load()
    assert pixels is not None
    rnd = random.Random(1)
    for y in range(480):
        for x in range(640):
            pixels[x, y] = ((x * 255) // 640, (y * 255) // 480, (x + y + rnd.randint(0, 40)) % 256)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


BIG_JPEG = _jpeg(100)  # ~230 kB, shrinks by ~85% at quality 80
SMALL_JPEG = _jpeg(60)


ITEMS = [
    Item("trip-media", "tmp/upload-old.bin", b"x" * 100, old=True),
    Item("trip-media", "tmp/upload-new.bin", b"y" * 100, old=False),
    Item("trip-media", "orphans/old.jpg", SMALL_JPEG, old=True, content_type="image/jpeg"),
    Item("trip-media", "orphans/young.jpg", SMALL_JPEG, old=False, content_type="image/jpeg"),
    Item("trip-media", "trips/ref.txt", b"notes", old=True, content_type="text/plain"),
    Item("trip-media", "trips/big.jpg", BIG_JPEG, old=True, content_type="image/jpeg",
         metadata={"owner": "u1"}),
    Item("trip-media", "trips/small.jpg", SMALL_JPEG, old=True, content_type="image/jpeg"),
    Item("trip-documents", "t1/accommodations/my file.pdf", b"%PDF-1.4", old=True,
         content_type="application/pdf"),
    Item("trip-documents", "t1/transportation/ticket.pdf", b"%PDF-1.4", old=True,
         content_type="application/pdf"),
]
GONE = {("trip-media", "tmp/upload-old.bin"), ("trip-media", "orphans/old.jpg")}


def _seed_references(engine: Engine) -> None:
    app = AppWriter(engine)
    owner = app.sign_up("u1@example.com", at=NOW - dt.timedelta(days=300))
    trip = app.create_trip(owner, name="Lisbon", at=NOW)
    app.journal_media(trip, owner, "trips/big.jpg", NOW)
    app.journal_media(trip, owner, "trips/small.jpg", NOW)
    app.chat_attachment(trip, owner, "trips/ref.txt", NOW)
    app.accommodation(trip, "Hotel", ["t1/accommodations/my file.pdf"], NOW)
    app.transportation(trip, "flight", ["t1/transportation/ticket.pdf"], NOW)
    # Not ours: a URL elsewhere, and a document the app stores on another bucket.
    app.document(trip, owner, "https://gravatar.example/avatar/abc", NOW)
    app.expense(trip, owner, NOW, receipt_url=f"{PUBLIC}/receipts/r/1.jpg")


def _settings(engine: Engine, tmp_path: Path, store: Harness, **overrides: Any) -> Settings:
    return settings_for(engine, tmp_path, store, **overrides)


_bucket = bucket_of


@pytest.fixture
def seeded(engine: Engine, store: Harness) -> Harness:
    store.seed(ITEMS)
    _seed_references(engine)
    return store


def test_each_kind_of_object_is_handled(engine: Engine, seeded: Harness,
                                        tmp_path: Path, run_job: JobRun) -> None:
    before = seeded.listing()
    outcome = run_job("storage-cleanup", _settings(engine, tmp_path, seeded), at=seeded.now)
    assert outcome.status == "success", outcome.message
    after = seeded.listing()
    assert set(after) == set(before) - GONE
    media = _bucket(outcome, "trip-media")
    assert media["scanned"] == 7
    assert (media["temp_deleted"], media["temp_kept"]) == (1, 1)
    assert (media["orphans_deleted"], media["young_orphans_kept"]) == (1, 1)
    assert media["orphans_deleted_bytes"] == len(SMALL_JPEG)
    assert media["referenced"] == 3
    assert (media["recompress_candidates"], media["recompressed"]) == (1, 1)
    assert media["recompress_not_worth_it"] == 0  # small.jpg is under the size threshold
    assert media["errors"] == 0
    # The recompressed image keeps its key, stays a valid JPEG and keeps its metadata.
    big = seeded.read("trip-media", "trips/big.jpg")
    assert media["recompress_bytes_saved"] == len(BIG_JPEG) - len(big.body) > 0
    assert len(big.body) < 0.5 * len(BIG_JPEG)
    with Image.open(io.BytesIO(big.body)) as image:
        assert (image.format, image.size) == ("JPEG", (640, 480))
    assert big.content_type == "image/jpeg"
    if seeded.name == "s3":
        assert big.extra["Metadata"] == {"owner": "u1"}
        assert big.extra["CacheControl"] == "max-age=3600"
    else:  # the file keeps its modification time
        assert after[("trip-media", "trips/big.jpg")][0] == len(big.body)
    # Files referenced from the JSONB documents, URL-encoded keys included, are untouched.
    assert _bucket(outcome, "trip-documents")["referenced"] == 2
    assert outcome.records_processed == 3
    assert "deleted 2 objects" in outcome.message


def test_second_run_changes_nothing(engine: Engine, seeded: Harness, tmp_path: Path,
                                    run_job: JobRun) -> None:
    settings = _settings(engine, tmp_path, seeded)
    assert run_job("storage-cleanup", settings, at=seeded.now).status == "success"
    before = seeded.listing()
    again = run_job("storage-cleanup", settings, at=seeded.now)
    assert again.status == "success", again.message
    assert seeded.listing() == before
    media = _bucket(again, "trip-media")
    assert media["temp_deleted"] == media["orphans_deleted"] == media["recompressed"] == 0
    assert again.records_processed == 0


def test_dry_run_reports_and_changes_nothing(engine: Engine, seeded: Harness,
                                             tmp_path: Path, run_job: JobRun) -> None:
    before = seeded.listing()
    outcome = run_job("storage-cleanup", _settings(engine, tmp_path, seeded), at=seeded.now,
                      dry_run=True)
    assert outcome.status == "success", outcome.message
    assert seeded.listing() == before
    media = _bucket(outcome, "trip-media")
    assert (media["temp_to_delete"], media["orphans_to_delete"]) == (1, 1)
    assert media["temp_deleted"] == media["orphans_deleted"] == media["recompressed"] == 0
    assert media["recompress_candidates"] == 1
    assert outcome.message.startswith("would delete 2 objects")


def test_brake_stops_a_run_that_would_delete_too_much(engine: Engine, seeded: Harness,
                                                      tmp_path: Path, run_job: JobRun) -> None:
    """Above both the count and the share the run changes nothing and ends `error`; the
    dry run says the same; a forced run goes ahead."""
    before = seeded.listing()
    settings = _settings(engine, tmp_path, seeded, storage_cleanup_delete_brake_share=0.1,
                         storage_cleanup_delete_brake_count=1)
    outcome = run_job("storage-cleanup", settings, at=seeded.now)
    assert outcome.status == "error"
    assert outcome.attempts == 1  # not retried: the same data gives the same answer
    assert outcome.message.startswith(
        "safety brake: would move trip-media objects to the quarantine: 2 of 7 (29%), "
        "above 10% and above 1; nothing was changed.")
    assert "STORAGE_CLEANUP_DELETE_BRAKE_SHARE/STORAGE_CLEANUP_DELETE_BRAKE_COUNT" in (
        outcome.message)
    brake = outcome.details["brake"]
    assert (brake["affected"], brake["population"], brake["tripped"]) == (2, 7, True)
    assert brake["samples"] == ["orphans/old.jpg", "tmp/upload-old.bin"]
    assert seeded.listing() == before  # nothing deleted, nothing recompressed
    assert seeded.quarantine() == {}
    dry = run_job("storage-cleanup", settings, at=seeded.now, dry_run=True)
    assert (dry.status, dry.message) == ("error", outcome.message)
    forced = run_job("storage-cleanup", settings, at=seeded.now, force=True)
    assert forced.status == "success", forced.message
    assert set(seeded.listing()) == set(before) - GONE


def test_brake_count_lets_a_small_cleanup_through(engine: Engine, seeded: Harness,
                                                  tmp_path: Path, run_job: JobRun) -> None:
    """2 of 7 is above the 10% share, but not above a count of 2: the run goes ahead."""
    settings = _settings(engine, tmp_path, seeded, storage_cleanup_delete_brake_share=0.1,
                         storage_cleanup_delete_brake_count=2)
    outcome = run_job("storage-cleanup", settings, at=seeded.now)
    assert outcome.status == "success", outcome.message
    assert _bucket(outcome, "trip-media")["brake"]["tripped"] is False
    assert _bucket(outcome, "trip-media")["orphans_deleted"] == 1


def test_a_reference_linked_during_the_scan_saves_the_file(
        engine: Engine, seeded: Harness, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, run_job: JobRun) -> None:
    """A row written while buckets are listed is read again before anything is deleted."""
    from app.jobs import storage_cleanup

    original = storage_cleanup._classify

    def classify_then_link(*args: Any) -> None:
        original(*args)
        if args[2] != "trip-media":
            return
        with engine.connect() as conn:
            trip, owner = conn.execute(sa.select(Trip.id, Trip.owner_id)).one()
        AppWriter(engine).chat_attachment(trip, owner, "orphans/old.jpg",
                                          dt.datetime.now(dt.UTC))

    monkeypatch.setattr(storage_cleanup, "_classify", classify_then_link)
    outcome = run_job("storage-cleanup", _settings(engine, tmp_path, seeded), at=seeded.now)
    assert outcome.status == "success", outcome.message
    assert ("trip-media", "orphans/old.jpg") in seeded.listing()
    assert _bucket(outcome, "trip-media")["orphans_deleted"] == 0


def test_an_unreadable_source_protects_its_buckets(engine: Engine, seeded: Harness,
                                                   tmp_path: Path, run_job: JobRun) -> None:
    """Without the chat table nothing says which trip-media files chat uses: none of that
    bucket is deleted, and the run says why; trip-documents is cleaned as usual."""
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE trip_chat_messages RENAME TO chat_elsewhere")
    try:
        before = seeded.listing()
        outcome = run_job("storage-cleanup", _settings(engine, tmp_path, seeded), at=seeded.now)
    finally:  # the PostgreSQL database is shared by the session
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE chat_elsewhere RENAME TO trip_chat_messages")
    assert outcome.status == "warning", outcome.message
    assert "trip_chat_messages.attachment_url" in outcome.message
    assert outcome.details["protected_buckets"] == ["trip-media"]
    assert _bucket(outcome, "trip-media")["protected_by"] == [
        "trip_chat_messages.attachment_url"]
    after = seeded.listing()
    assert {k for k in before if k[0] == "trip-media"} <= set(after)
    assert ("trip-media", "trips/ref.txt") in after


def test_a_configured_bucket_that_does_not_exist_is_an_error(
        engine: Engine, seeded: Harness, tmp_path: Path, run_job: JobRun) -> None:
    before = seeded.listing()
    settings = _settings(engine, tmp_path, seeded,
                         storage_buckets="trip-media,trip-documents,avatars")
    outcome = run_job("storage-cleanup", settings, at=seeded.now)
    assert outcome.status == "error"
    assert outcome.message == (f"storage-cleanup cannot run: bucket(s) avatars do not exist "
                               f"on the {seeded.storage.name} backend; check STORAGE_BUCKETS")
    assert outcome.attempts == 1
    assert seeded.listing() == before


def test_the_default_buckets_are_voyagesmarts() -> None:
    assert Settings(_env_file=None).storage_buckets == ["trip-media", "trip-documents"]  # type: ignore[call-arg]


@pytest.mark.parametrize("url, expected", [
    (f"{PUBLIC}/trip-media/u1/a.png", {("trip-media", "u1/a.png")}),
    (f"{PUBLIC}/trip-documents/docs/my%20file.pdf?download=1",
     {("trip-documents", "docs/my%20file.pdf"), ("trip-documents", "docs/my file.pdf"),
      ("trip-documents", "docs/my%20file.pdf?download=1"),
      ("trip-documents", "docs/my file.pdf?download=1")}),
    ("https://x.supabase.co/storage/v1/object/sign/trip-media/a/b.pdf?token=t",
     {("trip-media", "a/b.pdf"), ("trip-media", "a/b.pdf?token=t")}),
    ("https://x.supabase.co/storage/v1/render/image/public/trip-media/k.jpg?width=200",
     {("trip-media", "k.jpg"), ("trip-media", "k.jpg?width=200")}),
    ("https://gravatar.example/avatar/abc", set()),
    (f"{PUBLIC}/receipts/r/1.jpg", set()),  # a bucket this service does not clean
    ("", set()),
])
def test_reference_urls_are_parsed(url: str, expected: set[tuple[str, str]]) -> None:
    reading = read_reference(url, BUCKETS)
    assert reading.problem is None
    assert set(reading.names) == expected
