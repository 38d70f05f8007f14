"""All tables.  Importing this package registers every table on `Base.metadata`."""

from app.models.archive import CronArchivedRow
from app.models.billing import CronMonthlyReport, CronWeeklyAnalytics
from app.models.notifications import CronEngagementMetrics
from app.models.operators import CronRateLimit
from app.models.service import CronAuditLog, CronJobLease, CronJobLog, CronNotification
from app.models.voyagesmart import (
    VOYAGESMART_TABLES,
    Document,
    Expense,
    PromoCode,
    PromoCodeRedemption,
    Subscription,
    SubscriptionHistory,
    Trip,
    TripMedia,
    TripParticipant,
    User,
)

__all__ = [
    "VOYAGESMART_TABLES",
    "CronArchivedRow",
    "CronAuditLog",
    "CronEngagementMetrics",
    "CronJobLease",
    "CronJobLog",
    "CronMonthlyReport",
    "CronNotification",
    "CronRateLimit",
    "CronWeeklyAnalytics",
    "Document",
    "Expense",
    "PromoCode",
    "PromoCodeRedemption",
    "Subscription",
    "SubscriptionHistory",
    "Trip",
    "TripMedia",
    "TripParticipant",
    "User",
]
