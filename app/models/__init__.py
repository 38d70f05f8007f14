"""All tables, one module per owner: runs (run log, leases, incident state), notifications
(sent mail, engagement metrics, opt-outs, consent), audit (cron call audit, rate-limit counters),
archive (deleted rows kept for restore), billing (weekly analytics, monthly reports) and
voyagesmart (VoyageSmart's own tables: the service reads and writes their rows, never their
schema on an existing database).
Importing this package registers every table on `Base.metadata`; import tables from here."""

from app.models.archive import CronArchivedRow
from app.models.audit import CronAuditLog, CronRateLimit
from app.models.billing import CronMonthlyReport, CronWeeklyAnalytics
from app.models.notifications import (
    CronEmailConsent,
    CronEmailOptOut,
    CronEngagementMetrics,
    CronNotification,
)
from app.models.runs import CronJobIncident, CronJobLease, CronJobLog, CronRunChunk
from app.models.voyagesmart import (
    VOYAGESMART_TABLES,
    Accommodation,
    AuthUser,
    Document,
    Expense,
    Plan,
    PromoCode,
    PromoCodeRedemption,
    SubscriptionHistory,
    Transportation,
    Trip,
    TripChatMessage,
    TripMedia,
    TripParticipant,
    User,
    UserSubscription,
)

__all__ = [
    "VOYAGESMART_TABLES",
    "Accommodation",
    "AuthUser",
    "CronArchivedRow",
    "CronAuditLog",
    "CronEmailConsent",
    "CronEmailOptOut",
    "CronEngagementMetrics",
    "CronJobIncident",
    "CronJobLease",
    "CronJobLog",
    "CronMonthlyReport",
    "CronNotification",
    "CronRateLimit",
    "CronRunChunk",
    "CronWeeklyAnalytics",
    "Document",
    "Expense",
    "Plan",
    "PromoCode",
    "PromoCodeRedemption",
    "SubscriptionHistory",
    "Transportation",
    "Trip",
    "TripChatMessage",
    "TripMedia",
    "TripParticipant",
    "User",
    "UserSubscription",
]
