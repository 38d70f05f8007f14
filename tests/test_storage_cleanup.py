"""storage-cleanup on the local backend and on S3 (moto_server): every kind of object is
handled, the safety brake holds, a dry run and a second run change nothing.

References are written the way the app writes them (app/sample_data.py): journal media,
a chat attachment and the JSONB documents of an accommodation and a transportation.
"""

from __future__ import annotations

import datetime as dt
import io
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.engine import Engine

from app.config import Settings
from app.jobs.storage_cleanup import parse_reference
from app.models import Trip
from app.runner import Runner, RunOutcome
from app.sample_data import STORAGE_URL, AppWriter
from app.storage import LocalStorage, ObjectData, S3Storage, Storage
from tests.conftest import FixedClock, make_settings
from tests.moto_s3 import MotoS3, moto_s3  # noqa: F401

NOW = dt.datetime(2026, 11, 28, 2, 0, tzinfo=dt.UTC)
PUBLIC = STORAGE_URL
BUCKETS = ["trip-media", "trip-documents"]


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


@dataclass
class Item:
    bucket: str
    key: str
    body: bytes
    old: bool
    content_type: str = "application/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)


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


class Harness:
    """One storage backend with objects whose age the test controls."""

    name: str
    storage: Storage
    overrides: dict[str, Any]
    now: dt.datetime

    def seed(self) -> None:
        raise NotImplementedError

    def listing(self) -> dict[tuple[str, str], tuple[int, str]]:
        return {(bucket, obj.key): (obj.size, obj.etag)
                for bucket in BUCKETS for obj in self.storage.list(bucket)}

    def read(self, bucket: str, key: str) -> ObjectData:
        return self.storage.get(bucket, key)


class LocalHarness(Harness):
    name = "local"

    def __init__(self, root: Path) -> None:
        self.storage = LocalStorage(root)
        self.overrides = {"storage_backend": "local", "storage_local_root": root}
        self.now = NOW

    def seed(self) -> None:
        for item in ITEMS:
            self.storage.put(item.bucket, item.key, ObjectData(item.body, item.content_type))
            age = dt.timedelta(days=200) if item.old else dt.timedelta(hours=1)
            stamp = (NOW - age).timestamp()
            path = self.storage.root / item.bucket / item.key
            import os

            os.utime(path, (stamp, stamp))


class S3Harness(Harness):
    """S3 dates are set by the server: old objects are written a second before young ones,
    and the age limits are scaled to sit between the two."""

    name = "s3"

    def __init__(self, server: MotoS3) -> None:
        server.reset()
        settings = make_settings("sqlite://", Path("."), **server.settings)
        self.storage = S3Storage.from_settings(settings)
        self.client = self.storage.client  # type: ignore[attr-defined]
        self.overrides = dict(server.settings)
        self.now = NOW
        for bucket in BUCKETS:
            self.client.create_bucket(Bucket=bucket)

    def _put(self, item: Item) -> None:
        self.client.put_object(Bucket=item.bucket, Key=item.key, Body=item.body,
                               ContentType=item.content_type, Metadata=item.metadata,
                               CacheControl="max-age=3600")

    def seed(self) -> None:
        for item in ITEMS:
            if item.old:
                self._put(item)
        # S3 dates have one-second resolution: start the young ones in the next second.
        time.sleep(1.05 - (time.time() % 1.0) + 0.05)
        for item in ITEMS:
            if not item.old:
                self._put(item)
        dates = {(b, o.key): o.last_modified for b in BUCKETS for o in self.storage.list(b)}
        old = max(d for (b, k), d in dates.items() if _item(b, k).old)
        young = min(d for (b, k), d in dates.items() if not _item(b, k).old)
        assert young > old
        self.now = max(dates.values()) + dt.timedelta(milliseconds=300)
        limit = ((self.now - old) + (self.now - young)) / 2
        assert self.now - young < limit < self.now - old
        seconds = limit.total_seconds()
        self.overrides.update(storage_temp_max_age_hours=seconds / 3600,
                              storage_orphan_min_age_days=seconds / 86400,
                              storage_media_min_age_days=seconds / 86400)


def _item(bucket: str, key: str) -> Item:
    return next(i for i in ITEMS if (i.bucket, i.key) == (bucket, key))


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "local":
        yield LocalHarness(tmp_path / "storage")
    else:
        yield S3Harness(request.getfixturevalue("moto_s3"))


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
    values: dict[str, Any] = {"storage_buckets": ",".join(BUCKETS),
                              "storage_recompress_min_bytes": 50_000,
                              "storage_delete_brake_fraction": 0.5}
    values.update(store.overrides)
    values.update(overrides)
    return make_settings(str(engine.url.render_as_string(hide_password=False)), tmp_path,
                         **values)


def _run(engine: Engine, settings: Settings, store: Harness, **kwargs: Any) -> RunOutcome:
    runner = Runner(settings, engine, clock=FixedClock(store.now))
    return runner.run("storage-cleanup", trigger="cli", **kwargs)


def _bucket(outcome: RunOutcome, name: str) -> dict[str, Any]:
    return next(b for b in outcome.details["buckets"] if b["bucket"] == name)


@pytest.fixture
def seeded(engine: Engine, store: Harness) -> Harness:
    store.seed()
    _seed_references(engine)
    return store


def test_each_kind_of_object_is_handled(engine: Engine, seeded: Harness,
                                        tmp_path: Path) -> None:
    before = seeded.listing()
    outcome = _run(engine, _settings(engine, tmp_path, seeded), seeded)
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


def test_second_run_changes_nothing(engine: Engine, seeded: Harness, tmp_path: Path) -> None:
    settings = _settings(engine, tmp_path, seeded)
    assert _run(engine, settings, seeded).status == "success"
    before = seeded.listing()
    again = _run(engine, settings, seeded)
    assert again.status == "success", again.message
    assert seeded.listing() == before
    media = _bucket(again, "trip-media")
    assert media["temp_deleted"] == media["orphans_deleted"] == media["recompressed"] == 0
    assert again.records_processed == 0


def test_dry_run_reports_and_changes_nothing(engine: Engine, seeded: Harness,
                                             tmp_path: Path) -> None:
    before = seeded.listing()
    outcome = _run(engine, _settings(engine, tmp_path, seeded), seeded, dry_run=True)
    assert outcome.status == "success", outcome.message
    assert seeded.listing() == before
    media = _bucket(outcome, "trip-media")
    assert (media["temp_to_delete"], media["orphans_to_delete"]) == (1, 1)
    assert media["temp_deleted"] == media["orphans_deleted"] == media["recompressed"] == 0
    assert media["recompress_candidates"] == 1
    assert outcome.message.startswith("would delete 2 objects")


def test_brake_stops_a_run_that_would_delete_too_much(engine: Engine, seeded: Harness,
                                                      tmp_path: Path) -> None:
    before = seeded.listing()
    settings = _settings(engine, tmp_path, seeded, storage_delete_brake_fraction=0.1)
    outcome = _run(engine, settings, seeded)
    assert outcome.status == "warning"
    assert "safety brake" in outcome.message
    assert "trip-media: 2 of 7 objects (28.6%)" in outcome.message
    assert outcome.details["braked"] == ["trip-media"]
    assert seeded.listing() == before  # nothing deleted, nothing recompressed
    dry = _run(engine, settings, seeded, dry_run=True)
    assert dry.status == "warning"
    assert dry.message.endswith("the safety brake would stop the run (trip-media)")
    forced = _run(engine, settings, seeded, force=True)
    assert forced.status == "success", forced.message
    assert set(seeded.listing()) == set(before) - GONE


def test_a_reference_linked_during_the_scan_saves_the_file(
        engine: Engine, seeded: Harness, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
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
    outcome = _run(engine, _settings(engine, tmp_path, seeded), seeded)
    assert outcome.status == "success", outcome.message
    assert ("trip-media", "orphans/old.jpg") in seeded.listing()
    assert _bucket(outcome, "trip-media")["orphans_deleted"] == 0


def test_an_unreadable_source_protects_its_buckets(engine: Engine, seeded: Harness,
                                                   tmp_path: Path) -> None:
    """Without the chat table nothing says which trip-media files chat uses: none of that
    bucket is deleted, and the run says why; trip-documents is cleaned as usual."""
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE trip_chat_messages RENAME TO chat_elsewhere")
    try:
        before = seeded.listing()
        outcome = _run(engine, _settings(engine, tmp_path, seeded), seeded)
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
        engine: Engine, seeded: Harness, tmp_path: Path) -> None:
    before = seeded.listing()
    settings = _settings(engine, tmp_path, seeded,
                         storage_buckets="trip-media,trip-documents,avatars")
    outcome = _run(engine, settings, seeded)
    assert outcome.status == "error"
    assert outcome.message == (f"storage-cleanup cannot run: bucket(s) avatars do not exist "
                               f"on the {seeded.storage.name} backend; check STORAGE_BUCKETS")
    assert outcome.attempts == 1
    assert seeded.listing() == before


def test_the_default_buckets_are_voyagesmarts() -> None:
    assert Settings(_env_file=None).storage_buckets == ["trip-media", "trip-documents"]  # type: ignore[call-arg]


@pytest.mark.parametrize("url, expected", [
    (f"{PUBLIC}/avatars/u1/a.png", ("avatars", "u1/a.png")),
    (f"{PUBLIC}/documents/docs/my%20file.pdf?download=1", ("documents", "docs/my file.pdf")),
    ("https://x.supabase.co/storage/v1/object/sign/docs/a/b.pdf?token=t", ("docs", "a/b.pdf")),
    ("https://x.supabase.co/storage/v1/render/image/public/m/k.jpg?width=200", ("m", "k.jpg")),
    ("https://gravatar.example/avatar/abc", None),
    (f"{PUBLIC}/bucket-only", None),
    ("", None),
])
def test_reference_urls_are_parsed(url: str, expected: tuple[str, str] | None) -> None:
    assert parse_reference(url) == expected
