"""The one Jinja environment: user emails, the monthly report, the dashboard and the
unsubscribe page all render from `app/templates/` through `ENV`.

* `.html` templates are autoescaped; text templates (`.txt`: subjects, plain bodies, the
  report's text part) are not, since escaping `&` as `&amp;` there would show to the reader.
* `StrictUndefined`: a name missing from a template's context fails the render instead of
  printing nothing, in an email as on a page.
* `trim_blocks`/`lstrip_blocks` keep block tags from leaving blank lines in text bodies;
  `keep_trailing_newline` keeps a text body's last line end, which the email carries.
* `auto_reload=False`: templates ship with the code, so no `stat()` per message.

The web pages use it through `Jinja2Templates(env=ENV)` (starlette adds its `url_for` to
the globals; the dashboard adds its two formatting helpers).

User emails are rendered in the recipient's language when a template exists for it:
`email/<template>/<language>/` holds `subject.txt`, `body.txt` and `body.html`, chosen from
`users.preferences["language"]` (or `"locale"`), English otherwise.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2

LANGUAGE_KEYS = ("language", "locale")
DEFAULT_LANGUAGE = "en"

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("app", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,
)


@functools.cache
def template(name: str) -> jinja2.Template:
    return ENV.get_template(name)


@functools.cache
def template_languages(name: str) -> frozenset[str]:
    """The languages the user email `name` is written in."""
    prefix = f"email/{name}/"
    return frozenset(
        path[len(prefix):].split("/", 1)[0]
        for path in ENV.list_templates()
        if path.startswith(prefix) and path.endswith("/body.txt")
    )


def resolve_language(preferences: Mapping[str, Any] | None, name: str) -> str:
    """The user's language when a template exists for it (`pt-BR` -> `pt`), else English."""
    available = template_languages(name)
    for key in LANGUAGE_KEYS:
        raw = (preferences or {}).get(key)
        if isinstance(raw, str) and raw.strip():
            code = re.split(r"[-_]", raw.strip().lower(), maxsplit=1)[0]
            if code in available:
                return code
    return DEFAULT_LANGUAGE


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def render(name: str, language: str, context: Mapping[str, Any]) -> Rendered:
    """The user email `name` in `language` (English when it has no such template)."""
    if language not in template_languages(name):
        language = DEFAULT_LANGUAGE
    base = f"email/{name}/{language}/"
    return Rendered(
        subject=" ".join(template(base + "subject.txt").render(context).split()),
        text=template(base + "body.txt").render(context),
        html=template(base + "body.html").render(context),
    )
