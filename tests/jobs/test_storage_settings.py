"""storage-cleanup's settings are refused at startup when they would match too much: a
prefix must be a folder (end in `/`; `temp` would also match `templates/`), and the
quarantine must not sit inside the temporary uploads or contain them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import ConfigError, load_settings


@pytest.mark.parametrize("variable, value", [
    ("STORAGE_TEMP_PREFIX", "temp"),
    ("STORAGE_TEMP_PREFIX", "uploads/tmp"),
    ("STORAGE_TEMP_PREFIX", "/"),
    ("STORAGE_QUARANTINE_PREFIX", ".quarantine"),
    ("STORAGE_QUARANTINE_PREFIX", ""),
    ("STORAGE_QUARANTINE_PREFIX", "tmp/quarantine/"),  # inside the temp uploads
    ("STORAGE_TEMP_PREFIX", ".quarantine/tmp/"),  # inside the quarantine
    ("STORAGE_QUARANTINE_RETENTION_DAYS", "0"),
    ("STORAGE_CLEANUP_DELETE_BRAKE_SHARE", "0"),
    ("STORAGE_CLEANUP_DELETE_BRAKE_SHARE", "1.5"),
    ("STORAGE_CLEANUP_DELETE_BRAKE_COUNT", "-1"),
])
def test_a_bad_storage_setting_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                    variable: str, value: str) -> None:
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert variable in message


def test_a_prefix_without_its_slash_says_why() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, app_env="development", storage_temp_prefix="temp")
    assert str(caught.value) == (
        "invalid configuration: STORAGE_TEMP_PREFIX: must end in / (write temp/): 'temp' "
        "would also match every key that merely begins with it, e.g. temp-other/…")


def test_folder_prefixes_are_accepted() -> None:
    settings = load_settings(_env_file=None, app_env="development",
                             storage_temp_prefix="/uploads/tmp/",
                             storage_quarantine_prefix="trash/")
    assert (settings.storage_temp_prefix, settings.storage_quarantine_prefix) == (
        "uploads/tmp/", "trash/")


def test_the_service_refuses_to_start_with_a_temp_prefix_without_slash(tmp_path: Path
                                                                      ) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "APP_ENV": "development", "DATABASE_URL": f"sqlite:///{tmp_path}/cfg.db",
           "PYTHONPATH": str(Path.cwd()), "STORAGE_TEMP_PREFIX": "temp"}
    result = subprocess.run([sys.executable, "-m", "app", "list"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("invalid configuration: STORAGE_TEMP_PREFIX: must end in /")
    assert "Traceback" not in result.stderr
