"""Which Stripe mode the configured key is in, and whether that fits this deployment.

The one place that decides it; startup (app/main.py) logs it and `/health` reports it.

- A test key (`sk_test_…`, `rk_test_…`) in production is an **issue** on `/health` (503):
  the live subscriptions do not exist for it, so subscription-sync, a critical job, cannot
  do its work (every subscription answers 404, and the sync's brake stops the run each
  day).  An uptime monitor pages on 503; a preview or staging deployment that bills in
  test mode runs with `APP_ENV` other than production (Vercel previews have
  `VERCEL_ENV=preview`).
- A live key (`sk_live_…`, `rk_live_…`) outside production is a **warning** (still 200):
  the service works, but a development or test instance reads and writes real customers'
  billing; someone should know, and an uptime monitor on such an instance should not page.

This module imports nothing heavy: `/health` and every cold start read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.config import Settings

_PREFIXES = {"sk_live_": "live", "rk_live_": "live", "sk_test_": "test", "rk_test_": "test"}


def key_mode(key: str | None) -> Literal["live", "test"] | None:
    """`live` or `test` from the key's prefix; None when unset or not a Stripe secret key."""
    for prefix, mode in _PREFIXES.items():
        if key and key.startswith(prefix):
            return "live" if mode == "live" else "test"
    return None


@dataclass(frozen=True)
class KeyModeProblem:
    severity: Literal["issue", "warning"]
    message: str  # names the mode and the environment, never the key


def key_mode_problem(settings: Settings) -> KeyModeProblem | None:
    """What is wrong with the Stripe key's mode for this deployment, if anything."""
    secret = settings.stripe_secret_key
    mode = key_mode(secret.get_secret_value() if secret is not None else None)
    if mode == "test" and settings.is_production:
        return KeyModeProblem(
            "issue", "STRIPE_SECRET_KEY is a test-mode key in production: the live "
            "subscriptions are unknown to it; set the live key (sk_live_/rk_live_)")
    if mode == "live" and not settings.is_production:
        return KeyModeProblem(
            "warning", f"STRIPE_SECRET_KEY is a live-mode key outside production "
            f"(APP_ENV={settings.app_env}): this instance reads and writes real billing")
    return None
