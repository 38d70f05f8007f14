"""Recompression keeps what an image is (issue 11, finding 3).

Animated images are never flattened to one frame, lossless images never become lossy,
and the original of every replaced image is kept in the quarantine, where restore finds it.
Images are made with Pillow, stored on the local backend and on S3 (moto_server).
"""

from __future__ import annotations

import datetime as dt
import io
import random
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy.engine import Engine

from app.jobs import storage_cleanup
from app.voyagesmart.sample_data import AppWriter
from tests.conftest import JobRun
from tests.support import storage_harness
from tests.support.moto_s3 import moto_s3  # noqa: F401
from tests.support.storage_harness import (
    NOW,
    Harness,
    Item,
    bucket_of,
    settings_for,
)

store = storage_harness.store  # the fixture: each test on both backends


def _noise(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    rnd = random.Random(seed)
    width, height = size
    image = Image.new("RGB", size)
    # Smooth gradients with some grain: lossy encoders shrink it a lot, lossless ones less.
    image.putdata([((x * 3 + seed * 40) % 256, (y * 2) % 256, rnd.randint(100, 140))
                   for y in range(height) for x in range(width)])
    return image.convert(mode)


def _apng(frames: int = 8) -> bytes:
    images = [_noise((160, 120), seed) for seed in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "PNG", save_all=True, append_images=images[1:], duration=100, loop=0)
    return out.getvalue()


def _animated(fmt: str, frames: int = 4) -> bytes:
    images = [_noise((160, 120), seed) for seed in range(frames)]
    out = io.BytesIO()
    images[0].save(out, fmt, save_all=True, append_images=images[1:], duration=100, loop=0)
    return out.getvalue()


def _lossless_webp() -> bytes:
    out = io.BytesIO()
    # Effort 0: the fastest lossless encoding, so a re-encoding could shrink it.
    _noise((320, 240), 3, "RGBA").save(out, "WEBP", lossless=True, quality=0, method=0)
    return out.getvalue()


def _flat_png() -> bytes:
    out = io.BytesIO()
    _noise((320, 240), 4).save(out, "PNG", compress_level=0)  # stored, not compressed
    return out.getvalue()


def _png16() -> bytes:
    out = io.BytesIO()
    image = Image.new("I;16", (300, 200))
    image.putdata([(x * 211 + y * 97) % 65536 for y in range(200) for x in range(300)])
    image.save(out, "PNG", compress_level=0)
    return out.getvalue()


APNG = _apng()
ANIMATED_WEBP = _animated("WEBP")
ANIMATED_GIF = _animated("GIF")
LOSSLESS_WEBP = _lossless_webp()
FLAT_PNG = _flat_png()
PNG16 = _png16()


def _pixels(body: bytes) -> bytes:
    with Image.open(io.BytesIO(body)) as image:
        return image.convert("RGBA").tobytes()


def _frames(body: bytes) -> int:
    with Image.open(io.BytesIO(body)) as image:
        return getattr(image, "n_frames", 1)


def _seed(engine: Engine, store: Harness, items: list[Item]) -> None:
    store.seed(items)
    app = AppWriter(engine)
    owner = app.sign_up("u1@example.com", at=NOW - dt.timedelta(days=300))
    trip = app.create_trip(owner, name="Lisbon", at=NOW)
    for item in items:
        app.journal_media(trip, owner, item.key, NOW)


def test_the_images_are_what_the_test_needs() -> None:
    assert _frames(APNG) == 8 and Image.open(io.BytesIO(APNG)).format == "PNG"
    assert storage_cleanup._webp_is_lossless(LOSSLESS_WEBP)
    assert _frames(ANIMATED_WEBP) == 4 and _frames(ANIMATED_GIF) == 4
    assert min(map(len, (APNG, LOSSLESS_WEBP, FLAT_PNG, PNG16))) > 50_000
    assert min(map(len, (ANIMATED_WEBP, ANIMATED_GIF))) > 1_000


def test_an_animated_png_keeps_its_eight_frames(engine: Engine, store: Harness,
                                                tmp_path: Path, run_job: JobRun) -> None:
    _seed(engine, store, [Item("trip-media", "journal/loop.png", APNG, old=True,
                               content_type="image/png")])
    outcome = run_job("storage-cleanup", settings_for(engine, tmp_path, store), at=store.now)
    assert outcome.status == "success", outcome.message
    body = store.read("trip-media", "journal/loop.png").body
    assert body == APNG and _frames(body) == 8
    media = bucket_of(outcome, "trip-media")
    assert (media["recompress_candidates"], media["recompress_skipped_animated"],
            media["recompressed"]) == (1, 1, 0)
    assert store.quarantine() == {}


@pytest.mark.parametrize("key, body", [("journal/loop.webp", ANIMATED_WEBP),
                                       ("journal/loop.gif", ANIMATED_GIF),
                                       ("journal/gif-named.png", ANIMATED_GIF)])
def test_other_animated_images_are_left_as_they_are(engine: Engine, store: Harness,
                                                    tmp_path: Path, key: str,
                                                    body: bytes, run_job: JobRun) -> None:
    _seed(engine, store, [Item("trip-media", key, body, old=True)])
    settings = settings_for(engine, tmp_path, store, storage_recompress_min_bytes=1_000)
    outcome = run_job("storage-cleanup", settings, at=store.now)
    assert outcome.status == "success", outcome.message
    assert store.read("trip-media", key).body == body
    assert bucket_of(outcome, "trip-media")["recompressed"] == 0


def test_a_lossless_webp_stays_lossless(engine: Engine, store: Harness,
                                        tmp_path: Path, run_job: JobRun) -> None:
    """Re-encoded losslessly (every pixel the same) or not at all, and the original is in
    the quarantine for restore to put back."""
    _seed(engine, store, [Item("trip-media", "journal/map.webp", LOSSLESS_WEBP, old=True,
                               content_type="image/webp")])
    settings = settings_for(engine, tmp_path, store, storage_recompress_min_saving=0.01)
    outcome = run_job("storage-cleanup", settings, at=store.now)
    assert outcome.status == "success", outcome.message
    body = store.read("trip-media", "journal/map.webp").body
    assert storage_cleanup._webp_is_lossless(body)
    assert _pixels(body) == _pixels(LOSSLESS_WEBP)
    media = bucket_of(outcome, "trip-media")
    assert media["recompressed"] == 1 and len(body) < len(LOSSLESS_WEBP)
    folder = outcome.details["quarantine"]["folder"]
    assert store.read("trip-media", f"{folder}replaced/journal/map.webp").body == LOSSLESS_WEBP
    figures = storage_cleanup.restore(settings, engine, outcome.run_id,  # type: ignore[arg-type]
                                      store.now, False)
    assert figures == {"files": {"trip-media": 1}}
    assert store.read("trip-media", "journal/map.webp").body == LOSSLESS_WEBP


def test_a_png_is_only_ever_recompressed_losslessly(engine: Engine, store: Harness,
                                                    tmp_path: Path, run_job: JobRun) -> None:
    _seed(engine, store, [Item("trip-media", "journal/flat.png", FLAT_PNG, old=True),
                          Item("trip-media", "journal/deep.png", PNG16, old=True)])
    outcome = run_job("storage-cleanup", settings_for(engine, tmp_path, store), at=store.now)
    assert outcome.status == "success", outcome.message
    flat = store.read("trip-media", "journal/flat.png").body
    assert len(flat) < 0.8 * len(FLAT_PNG) and _pixels(flat) == _pixels(FLAT_PNG)
    # Pillow would write a 16-bit PNG back with 8 bits: it is left alone.
    assert store.read("trip-media", "journal/deep.png").body == PNG16
    media = bucket_of(outcome, "trip-media")
    assert (media["recompressed"], media["recompress_skipped_lossless"]) == (1, 1)
