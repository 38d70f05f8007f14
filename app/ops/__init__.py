"""The operator's tools around the service: the `voyagesmart-cron` command line (run,
list, schema check, billing read-outs, consent import), the scheduler files generated
from the registry (Vercel, crontab, GitHub Actions), the demo dataset and the Alembic
migrations run from Python."""
