"""storage-cleanup: remove stale temporary uploads and orphaned files, shrink old media.

Nothing is deleted outright: what a run removes is moved to the quarantine prefix of its
bucket, `<STORAGE_QUARANTINE_PREFIX><time>_<run id>/<temp|orphan|replaced>/<key>`, and
deleted for good only after `STORAGE_QUARANTINE_RETENTION_DAYS`; `restore(run_id)`
(`voyagesmart-cron restore <run-id>`) moves back exactly what one run moved.

Steps:

1. References.  Stream every value of each source in `app.voyagesmart.file_references.SOURCES` and
   read it with `read_reference` (every Supabase URL form, `bucket/key` paths, bare keys);
   keep a 64-bit hash of each key it may name, per bucket (a bare key in every bucket).  A
   source whose table or column is missing, or a value that cannot be interpreted, is
   reported and blocks every deletion in the buckets it might name.  A configured bucket
   that does not exist stops the run: an empty listing must never look like an empty
   bucket.  A hash costs about 60 bytes per distinct key, whatever the URL lengths; a
   collision can only make an orphan look referenced, i.e. keep a file.
2. Listing.  One pass over each bucket, page by page.  The reference check comes first, so
   no rule ever touches a referenced object:
   - referenced: a recompression candidate when it is a JPEG/PNG/WebP older than
     `STORAGE_MEDIA_MIN_AGE_DAYS` and at least `STORAGE_RECOMPRESS_MIN_BYTES`;
   - under `STORAGE_TEMP_PREFIX` and older than `STORAGE_TEMP_MAX_AGE_HOURS`: to remove;
   - otherwise older than `STORAGE_ORPHAN_MIN_AGE_DAYS`: to remove (a younger orphan is
     kept: its upload may not be linked yet);
   - in the quarantine: a removed object whose key is referenced again, and free, goes
     back; past the retention it is purged.
   Candidates are spooled to temporary files, not held in memory.
3. Brake (`app.core.safety`): moving out of a bucket more than both the count and the share of
   `STORAGE_CLEANUP_DELETE_BRAKE_COUNT` / `_SHARE` stops the run, changing nothing, unless
   it is forced.  The purge is not braked: it deletes what braked runs moved earlier.
4. Images.  Each candidate is re-encoded in its own format.  Animated images (APNG,
   animated WebP or GIF) are skipped; PNG and lossless WebP are re-encoded losslessly and
   kept only if every pixel is unchanged; a 16-bit PNG is skipped.  The result replaces the
   original when it saves `STORAGE_RECOMPRESS_MIN_SAVING`, after the original was copied
   to the quarantine and the new bytes were written and read back as a valid image.
5. Removal.  Re-read the references written since the scan began (rows linked while the
   buckets were listed), then move each candidate still unreferenced to the quarantine,
   put back quarantined objects referenced again, and purge those past the retention.

Chunks (app/core/chunks.py), so a run longer than one invocation continues at the next
call: steps 1-3 are the plan, done once, since the brake must see each bucket whole; the
chunks are batches of step 4's images and of step 5's moves and quarantined objects, each
carrying its objects (key, size, ETag), the quarantine folder and what it needs to re-read
the late references, so any process can run it.  Each move or quarantine chunk re-reads
the rows written since the scan began: a file linked between two calls stays.

Skipped (nothing to do, `nothing_to_do`) where storage is not configured.

A dry run does steps 1-4 without writing (it re-encodes the images in memory), so its
counts and samples are the real run's.  A second run finds nothing: removed files are in
the quarantine, and a recompressed image no longer compresses by the required fraction.

Longer than the usual 400 lines: one module per job, read top to bottom in the order of the
steps above; the storage itself is in app/adapters/storage.py and the references it checks
in app/voyagesmart/file_references.py.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import io
import json
import re
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app.adapters.storage import (
    S3_DELETE_BATCH,
    Move,
    ObjectChanged,
    Storage,
    StoredObject,
    storage_from_settings,
)
from app.config import Settings
from app.core.batching import stream_keys
from app.core.chunks import Chunked, Plan
from app.core.context import JobContext, JobResult
from app.core.errors import JobRefused
from app.core.safety import Brake
from app.core.status import JobStatus, RunStatus
from app.logs import EMAIL
from app.voyagesmart.file_references import SOURCES, Malformed, Source, read_reference, values_in

_IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
_SAMPLES = 5
_KINDS = ("temp", "orphan", "replaced")
_STAMP = "%Y%m%dT%H%M%SZ"
# Rows written while the buckets were listed are read again; this covers clock skew.
_LATE_MARGIN = dt.timedelta(minutes=5)


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


# --- references -------------------------------------------------------------------------

@dataclass
class References:
    """What the rows name: key hashes per bucket, plus bare keys (any bucket)."""

    by_bucket: dict[str, set[int]]
    anywhere: set[int] = field(default_factory=set)
    rows: int = 0
    # Buckets nothing may be deleted from, with the sources that say so.
    blocked: dict[str, set[str]] = field(default_factory=dict)
    uninterpretable: dict[str, int] = field(default_factory=dict)  # per source
    samples: list[str] = field(default_factory=list)

    def names(self, bucket: str, key: str) -> bool:
        digest = key_hash(key)
        return digest in self.by_bucket[bucket] or digest in self.anywhere

    def block(self, buckets: Sequence[str], why: str) -> None:
        for bucket in buckets:
            if bucket in self.by_bucket:
                self.blocked.setdefault(bucket, set()).add(why)

    def not_understood(self, source: Source, reason: str, value: Any,
                       buckets: tuple[str, ...] | None) -> None:
        self.uninterpretable[source.name] = self.uninterpretable.get(source.name, 0) + 1
        if len(self.samples) < _SAMPLES:
            self.samples.append(f"{source.name}: {reason}: {_excerpt(value)}")
        self.block(buckets or source.buckets or list(self.by_bucket),
                   f"{source.name} (values not understood)")


def _excerpt(value: Any) -> str:
    """A value fit for a report: no signed-URL token, no email address, short."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = re.sub(r"(token=)[^&#\s]*", r"\1…", text)
    text = EMAIL.sub("[email]", text)
    return text if len(text) <= 120 else text[:119] + "…"


def _reference_query(source: Source, since: dt.datetime | None = None) -> sa.Select[Any]:
    table = sa.table(source.table, *(sa.column(c) for c in (source.column, *source.changed)))
    col = table.c[source.column]
    # Every value: a bare key or a `bucket/key` path protects as much as a URL.
    query = sa.select(col).where(col.is_not(None))
    if since is not None:
        query = query.where(sa.or_(*(table.c[c] >= since for c in source.changed)))
    return query


def build_references(engine: Engine, batch: int, buckets: list[str],
                     sources: Sequence[Source], since: dt.datetime | None = None,
                     into: References | None = None) -> References:
    """Stream each source's values once into `References`."""
    refs = into if into is not None else References({bucket: set() for bucket in buckets})
    configured = frozenset(buckets)
    for source in sources:
        for chunk in stream_keys(engine, _reference_query(source, since), batch):
            refs.rows += len(chunk)
            for value in chunk:
                for item in values_in(source.kind, value):
                    if isinstance(item, Malformed):
                        refs.not_understood(source, item.reason, value, None)
                        continue
                    reading = read_reference(item, configured)
                    if reading.problem is not None:
                        refs.not_understood(source, reading.problem, item,
                                            reading.problem_buckets)
                    for bucket, key in reading.names:
                        (refs.anywhere if bucket is None else refs.by_bucket[bucket]).add(
                            key_hash(key))
    return refs


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


# --- the quarantine ---------------------------------------------------------------------

@dataclass(frozen=True)
class Quarantined:
    at: dt.datetime
    run_id: uuid.UUID
    kind: str  # temp | orphan | replaced
    key: str  # where it was


def quarantine_folder(prefix: str, at: dt.datetime, run_id: uuid.UUID) -> str:
    return f"{prefix}{at.astimezone(dt.UTC).strftime(_STAMP)}_{run_id}/"


def parse_quarantine_key(prefix: str, key: str) -> Quarantined | None:
    if not key.startswith(prefix):
        return None
    folder, _, rest = key[len(prefix):].partition("/")
    stamp, _, run = folder.partition("_")
    kind, _, original = rest.partition("/")
    if kind not in _KINDS or not original:
        return None
    try:
        at = dt.datetime.strptime(stamp, _STAMP).replace(tzinfo=dt.UTC)
        return Quarantined(at, uuid.UUID(run), kind, original)
    except ValueError:
        return None


# --- one bucket -------------------------------------------------------------------------

class _Samples:
    """The first keys in sort order: the same whatever order a listing returns."""

    def __init__(self) -> None:
        self.keys: dict[str, list[str]] = {}

    def add(self, action: str, key: str) -> None:
        keys = self.keys.setdefault(action, [])
        if len(keys) < _SAMPLES or key < keys[-1]:
            bisect.insort(keys, key)
            del keys[_SAMPLES:]


@dataclass
class BucketReport:
    bucket: str
    scanned: int = 0  # objects outside the quarantine
    scanned_bytes: int = 0
    referenced: int = 0
    # What the rules found to remove (a dry or braked run too) ...
    temp_to_delete: int = 0
    temp_to_delete_bytes: int = 0
    orphans_to_delete: int = 0
    orphans_to_delete_bytes: int = 0
    # ... and what was really removed (moved to the quarantine).
    temp_deleted: int = 0
    temp_deleted_bytes: int = 0
    orphans_deleted: int = 0
    orphans_deleted_bytes: int = 0
    linked_during_run: int = 0  # candidates a row referenced by the time of the move
    temp_kept: int = 0
    young_orphans_kept: int = 0
    recompress_candidates: int = 0
    recompress_to_replace: int = 0
    recompress_to_save_bytes: int = 0
    recompressed: int = 0
    recompress_bytes_saved: int = 0
    recompress_not_worth_it: int = 0
    recompress_skipped_animated: int = 0
    recompress_skipped_lossless: int = 0  # a lossless re-encoding was not pixel-exact
    recompress_skipped_format: int = 0  # the bytes are not what the name says
    quarantine_held: int = 0  # removed by earlier runs, within the retention
    quarantine_to_return: int = 0
    quarantine_returned: int = 0
    quarantine_to_purge: int = 0
    quarantine_to_purge_bytes: int = 0
    quarantine_purged: int = 0
    quarantine_purged_bytes: int = 0
    quarantine_unknown: int = 0  # under the prefix, not of our layout: left alone
    # Nothing is deleted here this run: a source unreadable, or values not understood.
    protected_by: list[str] = field(default_factory=list)
    brake: dict[str, Any] | None = None
    samples: dict[str, list[str]] = field(default_factory=dict)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < _SAMPLES:
            self.error_samples.append(message[:300])

    @property
    def to_move(self) -> int:
        return self.temp_to_delete + self.orphans_to_delete


@dataclass
class _Spool:
    """Candidates of one bucket, one JSON line each, on disk rather than in memory."""

    removals: IO[str]
    images: IO[str]
    quarantine: IO[str]

    @classmethod
    def open(cls, stack: ExitStack) -> _Spool:
        return cls(*(stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(3)))


def _lines(handle: IO[str]) -> Iterator[dict[str, Any]]:
    handle.flush()
    handle.seek(0)
    for line in handle:
        yield json.loads(line)


def _write(handle: IO[str], **item: Any) -> None:
    handle.write(json.dumps(item) + "\n")


def _classify(ctx: JobContext, storage: Storage, bucket: str, refs: References,
              report: BucketReport, spool: _Spool, samples: _Samples) -> None:
    s = ctx.settings
    temp_before = ctx.now - dt.timedelta(hours=s.storage_temp_max_age_hours)
    orphan_before = ctx.now - dt.timedelta(days=s.storage_orphan_min_age_days)
    media_before = ctx.now - dt.timedelta(days=s.storage_media_min_age_days)
    purge_before = ctx.now - dt.timedelta(days=s.storage_quarantine_retention_days)
    quarantine = s.storage_quarantine_prefix
    for obj in storage.list(bucket):
        if obj.key.startswith(quarantine):
            _classify_quarantined(storage, bucket, obj, refs, purge_before, quarantine,
                                  report, spool, samples)
            continue
        report.scanned += 1
        report.scanned_bytes += obj.size
        if refs.names(bucket, obj.key):  # before any rule: nothing referenced is removed
            report.referenced += 1
            suffix = obj.key[obj.key.rfind("."):].lower() if "." in obj.key else ""
            if (suffix in _IMAGE_FORMATS and obj.last_modified < media_before
                    and obj.size >= s.storage_recompress_min_bytes):
                _write(spool.images, k=obj.key, size=obj.size,
                       lm=obj.last_modified.isoformat(), etag=obj.etag)
                report.recompress_candidates += 1
        elif obj.key.startswith(s.storage_temp_prefix):
            if obj.last_modified < temp_before:
                _write(spool.removals, k=obj.key, kind="temp", size=obj.size, etag=obj.etag)
                report.temp_to_delete += 1
                report.temp_to_delete_bytes += obj.size
                samples.add("temp", obj.key)
            else:
                report.temp_kept += 1
        elif obj.last_modified < orphan_before:
            _write(spool.removals, k=obj.key, kind="orphan", size=obj.size, etag=obj.etag)
            report.orphans_to_delete += 1
            report.orphans_to_delete_bytes += obj.size
            samples.add("orphans", obj.key)
        else:
            report.young_orphans_kept += 1


def _classify_quarantined(storage: Storage, bucket: str, obj: StoredObject,
                          refs: References, purge_before: dt.datetime, prefix: str,
                          report: BucketReport, spool: _Spool, samples: _Samples) -> None:
    held = parse_quarantine_key(prefix, obj.key)
    if held is None:
        report.quarantine_unknown += 1
        return
    # A removed file a row links again goes back where the link points, if that is free
    # (a replaced image's key holds its recompressed version: that one stays).
    linked = held.kind != "replaced" and refs.names(bucket, held.key)
    if linked and not storage.exists(bucket, held.key):
        _write(spool.quarantine, k=obj.key, orig=held.key, kind=held.kind, size=obj.size,
               action="return")
        report.quarantine_to_return += 1
        samples.add("return", held.key)
    elif held.at < purge_before:
        # (Linked but its key is taken again: the copy here is no longer what it names.)
        _write(spool.quarantine, k=obj.key, orig=held.key, kind=held.kind, size=obj.size,
               action="purge", linked=linked)
        report.quarantine_to_purge += 1
        report.quarantine_to_purge_bytes += obj.size
        samples.add("purge", obj.key)
    else:
        report.quarantine_held += 1


def _remove(storage: Storage, bucket: str, refs: References, folder: str,
            report: BucketReport, items: Iterable[dict[str, Any]]) -> None:
    """Move the removal candidates still unreferenced into this run's quarantine folder."""
    def flush(batch: list[dict[str, Any]]) -> None:
        failed = storage.move(bucket, [
            Move(item["k"], f"{folder}{item['kind']}/{item['k']}", etag=item["etag"],
                 size=item["size"], target_is_new=True) for item in batch])
        for item in batch:
            if item["k"] in failed:
                report.error(f"move {item['k']}: {failed[item['k']]}")
            elif item["kind"] == "temp":
                report.temp_deleted += 1
                report.temp_deleted_bytes += item["size"]
            else:
                report.orphans_deleted += 1
                report.orphans_deleted_bytes += item["size"]
        batch.clear()

    batch: list[dict[str, Any]] = []
    for item in items:
        if refs.names(bucket, item["k"]):
            report.linked_during_run += 1  # linked while the run was listing: kept
            continue
        batch.append(item)
        if len(batch) >= S3_DELETE_BATCH:
            flush(batch)
    flush(batch)


def _settle_quarantine(storage: Storage, bucket: str, refs: References,
                       report: BucketReport, items: Iterable[dict[str, Any]], purge: bool
                       ) -> None:
    """Put back what is referenced again; delete for good what is past the retention."""
    returns: list[dict[str, Any]] = []
    purges: list[dict[str, Any]] = []

    def flush() -> None:
        if returns:
            failed = storage.move(bucket, [Move(i["k"], i["orig"], size=i["size"])
                                           for i in returns])
            for item in returns:
                if item["k"] in failed:
                    report.error(f"return {item['orig']}: {failed[item['k']]}")
                else:
                    report.quarantine_returned += 1
            returns.clear()
        if purges:
            failed = storage.delete(bucket, [i["k"] for i in purges])
            for item in purges:
                if item["k"] in failed:
                    report.error(f"purge {item['k']}: {failed[item['k']]}")
                else:
                    report.quarantine_purged += 1
                    report.quarantine_purged_bytes += item["size"]
            purges.clear()

    for item in items:
        if item["action"] == "return":
            returns.append(item)
        elif purge and (item["linked"] or item["kind"] == "replaced"
                        or not refs.names(bucket, item["orig"])):
            purges.append(item)  # (one linked during the run goes back next run instead)
        if len(returns) + len(purges) >= S3_DELETE_BATCH:
            flush()
    flush()


# --- images -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Encoded:
    body: bytes | None
    skipped: str = ""  # animated | lossless | format


def _webp_is_lossless(body: bytes) -> bool:
    """Whether a WebP file's image data is VP8L (lossless), read from its RIFF chunks."""
    at = 12
    while at + 8 <= len(body):
        fourcc = body[at:at + 4]
        if fourcc == b"VP8L":
            return True
        if fourcc == b"VP8 ":
            return False
        size = int.from_bytes(body[at + 4:at + 8], "little")
        at += 8 + size + (size & 1)
    return False


def _png_bit_depth(body: bytes) -> int:
    # Signature (8), IHDR length and type (8), width and height (8), then the bit depth.
    return body[24] if len(body) > 24 else 0


def _pixels(image: Any) -> tuple[str, Any, bytes]:
    if image.mode in ("P", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    return image.mode, image.size, image.tobytes()


def _reencode(body: bytes, fmt: str, quality: int) -> _Encoded:
    from PIL import Image

    with Image.open(io.BytesIO(body)) as image:
        if image.format != fmt:
            return _Encoded(None, "format")  # the name lies about the content: leave it
        if getattr(image, "is_animated", False) or getattr(image, "n_frames", 1) > 1:
            return _Encoded(None, "animated")  # a re-encoding would keep one frame
        lossless = fmt == "PNG" or (fmt == "WEBP" and _webp_is_lossless(body))
        if fmt == "PNG" and (_png_bit_depth(body) == 16 or "gamma" in image.info
                             or "chromaticity" in image.info):
            # Pillow would write 8 bits, or drop what tells a viewer the colours.
            return _Encoded(None, "lossless")
        options: dict[str, Any] = {}
        # Keep what a viewer needs: orientation (EXIF), colour profile, resolution.
        for name in ("exif", "icc_profile", "dpi"):
            if image.info.get(name):
                options[name] = image.info[name]
        if fmt == "JPEG":
            options.update(quality=quality, optimize=True, progressive=True)
        elif fmt == "PNG":
            options.update(optimize=True)
        elif lossless:  # WebP: lossless stays lossless, even under transparent pixels
            options.update(lossless=True, quality=100, method=6, exact=True)
        else:
            options.update(quality=quality, method=6)
        out = io.BytesIO()
        image.save(out, format=fmt, **options)
        encoded = out.getvalue()
        if lossless:
            with Image.open(io.BytesIO(encoded)) as again:
                if _pixels(again) != _pixels(image):
                    return _Encoded(None, "lossless")
        return _Encoded(encoded)


def _recompress(ctx: JobContext, storage: Storage, bucket: str, folder: str,
                report: BucketReport, items: Iterable[dict[str, Any]], samples: _Samples,
                act: bool) -> None:
    from PIL import Image

    s = ctx.settings
    for item in items:
        obj = StoredObject(item["k"], int(item["size"]), dt.datetime.fromisoformat(item["lm"]),
                           item["etag"])
        fmt = _IMAGE_FORMATS[obj.key[obj.key.rfind("."):].lower()]
        try:
            data = storage.get(bucket, obj.key)
            encoded = _reencode(data.body, fmt, s.storage_recompress_quality)
            if encoded.body is None:
                name = f"recompress_skipped_{encoded.skipped}"
                setattr(report, name, getattr(report, name) + 1)
                continue
            smaller = encoded.body
            if len(smaller) > len(data.body) * (1 - s.storage_recompress_min_saving):
                report.recompress_not_worth_it += 1
                continue
            report.recompress_to_replace += 1
            report.recompress_to_save_bytes += len(data.body) - len(smaller)
            samples.add("recompress", obj.key)
            if not act:
                continue

            def verify(body: bytes, fmt: str = fmt) -> None:
                with Image.open(io.BytesIO(body)) as image:
                    if image.format != fmt:
                        raise ValueError(f"wrote {image.format}, expected {fmt}")
                    image.load()  # decodes every pixel: a truncated file fails here

            # The original first goes to the quarantine, where restore finds it.
            kept = f"{folder}replaced/{obj.key}"
            storage.copy(bucket, obj, kept)
            try:
                storage.replace(bucket, obj, smaller, verify)
            except BaseException:
                storage.delete(bucket, [kept])
                raise
            report.recompressed += 1
            report.recompress_bytes_saved += len(data.body) - len(smaller)
        except ObjectChanged as exc:
            report.error(f"recompress skipped: {exc}")
        except Exception as exc:  # one bad image must not stop the bucket
            report.error(f"recompress {obj.key}: {type(exc).__name__}: {exc}")


# --- the run ----------------------------------------------------------------------------

def _storage(ctx: JobContext) -> Storage:
    return storage_from_settings(ctx.settings)


def nothing_to_do(ctx: JobContext) -> str | None:
    """The precondition (app/core/registry.py): storage is not configured here, i.e. the
    local backend (the default) has no root directory at all.  A root without one of the
    configured buckets is not this: the run stops with an error (step 1)."""
    s = ctx.settings
    if s.storage_backend == "local" and not s.storage_root.is_dir():
        return (f"storage is not configured: STORAGE_BACKEND=local and its root "
                f"{s.storage_root} does not exist (set STORAGE_LOCAL_ROOT, or "
                "STORAGE_BACKEND=s3)")
    return None


def brake(settings: Settings, bucket: str) -> Brake:
    return Brake(f"move {bucket} objects to the quarantine",
                 settings.storage_cleanup_delete_brake_share,
                 settings.storage_cleanup_delete_brake_count,
                 ("STORAGE_CLEANUP_DELETE_BRAKE_SHARE", "STORAGE_CLEANUP_DELETE_BRAKE_COUNT"))


# Objects per chunk: a chunk of moves or of quarantine settlements is one S3 delete batch;
# images are read, re-encoded and written back one by one, so fewer make a chunk.
_MOVES_PER_CHUNK = S3_DELETE_BATCH
_IMAGES_PER_CHUNK = 20


def plan(ctx: JobContext) -> Plan:
    """Steps 1-3, once per run: the references, every bucket's listing and the brake over
    each bucket's whole count, before any chunk is saved.  The chunks are what steps 4-5
    act on, in bounded batches, each carrying its objects (key, size, ETag) and what it
    needs to re-read the late references; notes keep the figures of the listing."""
    s: Settings = ctx.settings
    storage = _storage(ctx)
    buckets = list(s.storage_buckets)
    timings: dict[str, float] = {}

    absent = [bucket for bucket in buckets if not storage.has_bucket(bucket)]
    if absent:
        raise JobRefused(f"storage-cleanup cannot run: bucket(s) {', '.join(absent)} do not "
                         f"exist on the {storage.name} backend; check STORAGE_BUCKETS")
    sources, unreadable = readable_sources(ctx)
    folder = quarantine_folder(s.storage_quarantine_prefix, ctx.now, ctx.run_id)

    started = time.monotonic()
    scan_began = dt.datetime.now(dt.UTC)
    refs = build_references(ctx.engine, s.batch_size, buckets, sources)
    for name in unreadable:
        source = next(src for src in SOURCES if src.name == name)
        refs.block(source.buckets or buckets, name)
    timings["reference_set_s"] = round(time.monotonic() - started, 3)

    reports = {bucket: BucketReport(bucket) for bucket in buckets}
    samples = {bucket: _Samples() for bucket in buckets}
    common = {"folder": folder, "buckets": buckets, "sources": [src.name for src in sources],
              "since": (scan_began - _LATE_MARGIN).isoformat()}
    chunks: list[dict[str, Any]] = []
    with ExitStack() as stack:
        spools = {bucket: _Spool.open(stack) for bucket in buckets}
        started = time.monotonic()
        for bucket in buckets:
            try:
                _classify(ctx, storage, bucket, refs, reports[bucket], spools[bucket],
                          samples[bucket])
            except Exception as exc:
                # Act on nothing from a partial listing.
                reports[bucket] = BucketReport(bucket)
                reports[bucket].error(f"listing failed: {type(exc).__name__}: {exc}")
                spools[bucket] = _Spool.open(stack)
                samples[bucket] = _Samples()
        timings["listing_s"] = round(time.monotonic() - started, 3)

        for bucket, report in reports.items():
            report.protected_by = sorted(refs.blocked.get(bucket, ()))
            if not report.protected_by:  # (nothing is removed from a protected bucket)
                report.brake = brake(s, bucket).engage(
                    affected=report.to_move, population=report.scanned,
                    samples=[*samples[bucket].keys.get("orphans", []),
                             *samples[bucket].keys.get("temp", [])],
                    force=ctx.force)

        for bucket in buckets:
            for items in _batches(_lines(spools[bucket].images), _IMAGES_PER_CHUNK):
                chunks.append({"step": "recompress", "bucket": bucket, **common,
                               "items": items})
        if not ctx.dry_run:  # (a dry run stops at the images: it moves nothing)
            for bucket, report in reports.items():
                if not report.protected_by:
                    for items in _batches(_lines(spools[bucket].removals), _MOVES_PER_CHUNK):
                        chunks.append({"step": "remove", "bucket": bucket, **common,
                                       "items": items})
                for items in _batches(_lines(spools[bucket].quarantine), _MOVES_PER_CHUNK):
                    chunks.append({"step": "quarantine", "bucket": bucket, **common,
                                   "purge": not report.protected_by, "items": items})

    notes = {"folder": folder, "backend": storage.name, "unreadable": unreadable,
             "reference_rows": refs.rows, "uninterpretable": refs.uninterpretable,
             "uninterpretable_samples": refs.samples, "timings": timings,
             "buckets": {bucket: asdict(report) for bucket, report in reports.items()},
             "samples": {bucket: samples[bucket].keys for bucket in buckets}}
    return Plan(chunks, notes)


def _batches(items: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def work(ctx: JobContext, args: dict[str, Any]) -> dict[str, Any]:
    """One chunk of steps 4-5 in one bucket, from its own arguments: recompress its images;
    or, after re-reading the references written since the scan began, move its removal
    candidates still unreferenced to the quarantine, or settle its quarantined objects."""
    storage = _storage(ctx)
    bucket, folder = args["bucket"], args["folder"]
    report, samples = BucketReport(bucket), _Samples()
    timings: dict[str, float] = {}
    late_rows = 0
    started = time.monotonic()
    if args["step"] == "recompress":
        _recompress(ctx, storage, bucket, folder, report, args["items"], samples,
                    act=not ctx.dry_run)
        timings["recompress_s"] = time.monotonic() - started
    elif not ctx.dry_run:
        late = _late_references(ctx, args)
        late_rows = late.rows
        report.protected_by = sorted(late.blocked.get(bucket, ()))
        timings["late_references_s"] = time.monotonic() - started
        started = time.monotonic()
        if args["step"] == "remove" and not report.protected_by:
            _remove(storage, bucket, late, folder, report, args["items"])
        elif args["step"] == "quarantine":
            _settle_quarantine(storage, bucket, late, report, args["items"],
                               purge=args["purge"] and not report.protected_by)
        timings["moves_s"] = time.monotonic() - started
    figures: dict[str, Any] = {name: value for name, value in asdict(report).items()
                               if type(value) is int and value}
    if report.protected_by:
        figures["protected_by"] = report.protected_by
    if report.error_samples:
        figures["error_samples"] = report.error_samples
    return {
        "records": (report.temp_deleted + report.orphans_deleted + report.recompressed
                    + report.quarantine_returned + report.quarantine_purged),
        "buckets": {bucket: figures},
        # Keyed, not listed: the totals keep every chunk's first keys, to sort at the end.
        "samples": {bucket: {action: dict.fromkeys(keys, 1)
                             for action, keys in samples.keys.items()}},
        "timings": timings,
        "late_reference_rows": late_rows,
    }


def _late_references(ctx: JobContext, args: dict[str, Any]) -> References:
    """The references in rows written since the scan began (less a margin): a candidate
    they name was linked while the run went on, and stays."""
    names = set(args["sources"])
    return build_references(ctx.engine, ctx.settings.batch_size, list(args["buckets"]),
                            [src for src in SOURCES if src.name in names],
                            since=dt.datetime.fromisoformat(args["since"]))


def finish(ctx: JobContext, notes: dict[str, Any], totals: dict[str, Any]) -> JobResult:
    reports: dict[str, BucketReport] = {}
    for bucket, base in notes["buckets"].items():
        fields = dict(base)
        for name, value in totals.get("buckets", {}).get(bucket, {}).items():
            if name == "protected_by":
                fields[name] = sorted({*fields[name], *value})
            elif name == "error_samples":
                fields[name] = [*fields[name], *value][:_SAMPLES]
            else:
                fields[name] += value
        keys = {action: list(found) for action, found in notes["samples"][bucket].items()}
        for action, found in totals.get("samples", {}).get(bucket, {}).items():
            keys[action] = sorted({*keys.get(action, []), *found})[:_SAMPLES]
        fields["samples"] = {action: keys[action] for action in sorted(keys)}
        reports[bucket] = BucketReport(**fields)
    timings = {name: round(float(value), 3)
               for name, value in {**notes["timings"], **totals.get("timings", {})}.items()}
    return _result(ctx, notes, reports, timings, int(totals.get("late_reference_rows", 0)))


run = Chunked(plan=plan, work=work, finish=finish)


def _result(ctx: JobContext, notes: dict[str, Any], reports: dict[str, BucketReport],
            timings: dict[str, float], late_rows: int) -> JobResult:
    s = ctx.settings
    every = list(reports.values())
    errors = sum(r.errors for r in every)
    protected = sorted(r.bucket for r in every if r.protected_by)
    unreadable: dict[str, str] = notes["unreadable"]
    uninterpretable: dict[str, int] = notes["uninterpretable"]
    note = ""
    if unreadable:
        note += f"; reference source(s) {', '.join(sorted(unreadable))} unreadable"
    if uninterpretable:
        counts = ", ".join(f"{n} in {name}" for name, n in sorted(uninterpretable.items()))
        note += f"; values not understood ({counts}, see details)"
    if protected:
        note += f": nothing deleted from {', '.join(protected)}"
    details: dict[str, Any] = {
        "unreadable_sources": unreadable,
        "uninterpretable_values": uninterpretable,
        "uninterpretable_samples": notes["uninterpretable_samples"],
        "protected_buckets": protected,
        "backend": notes["backend"],
        "dry_run": ctx.dry_run,
        "forced": ctx.force,
        "brake": {"share": s.storage_cleanup_delete_brake_share,
                  "count": s.storage_cleanup_delete_brake_count},
        "quarantine": {"folder": notes["folder"],
                       "retention_days": s.storage_quarantine_retention_days},
        "reference_rows": notes["reference_rows"],
        "late_reference_rows": late_rows,
        "timings": timings,
        "buckets": [asdict(r) for r in every],
        # The size of the work, for its trend (app/observe/volumes.py).
        "volume": {"measure": "objects_scanned", "value": sum(r.scanned for r in every)},
    }
    status: JobStatus = RunStatus.WARNING if errors or protected else RunStatus.SUCCESS
    if ctx.dry_run:
        planned = sum(r.to_move for r in every if not r.protected_by)
        planned_bytes = sum(r.temp_to_delete_bytes + r.orphans_to_delete_bytes
                            for r in every if not r.protected_by)
        message = (f"would delete {planned} objects ({planned_bytes} bytes) into the "
                   f"quarantine, recompress {sum(r.recompress_to_replace for r in every)} "
                   f"images, put back {sum(r.quarantine_to_return for r in every)} and purge "
                   f"{sum(r.quarantine_to_purge for r in every if not r.protected_by)} "
                   "quarantined objects")
        return JobResult(0, message + note, status, details)
    deleted = sum(r.temp_deleted + r.orphans_deleted for r in every)
    freed = sum(r.temp_deleted_bytes + r.orphans_deleted_bytes for r in every)
    recompressed = sum(r.recompressed for r in every)
    saved = sum(r.recompress_bytes_saved for r in every)
    returned = sum(r.quarantine_returned for r in every)
    purged = sum(r.quarantine_purged for r in every)
    message = (f"deleted {deleted} objects ({freed} bytes) into the quarantine, recompressed "
               f"{recompressed} images ({saved} bytes saved), put back {returned} and purged "
               f"{purged} quarantined objects")
    if deleted or recompressed:
        message += f"; undo with: voyagesmart-cron restore {ctx.run_id}"
    if errors:
        message += f"; {errors} errors (see details)"
    return JobResult(deleted + recompressed + returned + purged, message + note, status,
                     details)


# --- restore ----------------------------------------------------------------------------

def restore(settings: Settings, engine: Engine, run_id: uuid.UUID, now: dt.datetime,
            dry_run: bool) -> dict[str, Any]:
    """Move back every object `run_id` put in the quarantine: removed objects to their
    key (unless that key is taken again: then it stays, reported as left), replaced
    originals over their recompressed version."""
    storage = storage_from_settings(settings)
    prefix = settings.storage_quarantine_prefix
    restored: dict[str, int] = {}
    left: dict[str, int] = {}
    left_samples: list[str] = []

    def flush(bucket: str, moves: list[Move]) -> None:
        if dry_run:
            failed = {m.source: f"{m.target} exists" for m in moves
                      if not m.overwrite and storage.exists(bucket, m.target)}
        else:
            failed = storage.move(bucket, moves)
        for move in moves:
            if move.source in failed:
                left[bucket] = left.get(bucket, 0) + 1
                if len(left_samples) < _SAMPLES:
                    left_samples.append(f"{bucket}/{move.target}: {failed[move.source]}")
            else:
                restored[bucket] = restored.get(bucket, 0) + 1
        moves.clear()

    for bucket in settings.storage_buckets:
        if not storage.has_bucket(bucket):
            continue
        moves: list[Move] = []
        for obj in storage.list(bucket, prefix):
            held = parse_quarantine_key(prefix, obj.key)
            if held is None or held.run_id != run_id:
                continue
            moves.append(Move(obj.key, held.key, overwrite=held.kind == "replaced",
                              size=obj.size))
            if len(moves) >= S3_DELETE_BATCH:
                flush(bucket, moves)
        flush(bucket, moves)
    figures: dict[str, Any] = {"files": restored}
    if left:
        figures["left"] = left
        figures["left_samples"] = left_samples
    return figures
