"""When was a VoyageSmart user last seen?  One answer for every job that asks.

Supabase records each sign-in in `auth.users.last_sign_in_at`.  `users.last_login` is set
when the profile row is created and never again (the app's login path does not update
it), so it is only a fallback, for a database where `auth.users` cannot be read, and a
run that falls back says so.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from app.db import table_of
from app.models import AuthUser, User

users = table_of(User)
# Aliased: a statement naming both `users` tables would otherwise get anonymous aliases.
auth_users = table_of(AuthUser).alias("auth_user")

FALLBACK_WARNING = ("auth.users.last_sign_in_at cannot be read here: activity comes from "
                    "users.last_login, which VoyageSmart sets at sign-up and never updates")


def last_seen(sign_ins: bool) -> sa.ColumnElement[Any]:
    """The moment a user was last seen, as a column expression over `users`."""
    if not sign_ins:
        return sa.func.coalesce(users.c.last_login, users.c.created_at)
    signed_in = (sa.select(auth_users.c.last_sign_in_at)
                 .where(auth_users.c.id == users.c.id).scalar_subquery())
    return sa.func.coalesce(signed_in, users.c.last_login, users.c.created_at)


def sign_ins_readable(check: Any) -> bool:
    """Whether a job's schema check (`app.core.requirements.JobCheck`) found auth.users usable."""
    try:
        return bool(check.table("auth.users").usable)
    except StopIteration:
        return False
