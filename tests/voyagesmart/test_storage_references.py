"""A reference protects whatever it can name (issue 11, finding 2).

Every URL form supabase-js and the Storage API produce, `bucket/key` paths and bare keys
name a file; a key containing `?` is not cut at it; no rule (the temp rule included)
removes a referenced object; a value the job cannot interpret blocks deletion in the
buckets it might name, and is reported.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.voyagesmart.file_references import Malformed, read_reference, values_in
from app.voyagesmart.sample_data import STORAGE_URL, AppWriter, public_url, signed_url
from tests.conftest import JobRun
from tests.support import storage_harness
from tests.support.moto_s3 import moto_s3  # noqa: F401
from tests.support.storage_harness import (
    BUCKETS,
    NOW,
    Harness,
    Item,
    bucket_of,
    open_store,
    settings_for,
)

HOST = "https://demo-project.supabase.co/storage/v1"

store = storage_harness.store  # the fixture: each test on both backends


@pytest.mark.parametrize("value, bucket, key", [
    # getPublicUrl (encodeURI leaves ? and #), with or without its download/transform query
    (public_url("trip-media", "u1/what?.jpg"), "trip-media", "u1/what?.jpg"),
    (public_url("trip-media", "u1/what?.jpg") + "?download=", "trip-media", "u1/what?.jpg"),
    (public_url("trip-media", "u1/a#1.jpg"), "trip-media", "u1/a#1.jpg"),
    (public_url("trip-media", "u1/my file é.jpg"), "trip-media", "u1/my file é.jpg"),
    (public_url("trip-media", "u1/100%.jpg"), "trip-media", "u1/100%.jpg"),
    (public_url("trip-media", "u1/a.jpg") + "?width=200&height=100", "trip-media", "u1/a.jpg"),
    # an encodeURIComponent-built key: the escaped ? is part of the key, not a query
    (f"{STORAGE_URL}/trip-media/u1/what%3F.jpg", "trip-media", "u1/what?.jpg"),
    # createSignedUrl, its download option, and a signed URL of a key with `?`
    (signed_url("trip-media", "t1/p 1.jpg", "eyJ.x.y"), "trip-media", "t1/p 1.jpg"),
    (signed_url("trip-media", "t1/a.jpg", "eyJ") + "&download=a.jpg", "trip-media", "t1/a.jpg"),
    (signed_url("trip-media", "u1/what?.jpg", "eyJ"), "trip-media", "u1/what?.jpg"),
    (f"{HOST}/object/authenticated/trip-documents/t1/a.pdf", "trip-documents", "t1/a.pdf"),
    (f"{HOST}/object/trip-documents/t1/a.pdf", "trip-documents", "t1/a.pdf"),
    (f"{HOST}/object/info/public/trip-media/k.jpg", "trip-media", "k.jpg"),
    (f"{HOST}/render/image/public/trip-media/k.jpg?width=200", "trip-media", "k.jpg"),
    (f"{HOST}/render/image/sign/trip-media/k.jpg?token=t", "trip-media", "k.jpg"),
    (f"{HOST}/render/image/authenticated/trip-media/k.jpg", "trip-media", "k.jpg"),
    (f"{HOST}/s3/trip-media/k.jpg", "trip-media", "k.jpg"),
    # relative, and with spaces around
    ("/storage/v1/object/public/trip-media/k.jpg", "trip-media", "k.jpg"),
    (f"  {STORAGE_URL}/trip-media/k.jpg\n", "trip-media", "k.jpg"),
    # a bucket/key path, with or without a leading slash
    ("trip-media/u1/a.jpg", "trip-media", "u1/a.jpg"),
    ("s3://trip-media/u1/a.jpg", "trip-media", "u1/a.jpg"),
    ("/trip-documents/t1/a.pdf", "trip-documents", "t1/a.pdf"),
])
def test_every_form_names_the_file(value: str, bucket: str, key: str) -> None:
    reading = read_reference(value, BUCKETS)
    assert reading.problem is None
    assert (bucket, key) in reading.names


@pytest.mark.parametrize("value, key", [
    ("users/u1.png", "users/u1.png"),
    ("u1/what?.jpg", "u1/what?.jpg"),
    ("avatar.png", "avatar.png"),
])
def test_a_bare_key_names_it_in_every_bucket(value: str, key: str) -> None:
    reading = read_reference(value, BUCKETS)
    assert reading.problem is None
    assert (None, key) in reading.names


@pytest.mark.parametrize("value", [
    "https://gravatar.example/avatar/abc",
    "https://example.com/mock-file-url/ticket.pdf",  # the app's failed-upload stand-in
    f"{STORAGE_URL}/receipts/r/1.jpg",  # a bucket this service does not clean
    "", "   ",
])
def test_values_naming_none_of_our_files(value: str) -> None:
    assert read_reference(value, BUCKETS).names == frozenset()
    assert read_reference(value, BUCKETS).problem is None


@pytest.mark.parametrize("value, problem, buckets", [
    (f"{HOST}/objects/trip-media/a.jpg", "a Storage URL of no known route", None),
    (f"{STORAGE_URL}/trip-media", "a Storage URL naming a bucket but no file",
     ("trip-media",)),
    (f"{STORAGE_URL}/", "a Storage URL naming no file", None),
    (f"{STORAGE_URL}/trip-media/a" + "?" * 20, "a Storage URL with too many ? or #", None),
])
def test_values_that_cannot_be_interpreted(value: str, problem: str,
                                           buckets: tuple[str, ...] | None) -> None:
    reading = read_reference(value, BUCKETS)
    assert (reading.problem, reading.problem_buckets) == (problem, buckets)


@pytest.mark.parametrize("value, expected", [
    ([{"name": "a", "url": "u1", "type": "x"}, {"name": "b", "url": "u2"}], ["u1", "u2"]),
    ('[{"name": "a", "url": "u1"}]', ["u1"]),  # JSON as text
    ('"[{\\"name\\": \\"a\\", \\"url\\": \\"u1\\"}]"', ["u1"]),  # encoded twice
    (["u1", None], ["u1"]),
    ({"url": "u1"}, ["u1"]),
    ([{"name": "a", "url": None}], []),
    ([], []),
])
def test_documents_arrays_are_read_whatever_their_shape(value: object,
                                                        expected: list[str]) -> None:
    assert list(values_in("jsonb", value)) == expected


@pytest.mark.parametrize("value", [
    [{"name": "ticket.pdf", "path": "t1/ticket.pdf"}], "not json", [42], 7])
def test_documents_that_cannot_be_read_are_malformed(value: object) -> None:
    assert any(isinstance(item, Malformed) for item in values_in("jsonb", value))


# --- the job on real data ---------------------------------------------------------------

def _owner_and_trip(engine: Engine) -> tuple[object, object]:
    app = AppWriter(engine)
    owner = app.sign_up("owner@example.com", at=NOW - dt.timedelta(days=300))
    return owner, app.create_trip(owner, name="Lisbon", at=NOW)  # type: ignore[arg-type]


@pytest.fixture(params=["local", "s3"])
def avatar_store(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    return open_store(request, tmp_path, [*BUCKETS, "avatars"])


def test_referenced_avatars_survive_a_run_under_the_brake(
        engine: Engine, avatar_store: Harness, tmp_path: Path, run_job: JobRun) -> None:
    """400 avatars, 20 of them referenced as a bare key or a `bucket/key` path: none is
    removed (the 10% brake alone would have let 20 of 400 go)."""
    store = avatar_store
    store.seed([Item("avatars", f"users/u{i}.png", b"png", old=True) for i in range(400)])
    app = AppWriter(engine)
    for i in range(400):
        user = app.sign_up(f"u{i}@example.com", at=NOW - dt.timedelta(days=300))
        key = f"users/u{i}.png"
        app.profile_avatar(user, key if i < 10 else f"avatars/{key}" if i < 20
                           else public_url("avatars", key))
    before = store.listing()
    settings = settings_for(engine, tmp_path, store, storage_cleanup_delete_brake_share=0.1,
                            storage_cleanup_delete_brake_count=0)
    outcome = run_job("storage-cleanup", settings, at=store.now)
    assert outcome.status == "success", outcome.message
    assert store.listing() == before
    assert store.quarantine() == {}
    avatars = bucket_of(outcome, "avatars")
    assert (avatars["referenced"], avatars["orphans_deleted"]) == (400, 0)


def test_a_key_with_a_question_mark_is_kept(engine: Engine, store: Harness,
                                            tmp_path: Path, run_job: JobRun) -> None:
    """`getPublicUrl("u1/what?.jpg")` leaves the `?`: the file it names stays, whether the
    row holds the public URL or a signed one; an unreferenced neighbour goes."""
    store.seed([Item("trip-media", "u1/what?.jpg", b"jpg", old=True),
                Item("trip-media", "u1/who?.jpg", b"jpg", old=True),
                Item("trip-media", "u1/what", b"other", old=True)])
    owner, trip = _owner_and_trip(engine)
    app = AppWriter(engine)
    app.journal_media(trip, owner, "u1/what?.jpg", NOW)  # type: ignore[arg-type]
    app.chat_attachment(trip, owner, "u1/who?.jpg", NOW)  # type: ignore[arg-type]
    with engine.begin() as conn:  # shared as a signed URL instead
        conn.execute(sa.text("UPDATE trip_chat_messages SET attachment_url = :url"),
                     {"url": signed_url("trip-media", "u1/who?.jpg", "eyJ.a.b")})
    outcome = run_job("storage-cleanup", settings_for(engine, tmp_path, store), at=store.now)
    assert outcome.status == "success", outcome.message
    left = set(store.listing())
    assert ("trip-media", "u1/what?.jpg") in left
    assert ("trip-media", "u1/who?.jpg") in left
    # `u1/what` is one reading of the public URL too: a reference keeps every reading.
    assert ("trip-media", "u1/what") in left
    assert bucket_of(outcome, "trip-media")["orphans_deleted"] == 0


def test_a_referenced_temp_upload_is_kept(engine: Engine, store: Harness,
                                          tmp_path: Path, run_job: JobRun) -> None:
    """The reference check runs before the temp rule: a passport a traveller attached
    from under `tmp/` stays; an unreferenced stale upload next to it goes."""
    store.seed([Item("trip-documents", "tmp/passport.pdf", b"%PDF", old=True),
                Item("trip-documents", "tmp/draft.pdf", b"%PDF-draft", old=True)])
    _owner, trip = _owner_and_trip(engine)
    AppWriter(engine).accommodation(trip, "Hotel", ["tmp/passport.pdf"], NOW)  # type: ignore[arg-type]
    outcome = run_job("storage-cleanup", settings_for(engine, tmp_path, store), at=store.now)
    assert outcome.status == "success", outcome.message
    assert set(store.listing()) == {("trip-documents", "tmp/passport.pdf")}
    docs = bucket_of(outcome, "trip-documents")
    assert (docs["referenced"], docs["temp_deleted"]) == (1, 1)


def test_a_value_that_cannot_be_interpreted_blocks_its_bucket(
        engine: Engine, store: Harness, tmp_path: Path, run_job: JobRun) -> None:
    """A journal row naming a bucket but no file, and a document entry without a url:
    nothing is deleted from the buckets they might name, and the run says so."""
    store.seed([Item("trip-media", "orphans/old.jpg", b"jpg", old=True),
                Item("trip-documents", "orphans/old.pdf", b"pdf", old=True)])
    owner, trip = _owner_and_trip(engine)
    app = AppWriter(engine)
    app.journal_media(trip, owner, "placeholder", NOW)  # type: ignore[arg-type]
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE trip_media SET url = '{STORAGE_URL}/trip-media'")
    before = store.listing()
    outcome = run_job("storage-cleanup", settings_for(engine, tmp_path, store), at=store.now)
    assert outcome.status == "warning", outcome.message
    assert "values not understood (1 in trip_media.url, see details)" in outcome.message
    assert outcome.message.endswith("nothing deleted from trip-media")
    assert outcome.details["uninterpretable_samples"] == [
        f"trip_media.url: a Storage URL naming a bucket but no file: {STORAGE_URL}/trip-media"]
    assert outcome.details["protected_buckets"] == ["trip-media"]
    assert bucket_of(outcome, "trip-media")["protected_by"] == [
        "trip_media.url (values not understood)"]
    assert set(store.listing()) == set(before) - {("trip-documents", "orphans/old.pdf")}

    # A document entry with no url could be any trip document: trip-documents is blocked.
    app.accommodation(trip, "Hotel", [], NOW)  # type: ignore[arg-type]
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE accommodations SET documents = "
                             "'[{\"name\": \"ticket.pdf\", \"path\": \"t1/ticket.pdf\"}]'")
    dry = run_job("storage-cleanup", settings_for(engine, tmp_path, store), at=store.now,
                  dry_run=True)
    assert dry.details["protected_buckets"] == ["trip-documents", "trip-media"]
    assert dry.details["uninterpretable_values"] == {"accommodations.documents": 1,
                                                     "trip_media.url": 1}
