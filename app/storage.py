"""Object storage behind one small interface: a local directory or S3-compatible storage.

`LocalStorage` keeps `<root>/<bucket>/<key>` (the embedded default); `S3Storage` speaks the
S3 API through boto3, which both AWS S3 and Supabase Storage (`…/storage/v1/s3`) serve.
Listings are generators read a page at a time, so a bucket of any size is walked in
bounded memory.  `replace` swaps an object's bytes only after the new bytes were written
and read back intact, and keeps its key and metadata.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import mimetypes
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.budget import Budget
from app.config import Settings

# Files the local backend writes next to the original while replacing it; never listed.
_PARTIAL_SUFFIX = ".vsc-partial"
# S3 DeleteObjects accepts at most 1000 keys per request.
S3_DELETE_BATCH = 1000
# Seconds an S3 request waits for its answer (less when the run's budget has less left).
S3_READ_TIMEOUT = 60.0


class StorageError(RuntimeError):
    pass


class ObjectChanged(StorageError):
    """The object changed while it was being processed; it was left alone."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    last_modified: dt.datetime
    etag: str = ""


@dataclass
class ObjectData:
    body: bytes
    content_type: str | None
    # Everything else a reader sees (user metadata, cache headers), kept on replace.
    extra: dict[str, Any] = field(default_factory=dict)


Verifier = Callable[[bytes], None]


class Storage(Protocol):
    name: str

    def has_bucket(self, bucket: str) -> bool: ...

    def list(self, bucket: str, prefix: str = "") -> Iterator[StoredObject]: ...

    def get(self, bucket: str, key: str) -> ObjectData: ...

    def put(self, bucket: str, key: str, data: ObjectData) -> None: ...

    def delete(self, bucket: str, keys: Sequence[str]) -> dict[str, str]:
        """Delete keys (a missing key counts as deleted); the ones that failed, with why."""
        ...

    def replace(self, bucket: str, original: StoredObject, body: bytes,
                verify: Verifier) -> None:
        """Replace `original`'s bytes, keeping key and metadata; raise ObjectChanged if the
        object is no longer the one listed."""
        ...


def _md5(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


class LocalStorage:
    """Buckets are directories under `root`; a key's `/` are subdirectories."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, bucket: str, key: str) -> Path:
        base = (self.root / bucket).resolve()
        path = (base / key).resolve()
        if base != path and base not in path.parents:
            raise StorageError(f"key {key!r} leaves bucket {bucket!r}")
        return path

    def has_bucket(self, bucket: str) -> bool:
        return (self.root / bucket).is_dir()

    def list(self, bucket: str, prefix: str = "") -> Iterator[StoredObject]:
        base = self.root / bucket
        if not base.is_dir():
            return
        stack = [base]
        while stack:
            directory = stack.pop()
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    if entry.name.endswith(_PARTIAL_SUFFIX):
                        continue
                    key = Path(entry.path).relative_to(base).as_posix()
                    if not key.startswith(prefix):
                        continue
                    stat = entry.stat(follow_symlinks=False)
                    yield StoredObject(
                        key=key,
                        size=stat.st_size,
                        last_modified=dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC),
                        etag=f"{stat.st_mtime_ns:x}-{stat.st_size:x}",
                    )

    def get(self, bucket: str, key: str) -> ObjectData:
        path = self._path(bucket, key)
        return ObjectData(path.read_bytes(), mimetypes.guess_type(key)[0])

    def put(self, bucket: str, key: str, data: ObjectData) -> None:
        path = self._path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.body)

    def delete(self, bucket: str, keys: Sequence[str]) -> dict[str, str]:
        failed: dict[str, str] = {}
        for key in keys:
            try:
                self._path(bucket, key).unlink(missing_ok=True)
            except (OSError, StorageError) as exc:
                failed[key] = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return failed

    def replace(self, bucket: str, original: StoredObject, body: bytes,
                verify: Verifier) -> None:
        path = self._path(bucket, original.key)
        staged = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{_PARTIAL_SUFFIX}")
        try:
            with open(staged, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            written = staged.read_bytes()
            if _md5(written) != _md5(body):
                raise StorageError(f"{original.key}: staged copy differs from what was written")
            verify(written)
            stat = path.stat()
            if f"{stat.st_mtime_ns:x}-{stat.st_size:x}" != original.etag:
                raise ObjectChanged(f"{original.key} changed during the run")
            # Keep the original's times: they are its metadata (and its age).
            os.utime(staged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            os.chmod(staged, stat.st_mode & 0o7777)
            os.replace(staged, path)  # atomic: readers see the old or the new file
        finally:
            staged.unlink(missing_ok=True)


# Headers S3 returns that a reader sees and that `replace` must carry over.
_S3_KEPT_HEADERS = ("CacheControl", "ContentDisposition", "ContentEncoding",
                    "ContentLanguage", "Expires")


class S3Storage:
    """S3 API through boto3 (AWS S3, Supabase Storage, any compatible server)."""

    name = "s3"

    def __init__(self, client: Any, staging_prefix: str) -> None:
        self.client = client
        self.staging_prefix = staging_prefix

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        import boto3
        from botocore.config import Config

        budget = Budget.current()
        secret = settings.s3_secret_access_key
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            # Path-style addressing: Supabase and most compatible servers require it.
            config=Config(s3={"addressing_style": "path"},
                          retries={"mode": "standard", "max_attempts": 5},
                          connect_timeout=budget.timeout(10), read_timeout=S3_READ_TIMEOUT,
                          # Checksums only where the API requires them: S3-compatible
                          # servers (Supabase included) reject boto3's newer defaults.
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"),
        )
        client.meta.events.register("before-send.s3", _within(budget))
        # Staged copies live under the temp prefix: if a run dies, the next run's temp
        # cleanup removes them.
        return cls(client, settings.storage_temp_prefix.rstrip("/") + "/.recompress/")

    def has_bucket(self, bucket: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or exc.response.get("Error", {}).get("Code") in (
                    "404", "NoSuchBucket", "NotFound"):
                return False
            raise
        return True

    def list(self, bucket: str, prefix: str = "") -> Iterator[StoredObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix,
                                       PaginationConfig={"PageSize": 1000}):
            for item in page.get("Contents", []):
                yield StoredObject(key=item["Key"], size=int(item["Size"]),
                                   last_modified=item["LastModified"].astimezone(dt.UTC),
                                   etag=str(item.get("ETag", "")).strip('"'))

    def get(self, bucket: str, key: str) -> ObjectData:
        answer = self.client.get_object(Bucket=bucket, Key=key)
        extra: dict[str, Any] = {name: answer[name] for name in _S3_KEPT_HEADERS
                                 if answer.get(name)}
        extra["Metadata"] = dict(answer.get("Metadata") or {})
        extra["ETag"] = str(answer.get("ETag", "")).strip('"')
        return ObjectData(answer["Body"].read(), answer.get("ContentType"), extra)

    def put(self, bucket: str, key: str, data: ObjectData) -> None:
        kwargs = {k: v for k, v in data.extra.items() if k in _S3_KEPT_HEADERS}
        if data.content_type:
            kwargs["ContentType"] = data.content_type
        self.client.put_object(Bucket=bucket, Key=key, Body=data.body,
                               Metadata=data.extra.get("Metadata", {}), **kwargs)

    def delete(self, bucket: str, keys: Sequence[str]) -> dict[str, str]:
        failed: dict[str, str] = {}
        for start in range(0, len(keys), S3_DELETE_BATCH):
            batch = keys[start:start + S3_DELETE_BATCH]
            answer = self.client.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            for error in answer.get("Errors", []):
                failed[str(error.get("Key"))] = (
                    f"{error.get('Code', '')} {error.get('Message', '')}".strip())
        return failed

    def replace(self, bucket: str, original: StoredObject, body: bytes,
                verify: Verifier) -> None:
        current = self.client.head_object(Bucket=bucket, Key=original.key)
        if str(current.get("ETag", "")).strip('"') != original.etag:
            raise ObjectChanged(f"{original.key} changed during the run")
        staged_key = f"{self.staging_prefix}{uuid.uuid4().hex}/{original.key}"
        self.client.put_object(Bucket=bucket, Key=staged_key, Body=body,
                               ContentMD5=_b64md5(body))
        try:
            written = self.client.get_object(Bucket=bucket, Key=staged_key)["Body"].read()
            if _md5(written) != _md5(body):
                raise StorageError(f"{original.key}: staged copy differs from what was written")
            verify(written)
            kept = {k: current[k] for k in _S3_KEPT_HEADERS if current.get(k)}
            if current.get("ContentType"):
                kept["ContentType"] = current["ContentType"]
            # Server-side copy onto the original key: one atomic swap; the copy fails
            # (412) rather than clobber a staged object that changed under us.
            self.client.copy_object(
                Bucket=bucket, Key=original.key,
                CopySource={"Bucket": bucket, "Key": staged_key},
                CopySourceIfMatch=_md5(body),
                MetadataDirective="REPLACE", Metadata=dict(current.get("Metadata") or {}),
                **kept,
            )
            head = self.client.head_object(Bucket=bucket, Key=original.key)
            if int(head["ContentLength"]) != len(body):
                raise StorageError(f"{original.key}: replaced object has the wrong size")
        finally:
            self.client.delete_object(Bucket=bucket, Key=staged_key)


def _within(budget: Budget) -> Callable[..., None]:
    """A botocore `before-send` hook: each attempt (retries included) reads its answer for
    at most what is left of the run's budget, and none starts once it is spent (botocore
    does not retry the BudgetSpent raised here)."""

    def hook(request: Any, **_kwargs: Any) -> None:
        context = getattr(request, "context", None)
        read_timeout = budget.timeout(S3_READ_TIMEOUT)
        if context is not None:
            context["read_timeout"] = read_timeout

    return hook


def _b64md5(body: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()


def storage_from_settings(settings: Settings) -> Storage:
    if settings.storage_backend == "s3":
        return S3Storage.from_settings(settings)
    return LocalStorage(settings.storage_root)
