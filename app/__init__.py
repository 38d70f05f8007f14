"""VoyageSmart Cron: scheduled maintenance for VoyageSmart."""
