"""The README and .env.example keep up with the code: every setting and job documented."""

from __future__ import annotations

import re
from pathlib import Path

from app.config import Settings
from app.core.registry import JOBS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
# Set by the platform, not by an operator.
NOT_OPERATOR_SETTINGS = {"VERCEL_ENV", "VERCEL"}


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def test_every_setting_is_in_env_example() -> None:
    documented = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE, re.MULTILINE))
    fields = {name.upper() for name in Settings.model_fields} - NOT_OPERATOR_SETTINGS
    assert sorted(fields - documented) == []


def test_every_env_example_variable_is_in_the_configuration_table() -> None:
    table = _section("Configuration")
    rows = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", table, re.MULTILINE))
    documented = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE, re.MULTILINE))
    assert sorted(documented - rows) == []


def test_every_job_is_in_the_jobs_table_with_its_schedule() -> None:
    table = _section("Jobs")
    for spec in JOBS.values():
        row = re.search(rf"^\| `{re.escape(spec.name)}` \| `([^`]+)` \| (yes|no) \|",
                        table, re.MULTILINE)
        assert row is not None, f"{spec.name} missing from the README's Jobs table"
        assert row.group(1) == spec.schedule, spec.name
        assert (row.group(2) == "yes") == spec.critical, spec.name


def test_quick_start_is_two_commands() -> None:
    block = re.search(r"## Quick start\n\n```sh\n(.*?)```", README, re.DOTALL)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["python3 dev.py serve", "python3 dev.py test"]
