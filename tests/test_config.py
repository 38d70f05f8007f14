"""Settings fail fast with one line naming the variable; production demands a real secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import ConfigError, Settings, load_settings
from app.db import make_engine

GOOD_SECRET = "s" * 20 + "-0123456789abcdef"  # 37 characters
LEAKY = "do-not-echo-me"


def _clean_env(tmp_path: Path, **env: str) -> dict[str, str]:
    # Only what a fresh container would have: no APP_ENV=test from the suite, no .env.
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
            "DATABASE_URL": f"sqlite:///{tmp_path}/cfg.db"}
    return {**base, **env}


def _start(tmp_path: Path, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=_clean_env(tmp_path, **env),
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)


def _assert_one_line_naming(result: subprocess.CompletedProcess[str], variable: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr
    assert LEAKY not in result.stderr + result.stdout


@pytest.mark.parametrize("args", [["-c", "import app.main"], ["-m", "app", "serve"]],
                         ids=["import", "serve"])
def test_production_refuses_to_start_without_a_secret(tmp_path: Path, args: list[str]) -> None:
    _assert_one_line_naming(_start(tmp_path, args), "CRON_SECRET")


@pytest.mark.parametrize("args", [["-c", "import app.main"], ["-m", "app", "serve"]],
                         ids=["import", "serve"])
def test_production_refuses_a_short_secret(tmp_path: Path, args: list[str]) -> None:
    result = _start(tmp_path, args, CRON_SECRET=LEAKY + "x" * 10)
    _assert_one_line_naming(result, "CRON_SECRET")
    assert "32" in result.stderr


def test_vercel_production_means_production(tmp_path: Path) -> None:
    result = _start(tmp_path, ["-c", "import app.main"], APP_ENV="development",
                    VERCEL_ENV="production")
    _assert_one_line_naming(result, "CRON_SECRET")


def test_production_starts_with_a_good_secret(tmp_path: Path) -> None:
    result = _start(tmp_path, ["-c", "import app.main; print(app.main.app.title)"],
                    CRON_SECRET=GOOD_SECRET)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "VoyageSmart Cron"


def test_invalid_value_is_refused_in_a_subprocess(tmp_path: Path) -> None:
    result = _start(tmp_path, ["-m", "app", "list"], APP_ENV="development",
                    SMTP_PORT="seventy")
    _assert_one_line_naming(result, "SMTP_PORT")


@pytest.mark.parametrize(("variable", "value"), [
    ("DATABASE_URL", "mysql://root@localhost/voyagesmart"),
    ("DATABASE_URL", LEAKY),
    ("CRON_TIMEZONE", "Mars/Olympus_Mons"),
    ("ADMIN_EMAILS", f"ops@example.com, {LEAKY}"),
    ("ADMIN_EMAILS", "@example.com"),
    ("SMTP_PORT", "seventy"),
    ("SMTP_PORT", "70000"),
    ("SMTP_PORT", "0"),
    ("ENABLE_CRON_JOBS", "perhaps"),
    ("APP_ENV", "staging"),
    ("WEBHOOK_URL", "ftp://hooks.example.com"),
    ("BATCH_SIZE", "0"),
])
def test_invalid_value_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert message.startswith("invalid configuration: ")
    assert f"{variable}:" in message
    assert "\n" not in message


def test_placeholder_secret_is_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("CRON_SECRET", "changeme")
    with pytest.raises(ConfigError, match="CRON_SECRET is a placeholder"):
        load_settings(_env_file=None)


def test_short_previous_secret_is_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("CRON_SECRET", GOOD_SECRET)
    monkeypatch.setenv("CRON_SECRET_PREVIOUS", "short")
    with pytest.raises(ConfigError, match="CRON_SECRET_PREVIOUS"):
        load_settings(_env_file=None)


@pytest.mark.parametrize(("given", "used"), [
    ("postgres://u:p@db.example.supabase.co:5432/postgres",
     "postgresql+psycopg://u:p@db.example.supabase.co:5432/postgres"),
    ("postgresql://u:p@host/db?sslmode=require", "postgresql+psycopg://u:p@host/db?sslmode=require"),
    ("postgresql+psycopg2://u@host/db", "postgresql+psycopg://u@host/db"),
    ("postgresql+psycopg://u@host/db", "postgresql+psycopg://u@host/db"),
    ("sqlite:///./data/x.db", "sqlite:///./data/x.db"),
])
def test_database_urls_use_psycopg3(monkeypatch: pytest.MonkeyPatch, given: str,
                                    used: str) -> None:
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.setenv("DATABASE_URL", given)
    assert load_settings(_env_file=None).database_url == used


def test_defaults_are_production_and_embedded_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("APP_ENV", "DATABASE_URL", "VERCEL_ENV", "CRON_TIMEZONE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CRON_SECRET", GOOD_SECRET)
    settings = load_settings(_env_file=None)
    assert settings.is_production
    assert settings.database_url.startswith("sqlite:///")
    assert settings.cron_timezone == "UTC"


def test_openapi_docs_hidden_in_production(tmp_path: Path) -> None:
    from app.main import create_app

    engine = make_engine(f"sqlite:///{tmp_path}/docs.db")
    for env, expected in (("production", 404), ("development", 200)):
        settings = Settings(_env_file=None, app_env=env, cron_secret=GOOD_SECRET,  # type: ignore[call-arg]
                            database_url=f"sqlite:///{tmp_path}/docs.db")
        with TestClient(create_app(settings, engine=engine)) as client:
            assert client.get("/docs").status_code == expected
            assert client.get("/openapi.json").status_code == expected
    engine.dispose()


@pytest.mark.parametrize("variable", ["CRON_SECRET", "CRON_SECRET_PREVIOUS", "METRICS_TOKEN",
                                      "DASHBOARD_PASSWORD"])
@pytest.mark.parametrize("padding", [" ", "\n", "\t"])
@pytest.mark.parametrize("app_env", ["development", "production"])
def test_a_secret_with_surrounding_whitespace_is_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, padding: str, app_env: str
) -> None:
    monkeypatch.setenv("APP_ENV", app_env)
    monkeypatch.setenv("CRON_SECRET", GOOD_SECRET)
    monkeypatch.setenv("DASHBOARD_USER", "ops")
    monkeypatch.setenv("DASHBOARD_PASSWORD", GOOD_SECRET)
    monkeypatch.setenv(variable, GOOD_SECRET + padding)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert f"{variable}: " in message and "whitespace" in message
    assert GOOD_SECRET not in message
    monkeypatch.setenv(variable, padding + GOOD_SECRET)
    with pytest.raises(ConfigError, match=variable):
        load_settings(_env_file=None)


def test_padded_secret_is_refused_at_startup(tmp_path: Path) -> None:
    result = _start(tmp_path, ["-m", "app", "serve"], CRON_SECRET=GOOD_SECRET + "\n")
    _assert_one_line_naming(result, "CRON_SECRET")


def test_the_length_rule_does_not_count_whitespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("CRON_SECRET", "a b c d e f g h i j k l m n o p q r s")  # 37 chars
    with pytest.raises(ConfigError, match="CRON_SECRET must be at least 32"):
        load_settings(_env_file=None)


@pytest.mark.parametrize("value", ["postgresql://u@127.0.0.1:notaport/db",
                                   f"postgresql://u:{LEAKY}@127.0.0.1:99999/db",
                                   f"postgres://u:{LEAKY}@[::1/db"])
@pytest.mark.parametrize("args", [["-m", "uvicorn", "app.main:app", "--port", "1"],
                                  ["-m", "app", "serve", "--port", "1"],
                                  ["-m", "app", "migrate"]],
                         ids=["uvicorn", "serve", "migrate"])
def test_a_malformed_database_url_is_one_line(tmp_path: Path, value: str,
                                             args: list[str]) -> None:
    result = _start(tmp_path, args, APP_ENV="development", DATABASE_URL=value,
                    PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    _assert_one_line_naming(result, "DATABASE_URL")


def test_a_sqlite_path_through_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    result = _start(tmp_path, ["-m", "app", "serve"], APP_ENV="development",
                    DATABASE_URL=f"sqlite:///{tmp_path}/afile/x.db")
    _assert_one_line_naming(result, "DATABASE_URL")
    assert "not a directory" in result.stderr
