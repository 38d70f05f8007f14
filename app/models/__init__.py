"""All tables.  Importing this package registers every table on `Base.metadata`."""

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
    "CronAuditLog",
    "CronJobLease",
    "CronJobLog",
    "CronNotification",
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
