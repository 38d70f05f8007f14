"""Every place VoyageSmart links a stored file, and what a stored value names.

The sources storage-cleanup reads, one line each; a new place that stores a file is one
more line.  `kind` says how the column holds it:

- `url`: the column holds one reference (`getPublicUrl(...).publicUrl`, a signed URL, a
  `bucket/key` path or a bare key);
- `jsonb`: the column is a JSON array of objects with a `url` (the app's `{name, url,
  type}` documents of accommodations and transportation).

`buckets` names the buckets the source can point into: when the source cannot be read (its
table or column is missing), or holds a value nothing here can interpret, nothing is
deleted from those buckets in that run.  `None` means any bucket (no code tells us where
these files go).

`read_reference` turns one stored value into every (bucket, key) it may name.  A reference
protects whatever it can name, so where a value can be read two ways, both readings count:

- a Supabase Storage URL, any route (`/storage/v1/object/public|sign|authenticated/…`,
  `/object/…`, `/render/image/public|sign|authenticated/…`, the S3 endpoint `/s3/…`), with
  or without a query string or fragment.  supabase-js builds these with `encodeURI`, which
  escapes spaces and non-ASCII but leaves `?` and `#`: a key `u1/what?.jpg` comes back as
  `…/trip-media/u1/what?.jpg`, and a signed URL of it ends `…/what?.jpg?token=…`.  So the
  query is split off *before* decoding (an escaped `%3F` is part of the key), and where a
  `?` or `#` could start the query or belong to the key, each reading is kept.  Each path
  is taken as written and percent-decoded once;
- a URL of another site names none of our files;
- anything else (an `s3://` URI too) is a path: a bare key (in every configured bucket)
  and, when its first segment is a configured bucket, that bucket's `<bucket>/<key>`.

A Storage URL of no known route, or one that names a bucket but no file, cannot be
interpreted: it is reported and blocks deletion in the buckets it might name.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple
from urllib.parse import unquote

from app.core.requirements import Uses, uses


@dataclass(frozen=True)
class Source:
    table: str
    column: str
    kind: Literal["url", "jsonb"]
    changed: tuple[str, ...]  # columns that move when a row is written (late references)
    buckets: tuple[str, ...] | None

    def uses(self) -> Uses:
        return uses(self.table, self.column, *self.changed,
                    optional="its files are then protected: nothing is deleted from "
                    + (", ".join(self.buckets) if self.buckets else "any bucket"))

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"


SOURCES: tuple[Source, ...] = (
    Source("trip_media", "url", "url", ("created_at",), ("trip-media",)),
    Source("trip_chat_messages", "attachment_url", "url", ("created_at", "updated_at"),
           ("trip-media",)),
    Source("accommodations", "documents", "jsonb", ("created_at", "updated_at"),
           ("trip-documents",)),
    Source("transportation", "documents", "jsonb", ("created_at", "updated_at"),
           ("trip-documents",)),
    Source("documents", "file_url", "url", ("created_at", "updated_at"), None),
    Source("expenses", "receipt_url", "url", ("created_at", "updated_at"), None),
    # Typed by the user rather than uploaded, but a URL into our storage still protects.
    Source("users", "avatar_url", "url", ("created_at",), None),
)


@dataclass(frozen=True)
class Malformed:
    """A column value whose shape hides what it references."""

    reason: str


def values_in(kind: str, value: Any) -> Iterator[str | Malformed]:
    """The reference strings a column value holds, or what makes part of it unreadable."""
    if value is None:
        return
    if kind == "url":
        yield value if isinstance(value, str) else Malformed(
            f"a {type(value).__name__} where a URL or key was expected")
        return
    if isinstance(value, str):  # JSON as text (SQLite), or a JSON string inside JSONB
        try:
            value = json.loads(value)
        except ValueError:
            yield Malformed("documents that are not JSON")
            return
        if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
            with contextlib.suppress(ValueError):  # JSON encoded twice
                value = json.loads(value)
    items = value if isinstance(value, list) else [value]
    for item in items:
        if item is None:
            continue
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            url = item.get("url")
            if isinstance(url, str):
                yield url
            elif "url" in item and url is None:
                continue  # an entry without a file
            else:
                yield Malformed("a document entry without a url")
        else:
            yield Malformed(f"a {type(item).__name__} in the documents")


# Where a path starts after `…/storage/v1/`: Storage API routes that take
# `<bucket>/<key>`, most specific first (storage-js getPublicUrl, createSignedUrl,
# download, info; the image renderer; the S3 endpoint in path style).
_STORAGE = "storage/v1/"
_ROUTES = (
    "object/public/", "object/sign/", "object/authenticated/", "object/upload/sign/",
    "object/info/public/", "object/info/authenticated/", "object/info/",
    "render/image/public/", "render/image/sign/", "render/image/authenticated/",
    "s3/", "object/",
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Every `?`/`#` doubles the readings; a value with more is not one we can interpret.
_MAX_SEPARATORS = 8

Name = tuple[str | None, str]  # (bucket, key); bucket None: every configured bucket


class Reading(NamedTuple):  # (a tuple: made once per stored value, it must be cheap)
    names: frozenset[Name] = frozenset()
    problem: str | None = None
    # The buckets a problem concerns; None: every bucket the source may point into.
    problem_buckets: tuple[str, ...] | None = None


NOTHING = Reading()


def read_reference(value: str, buckets: Collection[str]) -> Reading:
    """Every (bucket, key) of `buckets` that `value` may name (see the module docstring)."""
    text = value.strip()
    if not text:
        return NOTHING
    at = text.find(_STORAGE)
    if at >= 0 and (at == 0 or text[at - 1] == "/"):
        return _read_storage_url(text[at + len(_STORAGE):], buckets)
    if text[:5].lower() == "s3://":  # an S3 URI: s3://<bucket>/<key>
        return _read_path(text[5:], buckets)
    if _SCHEME.match(text):
        return NOTHING  # another site's URL
    return _read_path(text, buckets)


def _readings(path: str) -> list[str] | None:
    """`path` cut at each `?` or `#` (each could start the query or fragment) and whole;
    each as written and percent-decoded once.  None: too many separators to try."""
    if "?" not in path and "#" not in path:  # the usual case, and a fast one
        if "%" not in path:
            return [path]
        cuts = []
    else:
        cuts = [i for i, char in enumerate(path) if char in "?#"]
        if len(cuts) > _MAX_SEPARATORS:
            return None
    out: list[str] = []
    for candidate in (*(path[:i] for i in cuts), path):
        out.append(candidate)
        if "%" in candidate:
            try:
                decoded = unquote(candidate, errors="strict")
            except UnicodeDecodeError:
                continue  # not UTF-8 once decoded: only the literal reading names a key
            if decoded != candidate:
                out.append(decoded)
    return out


def _read_storage_url(rest: str, buckets: Collection[str]) -> Reading:
    for route in _ROUTES:
        if rest.startswith(route):
            path = rest[len(route):]
            break
    else:
        return Reading(problem="a Storage URL of no known route")
    readings = _readings(path)
    if readings is None:
        return Reading(problem="a Storage URL with too many ? or #")
    if len(readings) == 1:  # the usual case: one reading
        bucket, _, key = readings[0].partition("/")
        if bucket in buckets and key:
            return Reading(frozenset(((bucket, key),)))
    names: set[Name] = set()
    named_bucket = None
    for reading in readings:
        bucket, _, key = reading.partition("/")
        if bucket in buckets:
            named_bucket = bucket
            if key:
                names.add((bucket, key))
    if names:
        return Reading(frozenset(names))
    if named_bucket is not None:
        return Reading(problem="a Storage URL naming a bucket but no file",
                       problem_buckets=(named_bucket,))
    first = path.partition("/")[0]
    if first and unquote(first.partition("?")[0].partition("#")[0]) not in buckets:
        return NOTHING  # a bucket this service does not clean
    return Reading(problem="a Storage URL naming no file")


def _read_path(text: str, buckets: Collection[str]) -> Reading:
    readings = _readings(text)
    if readings is None:
        return Reading(problem="a path with too many ? or #")
    names: set[Name] = set()
    for reading in readings:
        key = reading.lstrip("/")
        if not key:
            continue
        names.add((None, key))
        bucket, _, rest = key.partition("/")
        if rest and bucket in buckets:
            names.add((bucket, rest))
    return Reading(frozenset(names))
