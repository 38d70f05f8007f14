"""All tables.  Importing this package registers every table on `Base.metadata`."""

from app.models.archive import CronArchivedRow
from app.models.billing import CronMonthlyReport, CronWeeklyAnalytics
from app.models.notifications import (
    CronEmailConsent,
    CronEmailOptOut,
    CronEngagementMetrics,
)
from app.models.operators import CronRateLimit
from app.models.service import CronAuditLog, CronJobLease, CronJobLog, CronNotification
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
    "CronJobLease",
    "CronJobLog",
    "CronMonthlyReport",
    "CronNotification",
    "CronRateLimit",
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
