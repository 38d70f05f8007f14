"""Settings read from the environment and `.env`.

The variable names are the operators' interface; each field's env name is its upper-cased
name.  Validation fails fast with one line that names the offending variable.
"""

from __future__ import annotations

import functools
import ipaddress
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_LENGTH = 32
# Secrets a client presents (bearer tokens, the dashboard password): compared as sent.
_PRESENTED_SECRETS = frozenset({"cron_secret", "cron_secret_previous", "metrics_token",
                                "dashboard_password"})
MIN_INACTIVITY_DAYS = 30
_PLACEHOLDER_SECRETS = {"changeme", "change-me", "changethis", "secret", "your-secret-here"}
# VoyageSmart's subscription tiers, cheapest first (the order defines up/downgrades).
BILLING_TIERS = ("free", "premium", "ai")


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
    # auto = `transaction` on Supavisor's port 6543 (docs/serverless.md).
    database_pooler: Literal["auto", "transaction", "session", "none"] = "auto"
    vercel: bool = False  # VERCEL=1 in Vercel's functions
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
    # Seconds the failure alerts (email and webhook, sent side by side) may add to a failed
    # run's answer, however dead their servers are.
    alert_timeout: float = Field(default=10.0, gt=0, le=120)
    # Alerts go out per incident (app/observe/alerts.py): the webhook body's form, and the
    # hours after which a job still failing, overdue or stuck is reminded once (0: never).
    webhook_format: Literal["json", "slack", "discord"] = "json"
    alert_reminder_hours: float = Field(default=24.0, ge=0, le=8760)

    # --- stripe -------------------------------------------------------------------------
    stripe_secret_key: SecretStr | None = None
    stripe_api_base: str | None = None

    # --- billing ------------------------------------------------------------------------
    # Requests/s this service allows itself on the Stripe account; unset = 80 for a live
    # key, 20 for a test key (Stripe allows 100 and 25; the rest is left to VoyageSmart).
    stripe_rate_limit: float | None = Field(default=None, gt=0, le=100)
    stripe_timeout: float = Field(default=20.0, gt=0)
    # SDK retries of connection errors, 409 and 5xx (the SDK never retries 429 itself).
    stripe_max_network_retries: int = Field(default=2, ge=0, le=10)
    # Our own retries of a 429, with backoff, before that subscription counts as failed.
    stripe_rate_limit_retries: int = Field(default=5, ge=0, le=20)
    stripe_concurrency: int = Field(default=8, ge=1, le=64)
    stripe_sync_strategy: Literal["auto", "list", "retrieve"] = "auto"
    # Stripe price, plan or product id -> tier: "price_123:premium,prod_456:ai".
    stripe_tier_map: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # Canceled subscriptions stay checked this long after their cancellation.
    subscription_sync_lookback_days: int = Field(default=30, ge=0)
    report_retention_months: int = Field(default=24, ge=1)
    # Brakes (app/core/safety.py): a run that would lower more subscriptions than the count AND
    # than the share of those it checked (sync) or of the paid-tier rows (expiry) changes
    # nothing and ends as error.
    subscription_sync_downgrade_brake_share: float = Field(default=0.1, gt=0, le=1)
    subscription_sync_downgrade_brake_count: int = Field(default=10, ge=0)
    subscription_expiry_downgrade_brake_share: float = Field(default=0.1, gt=0, le=1)
    subscription_expiry_downgrade_brake_count: int = Field(default=100, ge=0)

    @property
    def stripe_requests_per_second(self) -> float:
        if self.stripe_rate_limit is not None:
            return self.stripe_rate_limit
        key = self.stripe_secret_key.get_secret_value() if self.stripe_secret_key else ""
        return 80.0 if "_live_" in key else 20.0

    @field_validator("stripe_rate_limit", mode="before")
    @classmethod
    def _blank_rate(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("stripe_tier_map", mode="before")
    @classmethod
    def _tier_map(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        mapping: dict[str, str] = {}
        for item in _split_csv(value):
            key, sep, tier = item.rpartition(":")
            if not sep or not key.strip() or tier.strip() not in BILLING_TIERS:
                raise ValueError(f"{item!r} is not <stripe id>:<tier> with a tier among "
                                 f"{', '.join(BILLING_TIERS)}")
            mapping[key.strip()] = tier.strip()
        return mapping

    # --- jobs ---------------------------------------------------------------------------
    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    promo_retention_days: int = Field(default=90, ge=0)
    # promo-cleanup's brakes (app/core/safety.py): a step stops the run when it would touch more
    # than the count AND more than the share (of all codes; of the active ones to deactivate).
    promo_cleanup_delete_brake_share: float = Field(default=0.1, gt=0, le=1)
    promo_cleanup_delete_brake_count: int = Field(default=100, ge=0)
    promo_cleanup_deactivate_brake_share: float = Field(default=0.2, gt=0, le=1)
    promo_cleanup_deactivate_brake_count: int = Field(default=1000, ge=0)
    # true: `promo_code_redemptions` holds every redemption, so promo-cleanup may lower a
    # `used_count` above its rows (braked); false: counts are only ever raised.
    promo_redemption_rows_complete: bool = False
    promo_cleanup_lower_brake_share: float = Field(default=0.05, gt=0, le=1)
    promo_cleanup_lower_brake_count: int = Field(default=10, ge=0)
    # Archived rows (cron_archived_row) are kept this long, then purged by promo-cleanup:
    # past it, a deletion is final.
    archive_retention_days: int = Field(default=30, ge=1, le=3650)

    # --- notifications ----------------------------------------------------------------
    # Links in user emails to VoyageSmart itself point here (trip pages, the app).
    app_base_url: str = "https://voyagesmart.app"
    reminder_days_ahead: int = Field(default=7, ge=1, le=365)
    # Below a month, "inactive" catches people between two trips: a re-engagement email
    # to them is spam.
    inactivity_days: int = Field(default=90, ge=MIN_INACTIVITY_DAYS, le=3650)
    # Per message: attempts on a transient SMTP failure (4xx, disconnect, timeout), each
    # on a fresh connection, waiting exponentially from MAIL_RETRY_WAIT seconds.
    mail_max_attempts: int = Field(default=4, ge=1, le=20)
    mail_retry_wait: float = Field(default=1.0, ge=0, le=60)
    # Wait for PostgreSQL's WAL flush on every email's hand-over record (app/mail/handover.py).
    mail_durable_claims: bool = False

    # This service's own public URL: the one-click unsubscribe links of user emails
    # (SERVICE_BASE_URL/unsubscribe?token=...) point here.  Not APP_BASE_URL, which is
    # VoyageSmart's.  Outside production, default http://127.0.0.1:8000.  Alerts link to
    # the dashboard here when it is set.
    service_base_url: str | None = None
    # Signs the unsubscribe links (HMAC-SHA256); the previous one keeps old emails' links
    # working during a rotation.  Required in production when SMTP_HOST is set.
    unsubscribe_secret: SecretStr | None = None
    unsubscribe_secret_previous: SecretStr | None = None
    # Requests to /unsubscribe per client address per minute (invalid links count against
    # AUTH_FAILURE_LIMIT instead).
    unsubscribe_rate_limit: int = Field(default=30, ge=1, le=10_000)
    # true: user-engagement emails only users with a consent recorded in
    # cron_email_consent (`voyagesmart-cron consent import`).
    engagement_require_consent: bool = False
    # Brakes on mass email (app/core/safety.py): a run trips above BOTH the count and the share.
    # user-engagement: share of all users one run may email.
    user_engagement_send_brake_share: float = Field(default=0.25, gt=0, le=1)
    user_engagement_send_brake_count: int = Field(default=100, ge=0)
    # trip-reminders: the share is a multiple of the usual daily volume, the median of the
    # last TRIP_REMINDERS_BRAKE_BASELINE_DAYS target days (days without reminders count as
    # 0; with no history only the count applies).
    trip_reminders_send_brake_share: float = Field(default=3.0, gt=0, le=1000)
    trip_reminders_send_brake_count: int = Field(default=1000, ge=0)
    trip_reminders_brake_baseline_days: int = Field(default=28, ge=1, le=366)

    @field_validator("app_base_url", "service_base_url")
    @classmethod
    def _public_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value.strip() == "" and info.field_name == "service_base_url":
            return None
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("unsubscribe_secret", "unsubscribe_secret_previous")
    @classmethod
    def _blank_unsubscribe_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip() == "":
            return None
        return value

    @model_validator(mode="after")
    def _unsubscribe_links(self) -> Settings:
        """In production the links of user emails must be signed by a real, dedicated
        secret and point at this service's public address."""
        if not self.is_production:
            return self
        for name in ("unsubscribe_secret", "unsubscribe_secret_previous"):
            secret: SecretStr | None = getattr(self, name)
            if secret is None:
                continue
            raw = secret.get_secret_value()
            if raw.lower() in _PLACEHOLDER_SECRETS:
                raise ValueError(f"{name.upper()} is a placeholder; generate a random one")
            if len(raw) < MIN_SECRET_LENGTH:
                raise ValueError(f"{name.upper()} must be at least {MIN_SECRET_LENGTH} "
                                 "characters in production")
            if self.cron_secret is not None and raw == self.cron_secret.get_secret_value():
                raise ValueError(f"{name.upper()} must differ from CRON_SECRET")
        if self.smtp_host:
            if self.unsubscribe_secret is None:
                raise ValueError("UNSUBSCRIBE_SECRET is required in production when "
                                 "SMTP_HOST is set: it signs the unsubscribe link of every "
                                 "user email")
            if self.service_base_url is None:
                raise ValueError("SERVICE_BASE_URL is required in production when SMTP_HOST "
                                 "is set: the unsubscribe links of user emails point there")
        return self

    @property
    def public_base_url(self) -> str:
        """Where this service answers its public links (the unsubscribe endpoint)."""
        return self.service_base_url or "http://127.0.0.1:8000"

    # --- database maintenance ---------------------------------------------------------
    # Seconds a maintenance statement waits for a lock before the run gives up (so it
    # never queues application traffic behind it), and the longest one statement may run.
    maintenance_lock_timeout: float = Field(default=5.0, gt=0, le=3600)
    maintenance_statement_timeout: float = Field(default=1800.0, gt=0, le=86400)
    # A table is vacuumed when its dead tuples reach both the count and the fraction of
    # live tuples; analyzed when its modifications since the last analyze do.
    maintenance_vacuum_min_dead: int = Field(default=1000, ge=0)
    maintenance_vacuum_dead_fraction: float = Field(default=0.1, ge=0, le=10)
    maintenance_analyze_mod_fraction: float = Field(default=0.1, ge=0, le=10)
    maintenance_vacuum_all: bool = False
    # An index larger than this whose estimated bloat reaches the fraction is rebuilt.
    maintenance_reindex_min_bytes: int = Field(default=8 * 1024 * 1024, ge=0)
    maintenance_reindex_bloat_fraction: float = Field(default=0.5, gt=0, lt=1)
    # off | concurrently | blocking (a plain REINDEX DATABASE locks writes: maintenance
    # windows only).
    maintenance_reindex_database: Literal["off", "concurrently", "blocking"] = "off"

    # --- storage ----------------------------------------------------------------------
    storage_backend: Literal["local", "s3"] = "local"
    storage_local_root: Path | None = None  # default: DATA_DIR/storage
    storage_buckets: CsvList = Field(
        default_factory=lambda: ["trip-media", "trip-documents"]
    )
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    storage_temp_prefix: str = "tmp/"
    storage_temp_max_age_hours: float = Field(default=24.0, gt=0)
    storage_orphan_min_age_days: float = Field(default=30.0, gt=0)
    storage_media_min_age_days: float = Field(default=180.0, gt=0)
    storage_recompress_min_bytes: int = Field(default=1024 * 1024, ge=1)
    storage_recompress_min_saving: float = Field(default=0.2, gt=0, lt=1)
    storage_recompress_quality: int = Field(default=80, ge=1, le=95)
    # What a run removes goes to this prefix of its bucket first, for this many days; then
    # it is deleted for good.
    storage_quarantine_prefix: str = ".quarantine/"
    storage_quarantine_retention_days: float = Field(default=7.0, gt=0)
    # The brake on moving objects out of a bucket: a run may move up to the count, or up
    # to the share of the bucket, whichever is larger (app/core/safety.py).
    storage_cleanup_delete_brake_share: float = Field(default=0.1, gt=0, le=1)
    storage_cleanup_delete_brake_count: int = Field(default=20, ge=0)

    # --- operators ----------------------------------------------------------------------
    # Bearer token for GET /metrics; without it the cron secret is accepted there.
    metrics_token: SecretStr | None = None
    # HTTP Basic credentials of /dashboard; the dashboard does not exist unless both are set.
    dashboard_user: str | None = None
    dashboard_password: SecretStr | None = None
    # Comma-separated CIDRs allowed to call /api/cron/*; empty = every address.
    cron_ip_allowlist: CsvList = Field(default_factory=list)
    # Comma-separated CIDRs of proxies whose X-Forwarded-For is believed.
    trusted_proxies: CsvList = Field(default_factory=list)
    # Authenticated cron calls per client address per window (a leaked secret cannot
    # hammer the database), and failed authentications per address per window.
    cron_rate_limit: int = Field(default=30, ge=1)
    cron_rate_window_seconds: int = Field(default=60, ge=1, le=86400)
    auth_failure_limit: int = Field(default=10, ge=1)
    auth_failure_window_seconds: int = Field(default=900, ge=1, le=86400)
    audit_retention_days: int = Field(default=90, ge=1)
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("cron_ip_allowlist", "trusted_proxies", mode="before")
    @classmethod
    def _cidr_csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("cron_ip_allowlist", "trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR range") from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value


    @model_validator(mode="after")
    def _dashboard_credentials(self) -> Settings:
        user = (self.dashboard_user or "").strip() or None
        self.dashboard_user = user
        if (user is None) != (self.dashboard_password is None):
            raise ValueError("DASHBOARD_USER and DASHBOARD_PASSWORD must be set together")
        if self.is_production:
            for name in ("dashboard_password", "metrics_token"):
                secret: SecretStr | None = getattr(self, name)
                if secret is not None and _length(secret) < 16:
                    raise ValueError(f"{name.upper()} must be at least 16 characters "
                                     "in production")
        return self

    @property
    def dashboard_enabled(self) -> bool:
        return self.dashboard_user is not None and self.dashboard_password is not None

    @property
    def is_production(self) -> bool:
        return self.app_env == "production" or (self.vercel_env or "").lower() == "production"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def storage_root(self) -> Path:
        return self.storage_local_root or self.data_dir / "storage"

    @field_validator("storage_buckets", mode="before")
    @classmethod
    def _storage_buckets_csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("storage_buckets")
    @classmethod
    def _storage_bucket_names(cls, value: list[str]) -> list[str]:
        for name in value:
            # One path segment: the name is a directory on the local backend.
            if "/" in name or "\\" in name or name in {".", ".."}:
                raise ValueError(f"{name!r} is not a bucket name")
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _s3_endpoint(cls, value: str | None) -> str | None:
        if value is not None and value.strip() == "":
            return None
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("s3_secret_access_key")
    @classmethod
    def _s3_blank_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip() == "":
            return None
        return value

    @field_validator("storage_temp_prefix", "storage_quarantine_prefix")
    @classmethod
    def _folder_prefix(cls, value: str) -> str:
        # An empty prefix would make every object a temporary upload; one without its
        # slash would match more than its folder (`temp` is also `templates/...`).
        if not value.strip("/"):
            raise ValueError("must name a folder, e.g. tmp/")
        value = value.lstrip("/")
        if not value.endswith("/"):
            raise ValueError(f"must end in / (write {value}/): {value!r} would also match "
                             f"every key that merely begins with it, e.g. {value}-other/…")
        return value

    @model_validator(mode="after")
    def _storage_prefixes_apart(self) -> Settings:
        temp, quarantine = self.storage_temp_prefix, self.storage_quarantine_prefix
        if temp.startswith(quarantine) or quarantine.startswith(temp):
            raise ValueError(f"STORAGE_QUARANTINE_PREFIX ({quarantine}) and "
                             f"STORAGE_TEMP_PREFIX ({temp}) must not contain each other: "
                             "quarantined objects would be taken for temporary uploads")
        return self

    @model_validator(mode="after")
    def _s3_credentials(self) -> Settings:
        if bool(self.s3_access_key_id) != bool(self.s3_secret_access_key):
            raise ValueError("S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY go together")
        return self

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
                value = "postgresql+psycopg://" + value[len(prefix) :]
        if not value.startswith(("postgresql+psycopg://", "sqlite://", "sqlite+pysqlite://")):
            raise ValueError("must be a postgres://, postgresql:// or sqlite:/// URL")
        _check_database_url(value)
        return value

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

    @field_validator("cron_secret", "cron_secret_previous", "metrics_token",
                     "dashboard_password", "smtp_pass", "stripe_secret_key")
    @classmethod
    def _blank_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        if raw.strip() == "":
            return None
        if info.field_name in _PRESENTED_SECRETS and raw != raw.strip():
            # A client's token is stripped before it is compared, so a padded secret (a
            # newline from `echo`, a pasted space) could never authenticate.
            raise ValueError("has leading or trailing whitespace (a newline or a space); "
                             "remove it")
        return value

    @model_validator(mode="after")
    def _vercel(self) -> Settings:
        """A Vercel function's files are gone after the invocation (APP_ENV=test: the
        suite's stand-in for Vercel's runtime, on a local disk).  docs/serverless.md"""
        if not self.vercel or self.app_env == "test":
            return self
        if self.is_sqlite:
            raise ValueError("DATABASE_URL: SQLite loses its data between Vercel invocations "
                             "(VERCEL=1); use a PostgreSQL URL through the Supabase pooler "
                             "(postgres://…pooler.supabase.com:6543/postgres)")
        if not self.smtp_host:
            raise ValueError("SMTP_HOST is required on Vercel (VERCEL=1): without it email "
                             "goes to a local .eml outbox, lost after each invocation")
        return self

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
            if _length(secret) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"{name.upper()} must be at least {MIN_SECRET_LENGTH} characters in production"
                )
        return self


def _check_database_url(value: str) -> None:
    """What the engine would trip over later, said now (never echoing the URL: it may
    hold a password)."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(value)
    except ValueError:
        # SQLAlchemy parses the port as a number and says only "invalid literal for int()".
        raise ValueError("is not a valid URL (is the port a number? brackets around an "
                         "IPv6 host?)") from None
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError(f"port {url.port} is out of range")
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        # The file and its directory may not exist yet (`migrate` creates them), but a
        # path through a regular file can never become a database.
        for parent in Path(url.database).parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ValueError(f"{parent} is not a directory")
                break


def _length(secret: SecretStr) -> int:
    """Characters of a secret that add to its strength: whitespace does not count."""
    return len("".join(secret.get_secret_value().split()))


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
