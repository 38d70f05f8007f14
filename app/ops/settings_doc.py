"""docs/settings.md, generated from the `Settings` class.

The class is the one place a setting is declared: its field gives the variable (upper-cased),
the default and the bounds, its docstring the description, and the `# --- group ---` comment
above it the section.  `python3 dev.py docs` (or `python -m app.ops.settings_doc --write`)
rewrites the file; tests/test_readme.py fails when the committed file drifts from the class.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import typing
from pathlib import Path

import annotated_types
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from app.config import Settings

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "settings.md"

_INTRO = """\
# Settings

<!-- Generated from app/config.py by `python3 dev.py docs`; do not edit by hand. -->

Settings come from the environment and from `.env` (pydantic-settings; the environment wins).
Every variable is also in `.env.example`.  An empty `VAR=` line means unset.  An invalid value
stops the service at startup with one line naming the variable, for example
`invalid configuration: CRON_SECRET must be at least 32 characters in production`.

Production (`APP_ENV=production`, the default, or `VERCEL_ENV=production`) requires
`CRON_SECRET`: at least 32 characters (whitespace does not count) and not a placeholder; the
OpenAPI docs (`/docs`, `/openapi.json`) are not served there.  With `SMTP_HOST` set, production
also requires `UNSUBSCRIBE_SECRET` (the same rules, and not equal to `CRON_SECRET`) and
`SERVICE_BASE_URL`: they sign and address the unsubscribe link of every user email.  In every
environment a `CRON_SECRET`, `CRON_SECRET_PREVIOUS`, `METRICS_TOKEN` or `DASHBOARD_PASSWORD`
with leading or trailing whitespace (a newline from `echo`, a pasted space) is refused: the
token a client sends is compared without it, so such a secret could never authenticate.

Every brake (`*_BRAKE_SHARE` with `*_BRAKE_COUNT`) trips only when a run would touch more than
the count *and* more than the share; see [jobs.md](jobs.md#brakes-archives-and-restore).
"""

_HEADER = re.compile(r"^\s*# --- ([^-]+?) -+\s*$")
_FIELD = re.compile(r"^    (\w+): ")
_BOUNDS = (
    (annotated_types.Ge, "≥"), (annotated_types.Gt, ">"),
    (annotated_types.Le, "≤"), (annotated_types.Lt, "<"),
)


def _groups() -> dict[str, str]:
    """Each field's section, from the `# --- name ---` comment above it in the class."""
    group, found = "", {}
    for line in inspect.getsourcelines(Settings)[0]:
        if header := _HEADER.match(line):
            group = header.group(1).strip()
        elif (field := _FIELD.match(line)) and field.group(1) in Settings.model_fields:
            found[field.group(1)] = group
    return found


def _default(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    if value is None or value is PydanticUndefined or value == [] or value == {}:
        return ""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, list):
        text = ",".join(value)
    elif isinstance(value, Path) and not value.is_absolute():
        text = f"./{value}"
    else:
        text = str(value)
    return f"`{text}`"


def _values(info: FieldInfo) -> str:
    """What the variable accepts, when the type says more than its default does."""
    choices = [arg for arg in typing.get_args(info.annotation) if isinstance(arg, str)]
    if typing.get_origin(info.annotation) is typing.Literal:
        return " \\| ".join(choices)
    bounds = [f"{sign} {getattr(meta, type(meta).__name__.lower())}"
              for meta in info.metadata for kind, sign in _BOUNDS if isinstance(meta, kind)]
    return ", ".join(bounds)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    groups = _groups()
    sections: dict[str, list[str]] = {}
    for name, info in Settings.model_fields.items():
        sections.setdefault(groups[name], []).append(
            f"| `{name.upper()}` | {_default(info)} | {_values(info)} | "
            f"{_cell(info.description or 'See the row above.')} |")
    parts = [_INTRO]
    for group, rows in sections.items():
        parts.append(f"\n## {group[0].upper()}{group[1:]}\n\n"
                     "| Variable | Default | Accepts | Meaning |\n|---|---|---|---|\n"
                     + "\n".join(rows) + "\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {DOC_PATH}")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = DOC_PATH.read_text() if DOC_PATH.exists() else ""
        if current != text:
            print(f"{DOC_PATH} is stale: run python3 dev.py docs", file=sys.stderr)
            return 1
        return 0
    if args.write:
        DOC_PATH.parent.mkdir(exist_ok=True)
        DOC_PATH.write_text(text)
        print(f"wrote {DOC_PATH}")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
