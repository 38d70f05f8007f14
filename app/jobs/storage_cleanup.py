"""storage-cleanup: delete stale temporary uploads and orphaned files, shrink old media.

Steps:

1. Build the reference set: stream every file URL VoyageSmart stores, from each source in
   `app.file_references.SOURCES` (URL columns such as `trip_media.url` and
   `trip_chat_messages.attachment_url`, and the JSONB `documents` arrays of
   `accommodations` and `transportation`), parse the public URLs
   (`…/storage/v1/object/public/<bucket>/<key>`) and keep a 64-bit hash of each key per
   bucket.  A source whose table or column is missing is reported, and nothing is deleted
   from the buckets it may point into.  A configured bucket that does not exist stops the
   run with an error: an empty listing must never look like an empty bucket.  A hash
   costs about 60 bytes per distinct file (a set of Python ints) instead of the whole URL,
   so 500,000 references take ~30 MB whatever the URL lengths; a collision can only make
   an orphan look referenced, i.e. keep a file, never delete a used one.
2. List each bucket page by page and classify every object: a temporary upload (under
   `STORAGE_TEMP_PREFIX`) older than `STORAGE_TEMP_MAX_AGE_HOURS`; an orphan (not
   referenced) older than `STORAGE_ORPHAN_MIN_AGE_DAYS` — younger orphans are kept, an
   upload may not be linked yet; a referenced image older than `STORAGE_MEDIA_MIN_AGE_DAYS`
   and larger than `STORAGE_RECOMPRESS_MIN_BYTES`, a candidate for recompression.
   Candidates are spooled to a temporary file, not held in memory.
3. Safety brake: if any bucket would lose more than `STORAGE_DELETE_BRAKE_FRACTION` of its
   objects, the run deletes and rewrites nothing and ends as `warning` with the numbers
   (a broken reference set must not empty a bucket); a forced run goes ahead.
4. Re-read the references written since the scan began (rows created or updated during
   the run), then delete the candidates in batches.
5. Recompress each candidate with Pillow in its own format; the original is replaced only
   when the saving reaches `STORAGE_RECOMPRESS_MIN_SAVING`, after the new bytes were
   written and read back as a valid image, keeping key and metadata.

A dry run does steps 1-3 and reports what it would delete and which images it would
examine.  A second run finds nothing: deleted files are gone, and a recompressed image
either looks new (S3 resets its date) or no longer compresses by the required fraction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import IO, Any
from urllib.parse import unquote

import sqlalchemy as sa

from app.batching import stream_keys
from app.config import Settings
from app.file_references import SOURCES, Source, urls_in
from app.jobs.context import JobContext, JobRefused, JobResult
from app.storage import (
    S3_DELETE_BATCH,
    ObjectChanged,
    Storage,
    StoredObject,
    storage_from_settings,
)

# Supabase serves a file under several paths; each names the bucket then the key.
_URL_MARKERS = (
    "/storage/v1/object/public/",
    "/storage/v1/object/sign/",
    "/storage/v1/object/authenticated/",
    "/storage/v1/object/",
    "/storage/v1/render/image/public/",
)
_IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
_ERROR_SAMPLES = 5

RefSet = dict[str, set[int]]


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def parse_reference(url: str) -> tuple[str, str] | None:
    """(bucket, key) of a storage URL, or None when the value is not one."""
    # String slicing rather than urlsplit: this runs once per referencing row.
    path = url.strip()
    for separator in ("?", "#"):
        cut = path.find(separator)
        if cut >= 0:
            path = path[:cut]
    if "%" in path:
        path = unquote(path)
    for marker in _URL_MARKERS:
        at = path.find(marker)
        if at < 0:
            continue
        # The first (most specific) marker found decides: `public/x` is not bucket "public".
        bucket, _, key = path[at + len(marker):].partition("/")
        return (bucket, key) if bucket and key else None
    return None


def _reference_query(source: Source, since: dt.datetime | None = None) -> sa.Select[Any]:
    table = sa.table(source.table, *(sa.column(c) for c in (source.column, *source.changed)))
    col = table.c[source.column]
    query = sa.select(col).where(col.is_not(None))
    if source.kind == "url":
        query = query.where(col.like("%/storage/v1/%"))
    if since is not None:
        query = query.where(sa.or_(*(table.c[c] >= since for c in source.changed)))
    return query


def build_reference_set(ctx: JobContext, buckets: list[str], sources: Sequence[Source],
                        since: dt.datetime | None = None, into: RefSet | None = None
                        ) -> tuple[RefSet, int]:
    """Stream each source's values once into per-bucket key hashes; (set, rows read)."""
    refs: RefSet = into if into is not None else {bucket: set() for bucket in buckets}
    rows = 0
    for source in sources:
        for chunk in stream_keys(ctx.engine, _reference_query(source, since),
                                 ctx.settings.batch_size):
            rows += len(chunk)
            for value in chunk:
                for url in urls_in(source.kind, value):
                    parsed = parse_reference(url)
                    if parsed is not None and parsed[0] in refs:
                        refs[parsed[0]].add(key_hash(parsed[1]))
    return refs, rows


def readable_sources(ctx: JobContext) -> tuple[list[Source], dict[str, str]]:
    """The sources this database has, and the unreadable ones with why."""
    check = ctx.schema_check()
    readable, missing = [], {}
    for source in SOURCES:
        table = check.table(source.table)
        if table.usable:
            readable.append(source)
        else:
            missing[source.name] = "; ".join(table.problems)
    return readable, missing


@dataclass
class BucketReport:
    bucket: str
    scanned: int = 0
    scanned_bytes: int = 0
    referenced: int = 0
    # What the classification found to delete (also in a dry or braked run) ...
    temp_to_delete: int = 0
    temp_to_delete_bytes: int = 0
    orphans_to_delete: int = 0
    orphans_to_delete_bytes: int = 0
    # ... and what was really deleted.
    temp_deleted: int = 0
    temp_deleted_bytes: int = 0
    orphans_deleted: int = 0
    orphans_deleted_bytes: int = 0
    temp_kept: int = 0
    young_orphans_kept: int = 0
    recompress_candidates: int = 0
    recompressed: int = 0
    recompress_bytes_saved: int = 0
    recompress_not_worth_it: int = 0
    delete_fraction: float = 0.0
    braked: bool = False
    # A reference source that could not be read may point here: nothing is deleted.
    protected_by: list[str] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < _ERROR_SAMPLES:
            self.error_samples.append(message[:300])


@dataclass
class _Spool:
    """Candidates of one bucket, one JSON line each, on disk rather than in memory."""

    deletes: IO[str]
    images: IO[str]

    @classmethod
    def open(cls, stack: ExitStack) -> _Spool:
        return cls(stack.enter_context(tempfile.TemporaryFile("w+")),
                   stack.enter_context(tempfile.TemporaryFile("w+")))


def _lines(handle: IO[str]) -> Iterator[dict[str, Any]]:
    handle.flush()
    handle.seek(0)
    for line in handle:
        yield json.loads(line)


def _classify(ctx: JobContext, storage: Storage, bucket: str, refs: set[int],
              report: BucketReport, spool: _Spool) -> None:
    s = ctx.settings
    temp_before = ctx.now - dt.timedelta(hours=s.storage_temp_max_age_hours)
    orphan_before = ctx.now - dt.timedelta(days=s.storage_orphan_min_age_days)
    media_before = ctx.now - dt.timedelta(days=s.storage_media_min_age_days)
    for obj in storage.list(bucket):
        report.scanned += 1
        report.scanned_bytes += obj.size
        if obj.key.startswith(s.storage_temp_prefix):
            if obj.last_modified < temp_before:
                spool.deletes.write(
                    json.dumps({"k": obj.key, "kind": "temp", "size": obj.size}) + "\n")
                report.temp_to_delete += 1
                report.temp_to_delete_bytes += obj.size
            else:
                report.temp_kept += 1
        elif key_hash(obj.key) in refs:
            report.referenced += 1
            suffix = obj.key[obj.key.rfind("."):].lower() if "." in obj.key else ""
            if (suffix in _IMAGE_FORMATS and obj.last_modified < media_before
                    and obj.size >= s.storage_recompress_min_bytes):
                spool.images.write(json.dumps(_object_json(obj)) + "\n")
                report.recompress_candidates += 1
        elif obj.last_modified < orphan_before:
            spool.deletes.write(
                json.dumps({"k": obj.key, "kind": "orphan", "size": obj.size}) + "\n")
            report.orphans_to_delete += 1
            report.orphans_to_delete_bytes += obj.size
        else:
            report.young_orphans_kept += 1


def _object_json(obj: StoredObject) -> dict[str, Any]:
    return {"k": obj.key, "size": obj.size, "lm": obj.last_modified.isoformat(),
            "etag": obj.etag}


def _delete(storage: Storage, bucket: str, refs: set[int], report: BucketReport,
            spool: _Spool) -> None:
    def flush(batch: list[dict[str, Any]]) -> None:
        failed = storage.delete(bucket, [item["k"] for item in batch])
        for item in batch:
            if item["k"] in failed:
                report.error(f"delete {item['k']}: {failed[item['k']]}")
            elif item["kind"] == "temp":
                report.temp_deleted += 1
                report.temp_deleted_bytes += item["size"]
            else:
                report.orphans_deleted += 1
                report.orphans_deleted_bytes += item["size"]
        batch.clear()

    batch: list[dict[str, Any]] = []
    for item in _lines(spool.deletes):
        if item["kind"] == "orphan" and key_hash(item["k"]) in refs:
            continue  # linked while the run was scanning: no longer an orphan
        batch.append(item)
        if len(batch) >= S3_DELETE_BATCH:
            flush(batch)
    flush(batch)


def _recompress(ctx: JobContext, storage: Storage, bucket: str, report: BucketReport,
                spool: _Spool) -> None:
    from PIL import Image

    s = ctx.settings
    for item in _lines(spool.images):
        obj = StoredObject(item["k"], int(item["size"]), dt.datetime.fromisoformat(item["lm"]),
                           item["etag"])
        fmt = _IMAGE_FORMATS[obj.key[obj.key.rfind("."):].lower()]
        try:
            data = storage.get(bucket, obj.key)
            smaller = _reencode(data.body, fmt, s.storage_recompress_quality)
            if smaller is None or len(smaller) > len(data.body) * (
                    1 - s.storage_recompress_min_saving):
                report.recompress_not_worth_it += 1
                continue

            def verify(body: bytes, fmt: str = fmt) -> None:
                with Image.open(io.BytesIO(body)) as image:
                    if image.format != fmt:
                        raise ValueError(f"wrote {image.format}, expected {fmt}")
                    image.load()  # decodes every pixel: a truncated file fails here

            storage.replace(bucket, obj, smaller, verify)
            report.recompressed += 1
            report.recompress_bytes_saved += len(data.body) - len(smaller)
        except ObjectChanged as exc:
            report.error(f"recompress skipped: {exc}")
        except Exception as exc:  # one bad image must not stop the bucket
            report.error(f"recompress {obj.key}: {type(exc).__name__}: {exc}")


def _reencode(body: bytes, fmt: str, quality: int) -> bytes | None:
    from PIL import Image

    with Image.open(io.BytesIO(body)) as image:
        if image.format != fmt:
            return None  # extension lies about the content: leave it alone
        options: dict[str, Any] = {"optimize": True}
        # Keep what a viewer needs: orientation (EXIF) and colour profile.
        for name in ("exif", "icc_profile"):
            if image.info.get(name):
                options[name] = image.info[name]
        if fmt in ("JPEG", "WEBP"):
            options["quality"] = quality
        if fmt == "JPEG":
            options["progressive"] = True
        if fmt == "WEBP" and getattr(image, "is_animated", False):
            return None
        out = io.BytesIO()
        image.save(out, format=fmt, **options)
        return out.getvalue()


def _storage(ctx: JobContext) -> Storage:
    return storage_from_settings(ctx.settings)


def run(ctx: JobContext, storage: Storage | None = None) -> JobResult:
    s: Settings = ctx.settings
    storage = storage or _storage(ctx)
    buckets = list(s.storage_buckets)
    timings: dict[str, float] = {}

    absent = [bucket for bucket in buckets if not storage.has_bucket(bucket)]
    if absent:
        raise JobRefused(f"storage-cleanup cannot run: bucket(s) {', '.join(absent)} do not "
                         f"exist on the {storage.name} backend; check STORAGE_BUCKETS")
    sources, unreadable = readable_sources(ctx)

    started = time.monotonic()
    scan_began = dt.datetime.now(dt.UTC)
    refs, reference_rows = build_reference_set(ctx, buckets, sources)
    timings["reference_set_s"] = round(time.monotonic() - started, 3)

    reports = {bucket: BucketReport(bucket) for bucket in buckets}
    with ExitStack() as stack:
        spools = {bucket: _Spool.open(stack) for bucket in buckets}
        started = time.monotonic()
        for bucket in buckets:
            try:
                _classify(ctx, storage, bucket, refs[bucket], reports[bucket], spools[bucket])
            except Exception as exc:
                # Act on nothing from a partial listing.
                reports[bucket] = BucketReport(bucket)
                reports[bucket].error(f"listing failed: {type(exc).__name__}: {exc}")
                spools[bucket] = _Spool.open(stack)
        timings["listing_s"] = round(time.monotonic() - started, 3)

        for name, _why in unreadable.items():
            source = next(src for src in SOURCES if src.name == name)
            for bucket in buckets:
                if source.buckets is None or bucket in source.buckets:
                    reports[bucket].protected_by.append(name)

        braked = []
        for bucket, report in reports.items():
            if report.protected_by:
                continue  # nothing is deleted there this run anyway
            planned = report.temp_to_delete + report.orphans_to_delete
            report.delete_fraction = round(planned / report.scanned, 4) if report.scanned else 0
            if planned and report.delete_fraction > s.storage_delete_brake_fraction:
                report.braked = True
                braked.append(bucket)
        stop = bool(braked) and not ctx.force

        if not (ctx.dry_run or stop):
            started = time.monotonic()
            # Rows linked while the bucket listings ran; a margin covers clock skew.
            build_reference_set(ctx, buckets, sources,
                                since=scan_began - dt.timedelta(minutes=5), into=refs)
            for bucket in buckets:
                if not reports[bucket].protected_by:
                    _delete(storage, bucket, refs[bucket], reports[bucket], spools[bucket])
            timings["deletes_s"] = round(time.monotonic() - started, 3)
            started = time.monotonic()
            for bucket in buckets:
                _recompress(ctx, storage, bucket, reports[bucket], spools[bucket])
            timings["recompress_s"] = round(time.monotonic() - started, 3)

    return _result(ctx, storage, reports, timings, reference_rows, braked, stop, unreadable)


def _result(ctx: JobContext, storage: Storage, reports: dict[str, BucketReport],
            timings: dict[str, float], reference_rows: int, braked: list[str],
            stopped: bool, unreadable: dict[str, str]) -> JobResult:
    s = ctx.settings
    every = list(reports.values())
    errors = sum(r.errors for r in every)
    protected = sorted({r.bucket for r in every if r.protected_by})
    note = ""
    if unreadable:
        note = (f"; reference source(s) {', '.join(sorted(unreadable))} unreadable: nothing "
                f"deleted from {', '.join(protected)}")
    details: dict[str, Any] = {
        "unreadable_sources": unreadable,
        "protected_buckets": protected,
        "backend": storage.name,
        "dry_run": ctx.dry_run,
        "forced": ctx.force,
        "braked": braked,
        "brake_fraction": s.storage_delete_brake_fraction,
        "reference_rows": reference_rows,
        "timings": timings,
        "buckets": [asdict(r) for r in every],
    }
    if ctx.dry_run:
        planned = sum(r.temp_to_delete + r.orphans_to_delete for r in every)
        planned_bytes = sum(r.temp_to_delete_bytes + r.orphans_to_delete_bytes for r in every)
        candidates = sum(r.recompress_candidates for r in every)
        message = (f"would delete {planned} objects ({planned_bytes} bytes) and examine "
                   f"{candidates} images for recompression")
        if braked:
            message += f"; the safety brake would stop the run ({', '.join(braked)})"
        message += note
        return JobResult(0, message, "warning" if braked or errors or unreadable
                         else "success", details)
    if stopped:
        numbers = ", ".join(
            f"{r.bucket}: {r.temp_to_delete + r.orphans_to_delete} of {r.scanned} objects "
            f"({r.delete_fraction:.1%})" for r in every if r.braked)
        message = (f"safety brake: would delete more than "
                   f"{s.storage_delete_brake_fraction:.0%} of a bucket ({numbers}); deleted "
                   "and rewrote nothing. Check the references, then force a run to proceed")
        return JobResult(0, message + note, "warning", details)
    deleted = sum(r.temp_deleted + r.orphans_deleted for r in every)
    freed = sum(r.temp_deleted_bytes + r.orphans_deleted_bytes for r in every)
    recompressed = sum(r.recompressed for r in every)
    saved = sum(r.recompress_bytes_saved for r in every)
    message = (f"deleted {deleted} objects ({freed} bytes), recompressed {recompressed} "
               f"images ({saved} bytes saved)")
    if errors:
        message += f"; {errors} errors (see details)"
    message += note
    return JobResult(deleted + recompressed, message,
                     "warning" if errors or unreadable else "success", details)
