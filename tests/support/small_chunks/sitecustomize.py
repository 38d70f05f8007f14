"""Loaded at start-up by a subprocess given this directory on PYTHONPATH: mail runs are
planned in chunks of CHUNK messages instead of 1000, and trip-reminders counts and plans
trip ranges of CHUNK travellers instead of 5000, so that a test with a few thousand
messages still has many chunks to spread over its worker processes."""

import os

from app.jobs import trip_reminders
from app.mail import delivery

CHUNK = int(os.environ.get("TEST_MAIL_CHUNK", "200"))
delivery.ranges.__defaults__ = (CHUNK,)
trip_reminders.RANGE_SIZE = CHUNK
