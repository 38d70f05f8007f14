"""Buckets whose objects' ages a test controls, on the local backend and on S3
(moto_server), and the helpers storage-cleanup tests share.

Local objects get their modification time set.  S3 dates are set by the server: old
objects are written a second before young ones, and the age limits are scaled to sit
between the two.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from app.adapters.storage import LocalStorage, ObjectData, S3Storage, Storage
from app.config import Settings
from app.core.runner import RunOutcome
from tests.conftest import make_settings
from tests.support.moto_s3 import MotoS3

NOW = dt.datetime(2026, 11, 28, 2, 0, tzinfo=dt.UTC)
BUCKETS = ["trip-media", "trip-documents"]
QUARANTINE = ".quarantine/"


@dataclass
class Item:
    bucket: str
    key: str
    body: bytes
    old: bool
    content_type: str = "application/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)


Listing = dict[tuple[str, str], tuple[int, str]]


class Harness:
    name: str
    storage: Storage
    overrides: dict[str, Any]
    now: dt.datetime
    buckets: list[str]

    def seed(self, items: list[Item]) -> None:
        raise NotImplementedError

    def _all(self) -> Listing:
        return {(bucket, obj.key): (obj.size, obj.etag)
                for bucket in self.buckets for obj in self.storage.list(bucket)}

    def listing(self) -> Listing:
        """What users see: every object outside the quarantine (key, size, ETag)."""
        return {k: v for k, v in self._all().items() if not k[1].startswith(QUARANTINE)}

    def quarantine(self) -> Listing:
        return {k: v for k, v in self._all().items() if k[1].startswith(QUARANTINE)}

    def bytes_of(self) -> dict[tuple[str, str], bytes]:
        """Every object outside the quarantine with its bytes."""
        return {(b, k): self.storage.get(b, k).body for (b, k) in self.listing()}

    def read(self, bucket: str, key: str) -> ObjectData:
        return self.storage.get(bucket, key)


class LocalHarness(Harness):
    name = "local"

    def __init__(self, root: Path, buckets: list[str]) -> None:
        self.storage = LocalStorage(root)
        self.root = root
        self.overrides = {"storage_backend": "local", "storage_local_root": root}
        self.now = NOW
        self.buckets = buckets
        for bucket in buckets:
            (root / bucket).mkdir(parents=True, exist_ok=True)

    def seed(self, items: list[Item]) -> None:
        for item in items:
            self.storage.put(item.bucket, item.key, ObjectData(item.body, item.content_type))
            age = dt.timedelta(days=200) if item.old else dt.timedelta(hours=1)
            stamp = (NOW - age).timestamp()
            os.utime(self.root / item.bucket / item.key, (stamp, stamp))


class S3Harness(Harness):
    name = "s3"

    def __init__(self, server: MotoS3, buckets: list[str]) -> None:
        server.reset()
        settings = make_settings("sqlite://", Path("."), **server.settings)
        self.storage = S3Storage.from_settings(settings)
        self.client = self.storage.client  # type: ignore[attr-defined]
        self.overrides = dict(server.settings)
        self.now = NOW
        self.buckets = buckets
        for bucket in buckets:
            self.client.create_bucket(Bucket=bucket)

    def _put(self, item: Item) -> None:
        self.client.put_object(Bucket=item.bucket, Key=item.key, Body=item.body,
                               ContentType=item.content_type, Metadata=item.metadata,
                               CacheControl="max-age=3600")

    def seed(self, items: list[Item]) -> None:
        for item in items:
            if item.old:
                self._put(item)
        old = max(o.last_modified for b in self.buckets for o in self.storage.list(b))
        # S3 dates have one-second resolution: start the young ones in the next second.
        time.sleep(1.05 - (time.time() % 1.0) + 0.05)
        for item in items:
            if not item.old:
                self._put(item)
        dates = [o.last_modified for b in self.buckets for o in self.storage.list(b)]
        young = max(dates) if any(not i.old for i in items) else (
            dt.datetime.now(dt.UTC).replace(microsecond=0))
        assert young > old
        self.now = max(max(dates), young) + dt.timedelta(milliseconds=300)
        limit = ((self.now - old) + (self.now - young)) / 2
        assert self.now - young < limit < self.now - old
        seconds = limit.total_seconds()
        self.overrides.update(storage_temp_max_age_hours=seconds / 3600,
                              storage_orphan_min_age_days=seconds / 86400,
                              storage_media_min_age_days=seconds / 86400)


def open_store(request: pytest.FixtureRequest, tmp_path: Path, buckets: list[str]
               ) -> Harness:
    if request.param == "local":
        return LocalHarness(tmp_path / "storage", buckets)
    return S3Harness(request.getfixturevalue("moto_s3"), buckets)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    """VoyageSmart's two buckets, empty, on each backend."""
    return open_store(request, tmp_path, BUCKETS)


def settings_for(engine: Engine, tmp_path: Path, store: Harness, **overrides: Any
                 ) -> Settings:
    values: dict[str, Any] = {"storage_buckets": ",".join(store.buckets),
                              "storage_recompress_min_bytes": 50_000,
                              "storage_cleanup_delete_brake_share": 0.5}
    values.update(store.overrides)
    values.update(overrides)
    return make_settings(str(engine.url.render_as_string(hide_password=False)), tmp_path,
                         **values)


def bucket_of(outcome: RunOutcome, name: str) -> dict[str, Any]:
    return next(b for b in outcome.details["buckets"] if b["bucket"] == name)
