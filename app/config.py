"""Settings read from the environment and `.env`.

The variable names are the operators' interface; each field's env name is its upper-cased
name.  Validation fails fast with one line that names the offending variable.
"""

from __future__ import annotations

import functools
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_LENGTH = 32
_PLACEHOLDER_SECRETS = {"changeme", "change-me", "changethis", "secret", "your-secret-here"}


class ConfigError(SystemExit):
    """Raised instead of a traceback wall: the message names the variable at fault."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- service ----------------------------------------------------------------------
    app_env: Literal["production", "development", "test"] = "production"
    vercel_env: str | None = None
    database_url: str = "sqlite:///./data/voyagesmart-cron.db"
    cron_secret: SecretStr | None = None
    cron_secret_previous: SecretStr | None = None
    enable_cron_jobs: bool = True
    cron_timezone: str = "UTC"
    # Sent by our GitHub workflow and crontab lines so the run log can name the trigger.
    data_dir: Path = Path("./data")

    # --- mail ---------------------------------------------------------------------------
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_pass: SecretStr | None = None
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_timeout: float = Field(default=30.0, gt=0)
    mail_from: str = "VoyageSmart <no-reply@voyagesmart.app>"
    admin_emails: CsvList = Field(default_factory=list)

    # --- alerting -----------------------------------------------------------------------
    sentry_dsn: str | None = None
    webhook_url: str | None = None
    webhook_timeout: float = Field(default=10.0, gt=0)

    # --- stripe -------------------------------------------------------------------------
    stripe_secret_key: SecretStr | None = None
    stripe_api_base: str | None = None

    # --- jobs ---------------------------------------------------------------------------
    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    promo_retention_days: int = Field(default=90, ge=0)

    @property
    def is_production(self) -> bool:
        return self.app_env == "production" or (self.vercel_env or "").lower() == "production"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @field_validator("admin_emails", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("admin_emails")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        for item in value:
            if "@" not in item or item.startswith("@") or item.endswith("@"):
                raise ValueError(f"{item!r} is not an email address")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        value = value.strip()
        # Supabase and Vercel hand out postgres:// URLs; SQLAlchemy needs a driver name.
        for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        if value.startswith(("postgresql+psycopg://", "sqlite://", "sqlite+pysqlite://")):
            return value
        raise ValueError("must be a postgres://, postgresql:// or sqlite:/// URL")

    @field_validator("cron_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("webhook_url", "stripe_api_base", "sentry_dsn")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and value.strip() == "":
            return None
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("cron_secret", "cron_secret_previous", "smtp_pass", "stripe_secret_key")
    @classmethod
    def _blank_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip() == "":
            return None
        return value

    @model_validator(mode="after")
    def _secrets_in_production(self) -> Settings:
        if not self.is_production:
            return self
        for name in ("cron_secret", "cron_secret_previous"):
            secret: SecretStr | None = getattr(self, name)
            if secret is None:
                if name == "cron_secret":
                    raise ValueError(f"{name.upper()} is required in production")
                continue
            raw = secret.get_secret_value()
            if raw.lower() in _PLACEHOLDER_SECRETS:
                raise ValueError(f"{name.upper()} is a placeholder; generate a random one")
            if len(raw) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"{name.upper()} must be at least {MIN_SECRET_LENGTH} characters in production"
                )
        return self


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad setting, naming the environment variable, never echoing secrets."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) if err["loc"] else ""
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc.upper()}: {message}" if loc else message)
    return "invalid configuration: " + "; ".join(parts)


def load_settings(**overrides: Any) -> Settings:
    """Build settings or raise ConfigError (a SystemExit) whose message names the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
