"""Every place VoyageSmart links a stored file: the sources storage-cleanup reads.

One line per source; a new place that stores a file URL is one more line.  `kind` says how
the column holds it:

- `url`: the column is a URL (`getPublicUrl(...).publicUrl`, `…/storage/v1/object/public/
  <bucket>/<key>`);
- `jsonb`: the column is a JSON array of objects with a `url` (the app's `{name, url,
  type}` documents of accommodations and transportation).

`buckets` names the buckets the source can point into: when the source cannot be read (its
table or column is missing), nothing is deleted from those buckets in that run.  `None`
means any bucket (no code tells us where these files go).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from app.requirements import Uses, uses


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


def urls_in(kind: str, value: Any) -> Iterator[str]:
    """The URL strings a column value holds."""
    if value is None:
        return
    if kind == "url":
        if isinstance(value, str):
            yield value
        return
    if isinstance(value, str):  # a JSON document stored as text
        import json

        try:
            value = json.loads(value)
        except ValueError:
            return
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            yield item["url"]
