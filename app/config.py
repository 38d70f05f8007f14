"""Settings read from the environment and `.env`.

The variable names are the operators' interface; each field's env name is its upper-cased
name.  Validation fails fast with one line that names the offending variable.

How a kind of variable is read (comma-separated lists, blank-means-unset secrets, URLs,
folder prefixes) is said once, by the `Annotated` types below; a field only names its type.
Each field's docstring is its documentation: docs/settings.md is generated from them
(app/ops/settings_doc.py), which is why this module is longer than most.
"""

from __future__ import annotations

import functools
import ipaddress
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_LENGTH = 32
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


def _blank_is_unset(value: Any) -> Any:
    """An empty `VAR=` line in `.env` means the setting is not set."""
    if isinstance(value, SecretStr):
        return None if value.get_secret_value().strip() == "" else value
    return None if isinstance(value, str) and value.strip() == "" else value


def _unpadded(value: SecretStr | None) -> SecretStr | None:
    # A client's token is stripped before it is compared, so a padded secret (a newline
    # from `echo`, a pasted space) could never authenticate.
    if value is not None and value.get_secret_value() != value.get_secret_value().strip():
        raise ValueError("has leading or trailing whitespace (a newline or a space); "
                         "remove it")
    return value


def _http_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value


def _without_trailing_slash(value: str | None) -> str | None:
    return value.rstrip("/") if value is not None else None


def _each(check: Callable[[str], None]) -> AfterValidator:
    def validate(items: list[str]) -> list[str]:
        for item in items:
            check(item)
        return items
    return AfterValidator(validate)


def _cidr(item: str) -> None:
    try:
        ipaddress.ip_network(item, strict=False)
    except ValueError:
        raise ValueError(f"{item!r} is not an IP address or CIDR range") from None


def _email(item: str) -> None:
    if "@" not in item or item.startswith("@") or item.endswith("@"):
        raise ValueError(f"{item!r} is not an email address")


def _bucket(name: str) -> None:
    # One path segment: the name is a directory on the local backend.
    if "/" in name or "\\" in name or name in {".", ".."}:
        raise ValueError(f"{name!r} is not a bucket name")


def _folder_prefix(value: str) -> str:
    # An empty prefix would make every object a temporary upload; one without its
    # slash would match more than its folder (`temp` is also `templates/...`).
    if not value.strip("/"):
        raise ValueError("must name a folder, e.g. tmp/")
    value = value.lstrip("/")
    if not value.endswith("/"):
        raise ValueError(f"must end in / (write {value}/): {value!r} would also match "
                         f"every key that merely begins with it, e.g. {value}-other/…")
    return value


# The setting types.  Each says once how its kind of variable is read; a field only names
# its type.
CsvList = Annotated[list[str], NoDecode, BeforeValidator(_split_csv)]
"""Comma-separated values; blanks and surrounding spaces dropped."""
CidrList = Annotated[CsvList, _each(_cidr)]
EmailList = Annotated[CsvList, _each(_email)]
BucketList = Annotated[CsvList, _each(_bucket)]
Secret = Annotated[SecretStr | None, AfterValidator(_blank_is_unset)]
"""A secret the service uses; blank means unset."""
PresentedSecret = Annotated[Secret, AfterValidator(_unpadded)]
"""A secret a client presents (bearer token, password): compared as sent, so no padding."""
OptionalUrl = Annotated[str | None, AfterValidator(_blank_is_unset), AfterValidator(_http_url)]
"""An http(s) URL; blank means unset."""
BaseUrl = Annotated[str, AfterValidator(_http_url), AfterValidator(_without_trailing_slash)]
"""An http(s) URL links are built on: no trailing slash."""
OptionalBaseUrl = Annotated[OptionalUrl, AfterValidator(_without_trailing_slash)]
OptionalFloat = Annotated[float | None, BeforeValidator(_blank_is_unset)]
FolderPrefix = Annotated[str, AfterValidator(_folder_prefix)]
"""A key prefix naming a folder of a bucket: ends in `/`, never the whole bucket."""


# A Vercel function's default max duration (Hobby), seconds: what an invocation may last
# there unless FUNCTION_MAX_DURATION says otherwise (vercel.json's `maxDuration`).
VERCEL_MAX_DURATION = 300.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False,
        # Each field's docstring is its description: docs/settings.md is generated from them.
        use_attribute_docstrings=True,
    )

    # --- service ----------------------------------------------------------------------
    app_env: Literal["production", "development", "test"] = "production"
    """VERCEL_ENV=production also means production."""
    vercel_env: str | None = None
    """Set by Vercel (production, preview, development); production there means
    production here."""
    database_url: str = "sqlite:///./data/voyagesmart-cron.db"
    """Default: a SQLite file under ./data/.  postgres:// and postgresql:// URLs
    (Supabase, Vercel) are accepted and use psycopg 3."""
    database_pooler: Literal["auto", "transaction", "session", "none"] = "auto"
    """The connection pooler in front of PostgreSQL.  `transaction` (Supavisor on 6543,
    PgBouncer in transaction mode): nothing prepared, no session state, no pool.  `auto`
    means `transaction` on port 6543 (docs/serverless.md)."""
    vercel: bool = False
    """Set by Vercel (VERCEL=1) in its functions: no SQLite, no mail outbox."""
    cron_secret: PresentedSecret = None
    """Bearer secret the scheduler sends.  Required in production, at least 32
    characters: `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`."""
    cron_secret_previous: PresentedSecret = None
    """The previous secret, accepted too while a rotation is in progress.  Remove
    afterwards."""
    enable_cron_jobs: bool = True
    """false answers every cron call with 503 and runs nothing."""
    cron_catch_up: bool = True
    """A scheduler's cron call also runs one missed slot of any job, after its own run and
    within the job's useful lateness (docs/jobs.md#catch-up).  false: missed slots wait for
    `voyagesmart-cron catch-up`."""
    schedule_mode: Literal["jobs", "groups"] = "jobs"
    """How the schedulers call: jobs = each job on its own schedule; groups = through
    /api/cron/daily-maintenance and /api/cron/weekly-cleanup, so a member's slot, duplicate
    and overdue rules follow its group's schedule.  docs/jobs.md#groups"""
    group_workers: int = Field(default=3, ge=1, le=16)
    """Members of one group call run at once, at most (the others wait their turn)."""
    cron_timezone: str = "UTC"
    """Time zone for calendar rules inside jobs ("7 days from today").  Schedules are
    UTC."""
    heartbeat_interval: float = Field(default=15.0, gt=0, le=60)
    """Seconds between a live run's heartbeats (each renews its lease)."""
    dead_after: float = Field(default=60.0, gt=0, le=3600)
    """Seconds without a heartbeat after which a run is dead: /health reports it, the next
    call takes its slot up.  At least twice HEARTBEAT_INTERVAL."""
    function_max_duration: OptionalFloat = Field(default=None, gt=0, le=86_400)
    """Seconds one invocation may last (a serverless function's max duration).  A run made
    of chunks stops taking chunks before it is spent and answers 202 `partial`; the next
    call continues it.  Unset: the job's max runtime bounds the run.  Default 300 on Vercel
    (VERCEL=1), its Hobby limit; set it to `maxDuration` in vercel.json.  docs/jobs.md#chunks"""
    execution_mode: Literal["inline", "queue"] = "inline"
    """inline: the call works through its run's chunks itself.  queue (PostgreSQL only):
    the call defers the chunks to the procrastinate queue and works on them as a bounded
    worker until its budget ends; `voyagesmart-cron worker` processes, on any number of
    machines, share them meanwhile.  docs/queue.md"""
    queue_polling_interval: float = Field(default=5.0, gt=0, le=60)
    """Seconds between a queue worker's looks for new chunks (workers poll; they LISTEN
    too unless DATABASE_POOLER is `transaction`)."""
    data_dir: Path = Path("./data")
    """Where the embedded defaults live (SQLite file, outbox of .eml files, local
    storage)."""

    # --- mail ---------------------------------------------------------------------------
    smtp_host: str | None = None
    """Without SMTP_HOST, messages are written as .eml files under DATA_DIR/outbox/."""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    """SMTP server port (587 for starttls, 465 for ssl)."""
    smtp_user: str | None = None
    """SMTP login; with SMTP_PASS, or neither."""
    smtp_pass: Secret = None
    """See SMTP_USER."""
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    """How the SMTP connection is secured (ssl: implicit TLS, usually port 465)."""
    smtp_timeout: float = Field(default=30.0, gt=0)
    """Seconds one SMTP operation may wait."""
    smtp_max_connections: int = Field(default=4, ge=1, le=100)
    """SMTP connections open at once across the whole fleet of queue workers
    (EXECUTION_MODE=queue): each chunk that sends mail holds one.  A process running
    inline sends over one connection."""
    mail_from: str = "VoyageSmart <no-reply@voyagesmart.app>"
    """The From of every email."""
    admin_emails: EmailList = Field(default_factory=list)
    """Comma-separated; they receive failure alerts and the monthly report."""

    # --- alerting -----------------------------------------------------------------------
    sentry_dsn: OptionalUrl = None
    """Errors and run check-ins go to Sentry when set."""
    webhook_url: OptionalUrl = None
    """A JSON POST is sent here when a job fails after its retries."""
    webhook_timeout: float = Field(default=10.0, gt=0)
    """Seconds the failure webhook may take."""
    alert_timeout: float = Field(default=10.0, gt=0, le=120)
    """Seconds the failure alerts (email and webhook, sent side by side) may add to a
    failed run's answer, however slow or dead their servers are."""
    webhook_format: Literal["json", "slack", "discord"] = "json"
    """The webhook body's form: the documented JSON, or a Slack- or Discord-compatible
    incoming-webhook message (docs/deploy.md#alerts)."""
    alert_reminder_hours: float = Field(default=24.0, ge=0, le=8760)
    """Hours after which a job still failing, overdue or stuck is reminded once (0:
    never)."""

    # --- stripe -------------------------------------------------------------------------
    stripe_secret_key: Secret = None
    """The Stripe key subscription-sync reads with (sk_… or a restricted rk_…)."""
    stripe_api_base: OptionalUrl = None
    """Only points the SDK at a local Stripe-compatible server."""

    # --- billing ------------------------------------------------------------------------
    stripe_rate_limit: OptionalFloat = Field(default=None, gt=0, le=100)
    """Stripe requests per second this service allows itself (in queue mode, all its
    processes together).  Unset: 80 with a live key, 20 with a test key (Stripe allows
    100 and 25 per account; the rest is VoyageSmart's)."""
    stripe_timeout: float = Field(default=20.0, gt=0)
    """Seconds before a Stripe request is abandoned (then retried by the SDK)."""
    stripe_max_network_retries: int = Field(default=2, ge=0, le=10)
    """SDK retries of connection errors, timeouts, 409 and 5xx per request."""
    stripe_rate_limit_retries: int = Field(default=5, ge=0, le=20)
    """Retries of an HTTP 429 (with backoff, honouring Retry-After); the SDK never
    retries 429."""
    stripe_concurrency: int = Field(default=8, ge=1, le=64)
    """Concurrent retrieves when subscription-sync fetches subscriptions one by one."""
    stripe_sync_strategy: Literal["auto", "list", "retrieve"] = "auto"
    """auto | list | retrieve.  auto pages through subscriptions.list (100 per call)
    when more than 100 live subscriptions are checked, else retrieves each one.  Use
    retrieve when the Stripe account also bills subscriptions that are not
    VoyageSmart's."""
    stripe_tier_map: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    """Which tier a Stripe price, plan or product id stands for, comma-separated
    <id>:<tier> pairs, tiers free | premium | ai.  For each item the price id is looked
    up first, then the plan id, then the product id; the highest tier among all items
    wins.  A subscription with an item no entry covers keeps its local tier (and is
    reported)."""
    subscription_sync_lookback_days: int = Field(default=30, ge=0)
    """Canceled subscriptions are still checked for this many days after cancellation."""
    report_retention_months: int = Field(default=24, ge=1)
    """Monthly reports older than this are archived (kept and readable, no longer
    current)."""
    subscription_sync_downgrade_brake_share: float = Field(default=0.1, gt=0, le=1)
    """Brake on subscription-sync: a run that would cancel or downgrade more
    subscriptions than the count AND than this share of those it checked changes nothing
    and ends as error."""
    subscription_sync_downgrade_brake_count: int = Field(default=10, ge=0)
    """The count of the subscription-sync brake."""
    subscription_expiry_downgrade_brake_share: float = Field(default=0.1, gt=0, le=1)
    """Brake on subscription-expiry: the same, over the rows holding a paid tier (a
    wrong clock would downgrade everyone)."""
    subscription_expiry_downgrade_brake_count: int = Field(default=100, ge=0)
    """The count of the subscription-expiry brake."""

    @property
    def stripe_requests_per_second(self) -> float:
        if self.stripe_rate_limit is not None:
            return self.stripe_rate_limit
        key = self.stripe_secret_key.get_secret_value() if self.stripe_secret_key else ""
        return 80.0 if "_live_" in key else 20.0

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
    """Rows written per statement in bulk jobs (keeps every lock short)."""
    promo_retention_days: int = Field(default=90, ge=0)
    """promo-cleanup deletes never-redeemed codes expired longer than this."""
    promo_cleanup_delete_brake_share: float = Field(default=0.1, gt=0, le=1)
    """promo-cleanup's brakes: a run that would delete more than the count AND more than
    the share of all codes changes nothing and ends as error (fix the cause, or
    --force)."""
    promo_cleanup_delete_brake_count: int = Field(default=100, ge=0)
    """The count of the deletion brake."""
    promo_cleanup_deactivate_brake_share: float = Field(default=0.2, gt=0, le=1)
    """The same for deactivations, as a share of the active codes."""
    promo_cleanup_deactivate_brake_count: int = Field(default=1000, ge=0)
    """The count of the deactivation brake."""
    promo_redemption_rows_complete: bool = False
    """true only if promo_code_redemptions holds every redemption: then a used_count
    above its rows is lowered to them (braked below); false: counts are only ever
    raised."""
    promo_cleanup_lower_brake_share: float = Field(default=0.05, gt=0, le=1)
    """Brake on lowered counts (PROMO_REDEMPTION_ROWS_COMPLETE): the share of all codes."""
    promo_cleanup_lower_brake_count: int = Field(default=10, ge=0)
    """The count of the brake on lowered counts."""
    archive_retention_days: int = Field(default=30, ge=1, le=3650)
    """Deleted rows stay restorable (voyagesmart-cron restore <run-id>) this many days;
    then promo-cleanup purges them and the deletion is final."""

    # --- notifications ----------------------------------------------------------------
    app_base_url: BaseUrl = "https://voyagesmart.app"
    """Base of the links in user emails to VoyageSmart itself
    (https://<host>/trips/<id>)."""
    reminder_days_ahead: int = Field(default=7, ge=1, le=365)
    """trip-reminders emails travellers of trips starting this many days after the
    slot's day (in CRON_TIMEZONE)."""
    inactivity_days: int = Field(default=90, ge=MIN_INACTIVITY_DAYS, le=3650)
    """user-engagement: a user is inactive after this many days without login or trip
    activity (at least 30: below a month, "inactive" catches people between two trips,
    and a re-engagement email to them is spam)."""
    mail_max_attempts: int = Field(default=4, ge=1, le=20)
    """Attempts per email on a transient SMTP failure (4xx, disconnect, timeout), each
    on a fresh connection, waiting exponentially (with jitter) from MAIL_RETRY_WAIT
    seconds."""
    mail_retry_wait: float = Field(default=1.0, ge=0, le=60)
    """Seconds; the base of the exponential backoff between those attempts."""
    mail_durable_claims: bool = False
    """true: every email's hand-over record waits for PostgreSQL's WAL flush, so even a
    crash of the database server cannot lead to a resend (costs a WAL flush per email)."""

    service_base_url: OptionalBaseUrl = None
    """This service's public URL: the one-click unsubscribe link of every user email is
    SERVICE_BASE_URL/unsubscribe?token=...  (not APP_BASE_URL, which is VoyageSmart's).
    Required in production when SMTP_HOST is set; elsewhere default
    http://127.0.0.1:8000.  Alerts link to the dashboard here when it is set."""
    unsubscribe_secret: Secret = None
    """Signs the unsubscribe links (HMAC-SHA256).  Its own secret, not CRON_SECRET.
    Required in production when SMTP_HOST is set, at least 32 characters.  Changing it
    breaks the links of emails already sent, unless the old one goes into
    UNSUBSCRIBE_SECRET_PREVIOUS."""
    unsubscribe_secret_previous: Secret = None
    """The previous one during a rotation: links in emails already sent keep working."""
    unsubscribe_rate_limit: int = Field(default=30, ge=1, le=10_000)
    """Requests to /unsubscribe per client address per minute (429 beyond).  Invalid
    links count as failed authentications (AUTH_FAILURE_LIMIT)."""
    engagement_require_consent: bool = False
    """true: user-engagement emails only users whose consent is recorded (voyagesmart-
    cron consent import); the others are skipped and counted."""
    user_engagement_send_brake_share: float = Field(default=0.25, gt=0, le=1)
    """Brakes on mass email: a run that would email more than the count AND more than
    the share emails no one and ends as error (run again with --force after checking).
    user-engagement: share of all users."""
    user_engagement_send_brake_count: int = Field(default=100, ge=0)
    """The count of the user-engagement brake."""
    trip_reminders_send_brake_share: float = Field(default=3.0, gt=0, le=1000)
    """trip-reminders: the share is a multiple of the usual daily volume (the median per
    day of the last TRIP_REMINDERS_BRAKE_BASELINE_DAYS days; without history only the
    count holds)."""
    trip_reminders_send_brake_count: int = Field(default=1000, ge=0)
    """The count of the trip-reminders brake; with no history, the count alone decides."""
    trip_reminders_brake_baseline_days: int = Field(default=28, ge=1, le=366)
    """Days of history the usual daily volume of reminders is the median of."""

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

    @model_validator(mode="after")
    def _queue_needs_postgresql(self) -> Settings:
        """The queue is procrastinate's tables and functions: PostgreSQL only."""
        if self.execution_mode == "queue" and self.is_sqlite:
            raise ValueError("EXECUTION_MODE=queue needs a PostgreSQL DATABASE_URL (the "
                             "queue lives in PostgreSQL); use inline with SQLite")
        return self

    @model_validator(mode="after")
    def _heartbeat_window(self) -> Settings:
        """A run must get at least two renewals into the window before it is called dead."""
        if self.dead_after < 2 * self.heartbeat_interval:
            raise ValueError("DEAD_AFTER must be at least twice HEARTBEAT_INTERVAL "
                             f"({self.dead_after:g} s < 2 x {self.heartbeat_interval:g} s)")
        return self

    @property
    def public_base_url(self) -> str:
        """Where this service answers its public links (the unsubscribe endpoint)."""
        return self.service_base_url or "http://127.0.0.1:8000"

    # --- database maintenance ---------------------------------------------------------
    maintenance_lock_timeout: float = Field(default=5.0, gt=0, le=3600)
    """Seconds a maintenance statement waits for a lock; past it the run stops cleanly
    (warning) rather than queue application traffic behind it."""
    maintenance_statement_timeout: float = Field(default=1800.0, gt=0, le=86400)
    """Longest a single VACUUM / REINDEX statement may run, in seconds."""
    maintenance_vacuum_min_dead: int = Field(default=1000, ge=0)
    """A table is vacuumed when its dead tuples reach this count AND this fraction of
    its live tuples (pg_stat_user_tables); analyzed when its modifications since the
    last analyze reach the count and MAINTENANCE_ANALYZE_MOD_FRACTION."""
    maintenance_vacuum_dead_fraction: float = Field(default=0.1, ge=0, le=10)
    """Dead tuples, as a fraction of the live ones, that make a table due for VACUUM."""
    maintenance_analyze_mod_fraction: float = Field(default=0.1, ge=0, le=10)
    """Modifications since the last analyze, as a fraction of the live tuples, that make
    a table due for ANALYZE."""
    maintenance_vacuum_all: bool = False
    """true: one whole-database VACUUM (ANALYZE) instead of the targeted one."""
    maintenance_reindex_min_bytes: int = Field(default=8 * 1024 * 1024, ge=0)
    """A btree index at least this large (bytes) whose estimated bloat reaches the
    fraction is rebuilt with REINDEX INDEX CONCURRENTLY (invalid indexes are always
    handled)."""
    maintenance_reindex_bloat_fraction: float = Field(default=0.5, gt=0, lt=1)
    """Estimated bloat (a fraction of the index) that makes a large index due for a
    rebuild."""
    maintenance_reindex_database: Literal["off", "concurrently", "blocking"] = "off"
    """off | concurrently | blocking.  REINDEX DATABASE on top of the targeted rebuilds;
    blocking locks writes: maintenance windows only."""

    # --- storage ----------------------------------------------------------------------
    storage_backend: Literal["local", "s3"] = "local"
    """local (directories under STORAGE_LOCAL_ROOT/<bucket>/) | s3 (AWS S3, Supabase
    Storage)."""
    storage_local_root: Path | None = None  # default: DATA_DIR/storage
    """Default: DATA_DIR/storage."""
    storage_buckets: BucketList = Field(
        default_factory=lambda: ["trip-media", "trip-documents"]
    )
    """Buckets to clean, comma-separated."""
    s3_endpoint_url: OptionalUrl = None
    """S3-compatible endpoint; empty for AWS.  Supabase:
    https://<ref>.supabase.co/storage/v1/s3"""
    s3_region: str = "us-east-1"
    """The S3 region (Supabase: the project's region)."""
    s3_access_key_id: str | None = None
    """Both or neither (neither: boto3's usual credential chain, e.g. an IAM role)."""
    s3_secret_access_key: Secret = None
    """Goes with S3_ACCESS_KEY_ID."""
    storage_temp_prefix: FolderPrefix = "tmp/"
    """Uploads under this folder (it must end in /) are temporary and removed after
    STORAGE_TEMP_MAX_AGE_HOURS, unless a row references them."""
    storage_temp_max_age_hours: float = Field(default=24.0, gt=0)
    """Age after which a temporary upload no row references is removed."""
    storage_orphan_min_age_days: float = Field(default=30.0, gt=0)
    """Files no row references are deleted once older than this (younger ones may not be
    linked yet)."""
    storage_media_min_age_days: float = Field(default=180.0, gt=0)
    """Referenced JPEG/PNG/WebP images older than this and larger than the byte
    threshold are recompressed when that saves at least STORAGE_RECOMPRESS_MIN_SAVING (a
    fraction)."""
    storage_recompress_min_bytes: int = Field(default=1024 * 1024, ge=1)
    """Smallest image (bytes) worth recompressing."""
    storage_recompress_min_saving: float = Field(default=0.2, gt=0, lt=1)
    """Smallest saving (a fraction of the size) for which the recompressed image
    replaces the original."""
    storage_recompress_quality: int = Field(default=80, ge=1, le=95)
    """JPEG/WebP quality used for recompression (1-95)."""
    storage_quarantine_prefix: FolderPrefix = ".quarantine/"
    """What storage-cleanup removes moves under this folder of its bucket (it must end
    in /, and neither contain nor sit inside STORAGE_TEMP_PREFIX); `voyagesmart-cron
    restore <run-id>` moves it back.  Older than the retention, it is deleted for good."""
    storage_quarantine_retention_days: float = Field(default=7.0, gt=0)
    """Quarantined objects older than this are deleted for good; after that a removal is
    final."""
    storage_cleanup_delete_brake_share: float = Field(default=0.1, gt=0, le=1)
    """Brake: a run that would move out of a bucket more than this share of it AND more
    than this many objects changes nothing and ends as error; force a run (CLI --force,
    ?force=true, dashboard) after checking."""
    storage_cleanup_delete_brake_count: int = Field(default=20, ge=0)
    """The count of the storage-cleanup brake."""

    # --- operators ----------------------------------------------------------------------
    metrics_token: PresentedSecret = None
    """Bearer token for GET /metrics (Prometheus).  Empty: only CRON_SECRET is accepted
    there. In production at least 16 characters."""
    dashboard_user: str | None = None
    """HTTP Basic credentials of /dashboard.  Set both or neither; unset, /dashboard is
    a 404. In production the password needs at least 16 characters."""
    dashboard_password: PresentedSecret = None
    """Goes with DASHBOARD_USER; in production at least 16 characters."""
    cron_ip_allowlist: CidrList = Field(default_factory=list)
    """Comma-separated CIDRs allowed to call /api/cron/* (e.g. your crontab host,
    GitHub's runners); empty allows every address.  Vercel Cron has no fixed addresses:
    leave empty."""
    trusted_proxies: CidrList = Field(default_factory=list)
    """Comma-separated CIDRs of reverse proxies whose X-Forwarded-For is believed.  Only
    then is the client address read from that header (every line of it, right to left);
    a direct client's header is ignored, whatever uvicorn's --proxy-headers says.  On
    Vercel: 127.0.0.1/32."""
    cron_rate_limit: int = Field(default=30, ge=1)
    """Calls presenting the valid secret, per client address per window (429 beyond)."""
    cron_rate_window_seconds: int = Field(default=60, ge=1, le=86400)
    """The window of CRON_RATE_LIMIT, in seconds."""
    auth_failure_limit: int = Field(default=10, ge=1)
    """Failed authentications (cron, metrics, dashboard, /health with a bearer) per
    client address per window; beyond it the address gets 429 with Retry-After until the
    window ends. Counted separately from valid calls, so a flood of bad tokens never
    blocks a valid credential (the scheduler's secret, the metrics token, the dashboard
    login)."""
    auth_failure_window_seconds: int = Field(default=900, ge=1, le=86400)
    """The window of AUTH_FAILURE_LIMIT, in seconds."""
    audit_retention_days: int = Field(default=90, ge=1)
    """cron_audit_log rows older than this are deleted (at most hourly, by a request
    writing one)."""
    log_format: Literal["json", "text"] = "json"
    """json (one object per line, for Vercel / log stores) | text.  Secrets and email
    addresses are redacted at INFO and above."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """DEBUG, INFO, WARNING or ERROR (any case)."""

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

    @property
    def invocation_seconds(self) -> float | None:
        """FUNCTION_MAX_DURATION, or Vercel's default when running there."""
        if self.function_max_duration is not None:
            return self.function_max_duration
        return VERCEL_MAX_DURATION if self.vercel else None

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
