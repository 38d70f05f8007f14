"""The README, docs/ and .env.example keep up with the code: every setting and job
documented, the settings page generated from the class, every path named still there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.config import Settings
from app.core.registry import JOBS
from app.ops import settings_doc

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
DOCS = ROOT / "docs"
# Set by the platform, not by an operator.
NOT_OPERATOR_SETTINGS = {"VERCEL_ENV", "VERCEL"}


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_every_setting_is_in_env_example() -> None:
    documented = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE, re.MULTILINE))
    fields = {name.upper() for name in Settings.model_fields} - NOT_OPERATOR_SETTINGS
    assert sorted(fields - documented) == []


def test_every_env_example_variable_is_in_the_configuration_table() -> None:
    tables = (DOCS / "settings.md").read_text()
    rows = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", tables, re.MULTILINE))
    documented = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE, re.MULTILINE))
    assert sorted(documented - rows) == []


def test_settings_doc_is_generated_from_the_settings_class() -> None:
    committed = (DOCS / "settings.md").read_text()
    assert committed == settings_doc.render(), "docs/settings.md is stale: python3 dev.py docs"
    for name, info in Settings.model_fields.items():
        assert info.description, f"{name.upper()} has no docstring in app/config.py"


def test_every_job_is_in_the_jobs_table_with_its_schedule() -> None:
    table = _section((DOCS / "jobs.md").read_text(), "Schedule")
    for spec in JOBS.values():
        row = re.search(rf"^\| `{re.escape(spec.name)}` \| `([^`]+)` \| (yes|no) \|",
                        table, re.MULTILINE)
        assert row is not None, f"{spec.name} missing from the jobs table of docs/jobs.md"
        assert row.group(1) == spec.schedule, spec.name
        assert (row.group(2) == "yes") == spec.critical, spec.name


def test_every_job_has_its_own_section_in_jobs_doc() -> None:
    headings = re.findall(r"^## (\S+)$", (DOCS / "jobs.md").read_text(), re.MULTILINE)
    assert sorted(set(JOBS) - set(headings)) == []


def test_quick_start_is_two_commands() -> None:
    block = re.search(r"## Quick start\n\n```sh\n(.*?)```", README, re.DOTALL)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["python3 dev.py serve", "python3 dev.py test"]


def test_readme_is_short_and_links_every_doc() -> None:
    assert len(README.splitlines()) <= 200
    for name in ("deploy", "jobs", "settings", "architecture"):
        assert f"(docs/{name}.md)" in README, name


@pytest.mark.parametrize("doc", ["README.md", "docs/jobs.md", "docs/deploy.md",
                                 "docs/architecture.md", "docs/settings.md"])
def test_every_path_a_doc_names_exists(doc: str) -> None:
    text = (ROOT / doc).read_text()
    named = r"(?<![\w/])((?:app|tests|deploy|bench|migrations)/[\w./-]+\.\w+)"
    paths = set(re.findall(named, text))
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert missing == [], f"{doc} names files that do not exist"


def _code_map() -> set[str]:
    """The modules docs/architecture.md's code map names, as paths under app/."""
    block = re.search(r"## Code map\n\n```\n(.*?)```",
                      (DOCS / "architecture.md").read_text(), re.DOTALL)
    assert block is not None
    named, package = set(), ""
    for line in block.group(1).splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            entry = line.split()[0]
            package = entry if entry.endswith("/") else ""
            named.add(entry)
        elif line.startswith("    ") and package:
            names = re.match(r"^\s+([\w.]+\.py(?:, [\w.]+\.py)*)", line)
            if names:
                named.update(package + n for n in names.group(1).split(", "))
    return named


def test_architecture_code_map_names_every_module_and_no_other() -> None:
    named = _code_map()
    app_dir = ROOT / "app"
    modules = set()
    for path in app_dir.rglob("*.py"):
        relative = path.relative_to(app_dir).as_posix()
        if path.name in ("__init__.py", "__main__.py"):
            continue
        # One line per module, except the packages that hold one module per job / owner.
        modules.add(relative.split("/")[0] + "/" if relative.startswith(("jobs/", "models/"))
                    else relative)
    assert sorted(modules - named) == [], "missing from the code map"
    assert sorted(p for p in named - modules if not (app_dir / p).exists()) == [], \
        "named in the code map but gone"
