"""The runtime every job shares, whatever triggered it: the registry of jobs and their
schedules, the runner (slot, lease, retries, the run log), the statuses a run can have, the
context a job receives and the result it returns, the project's own errors, the time budget
of outbound calls, the health rules (overdue, stuck, failing), and the safety rules every
destructive job obeys (brakes, bounded batches, archiving before delete).  Nothing here
knows HTTP, SMTP or Stripe."""
