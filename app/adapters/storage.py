"""Object storage behind one small interface: a local directory or S3-compatible storage.

`LocalStorage` keeps `<root>/<bucket>/<key>` (the embedded default); `S3Storage` speaks the
S3 API through boto3, which both AWS S3 and Supabase Storage (`…/storage/v1/s3`) serve.
Listings are generators read a page at a time, so a bucket of any size is walked in
bounded memory.  `replace` swaps an object's bytes only after the new bytes were written
and read back intact, and keeps its key and metadata.  `move` and `copy` keep an object's
bytes and metadata (the local backend its modification time too): storage-cleanup moves
what it removes into a quarantine prefix, and a restore moves it back.

Longer than the usual 400 lines: the interface and its two implementations are kept side by
side so that each guarantee (a copy of one version only, an object that changed underneath)
reads the same in both.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import mimetypes
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.config import Settings
from app.core.budget import Budget
from app.observe import usage

# Files the local backend writes next to the original while replacing it; never listed.
_PARTIAL_SUFFIX = ".vsc-partial"
# S3 DeleteObjects accepts at most 1000 keys per request.
S3_DELETE_BATCH = 1000
# Seconds an S3 request waits for its answer (less when the run's budget has less left).
S3_READ_TIMEOUT = 60.0
# CopyObject copies up to 5 GiB in one request; larger objects are copied in parts.
_S3_COPY_LIMIT = 5 * 1024**3
# S3 has no batch copy: moves copy this many objects at a time.
_S3_COPY_THREADS = 8


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


@dataclass(frozen=True)
class Move:
    """Move `source` to `target` in one bucket."""

    source: str
    target: str
    # Move only this version of the source (the ETag a listing gave); "" whatever is there.
    etag: str = ""
    # May replace an object already at `target`; otherwise that move fails ("exists").
    overwrite: bool = False
    size: int = 0  # as listed (large objects are copied in parts on S3)
    # The target is in a folder no one else writes to: S3 need not look it up first.
    target_is_new: bool = False


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

    def exists(self, bucket: str, key: str) -> bool: ...

    def copy(self, bucket: str, original: StoredObject, target: str) -> None:
        """Copy `original` (that version: ObjectChanged otherwise) to `target`, with its
        metadata."""
        ...

    def move(self, bucket: str, moves: Sequence[Move]) -> dict[str, str]:
        """Apply `moves`; the sources that did not move, with why (a missing source, a
        changed one, an existing target that may not be replaced)."""
        ...


def _md5(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


class LocalStorage:
    """Buckets are directories under `root`; a key's `/` are subdirectories."""

    name = "local"

    def __init__(self, root: Path) -> None:
        # Absolute once: the default root is relative (./data/storage), and keys are read
        # off paths that _path() resolves.
        self.root = root.resolve()

    def _path(self, bucket: str, key: str) -> Path:
        base = (self.root / bucket).resolve()
        path = (base / key).resolve()
        if base != path and base not in path.parents:
            raise StorageError(f"key {key!r} leaves bucket {bucket!r}")
        return path

    def has_bucket(self, bucket: str) -> bool:
        return (self.root / bucket).is_dir()

    @staticmethod
    def _etag(stat: os.stat_result) -> str:
        return f"{stat.st_mtime_ns:x}-{stat.st_size:x}"

    def list(self, bucket: str, prefix: str = "") -> Iterator[StoredObject]:
        base = (self.root / bucket).resolve()
        if not base.is_dir():
            return
        # Walk only the folder the prefix is in.
        folder = prefix.rpartition("/")[0]
        start = self._path(bucket, folder) if folder else base
        if not start.is_dir():
            return
        stack = [start]
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
                        etag=self._etag(stat),
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
                path = self._path(bucket, key)
                path.unlink(missing_ok=True)
                self._prune(bucket, path.parent)
            except (OSError, StorageError) as exc:
                failed[key] = _why(exc)
        return failed

    def _prune(self, bucket: str, directory: Path) -> None:
        """Remove the folders a removal left empty (a folder is not an object)."""
        base = (self.root / bucket).resolve()
        while directory != base and base in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or gone): the folders above are not empty either
            directory = directory.parent

    def exists(self, bucket: str, key: str) -> bool:
        return self._path(bucket, key).is_file()

    def copy(self, bucket: str, original: StoredObject, target: str) -> None:
        source, path = self._path(bucket, original.key), self._path(bucket, target)
        if self._etag(source.stat()) != original.etag:
            raise ObjectChanged(f"{original.key} changed during the run")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, path)  # bytes, permissions and times

    def move(self, bucket: str, moves: Sequence[Move]) -> dict[str, str]:
        failed: dict[str, str] = {}
        for move in moves:
            try:
                source, target = self._path(bucket, move.source), self._path(bucket, move.target)
                if move.etag and self._etag(source.stat()) != move.etag:
                    raise ObjectChanged(f"{move.source} changed during the run")
                target.parent.mkdir(parents=True, exist_ok=True)
                if move.overwrite:
                    os.replace(source, target)
                else:
                    os.link(source, target)  # fails if the target exists: never clobbers
                    source.unlink()
                self._prune(bucket, source.parent)
            except FileExistsError:
                failed[move.source] = f"{move.target} exists"
            except (OSError, StorageError) as exc:
                failed[move.source] = _why(exc)
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
            if self._etag(stat) != original.etag:
                raise ObjectChanged(f"{original.key} changed during the run")
            # Keep the original's times: they are its metadata (and its age).
            os.utime(staged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            os.chmod(staged, stat.st_mode & 0o7777)
            os.replace(staged, path)  # atomic: readers see the old or the new file
        finally:
            staged.unlink(missing_ok=True)


def _why(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


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
        client.meta.events.register("before-send.s3", _within(budget, usage.Meter.current()))
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

    def exists(self, bucket: str, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
        return True

    def _copy(self, bucket: str, source: str, target: str, etag: str, size: int) -> None:
        from botocore.exceptions import ClientError

        source_ref = {"Bucket": bucket, "Key": source}
        condition = {"CopySourceIfMatch": etag} if etag else {}
        try:
            if size > _S3_COPY_LIMIT:
                self.client.copy(source_ref, bucket, target, ExtraArgs=condition)
            else:  # metadata, content type and cache headers are copied with the bytes
                self.client.copy_object(Bucket=bucket, Key=target, CopySource=source_ref,
                                        MetadataDirective="COPY", **condition)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 412:
                raise ObjectChanged(f"{source} changed during the run") from None
            if status == 404:
                raise StorageError(f"{source} does not exist") from None
            raise

    def copy(self, bucket: str, original: StoredObject, target: str) -> None:
        self._copy(bucket, original.key, target, original.etag, original.size)

    def move(self, bucket: str, moves: Sequence[Move]) -> dict[str, str]:
        from botocore.exceptions import BotoCoreError, ClientError

        def one(move: Move) -> str | None:
            try:
                look_first = not (move.overwrite or move.target_is_new)
                if look_first and self.exists(bucket, move.target):
                    return f"{move.target} exists"
                self._copy(bucket, move.source, move.target, move.etag, move.size)
            except (StorageError, ClientError, BotoCoreError) as exc:
                return _why(exc)
            return None

        failed: dict[str, str] = {}
        with ThreadPoolExecutor(_S3_COPY_THREADS) as pool:
            outcomes = list(pool.map(one, moves))
        copied = []
        for move, why in zip(moves, outcomes, strict=True):
            if why is None:
                copied.append(move)
            else:
                failed[move.source] = why
        not_deleted = self.delete(bucket, [move.source for move in copied])
        # Not moved after all: drop the new copies, so an object is never in two places
        # (a copy that replaced an object stays: the source is then a spare).
        self.delete(bucket, [m.target for m in copied
                             if m.source in not_deleted and not m.overwrite])
        failed.update({m.source: not_deleted[m.source] for m in copied
                       if m.source in not_deleted and not m.overwrite})
        return failed


def _within(budget: Budget, meter: usage.Meter | None = None) -> Callable[..., None]:
    """A botocore `before-send` hook: each attempt (retries included) reads its answer for
    at most what is left of the run's budget, and none starts once it is spent (botocore
    does not retry the BudgetSpent raised here).  Each attempt counts as one call of the
    run's meter."""

    def hook(request: Any, **_kwargs: Any) -> None:
        usage.count(usage.Service.STORAGE, meter)
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
